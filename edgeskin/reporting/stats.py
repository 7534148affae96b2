"""The percentile bootstrap, in numpy alone, so the light runtime (`edgeskin calibrate`) can use it too."""

from __future__ import annotations

import warnings

import numpy as np


def bootstrap(fn, y, p, n: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of fn(y, p), resampling cases with replacement.

    fn may return a scalar, giving (lo, hi), or a vector, giving an array of
    (lo, hi) rows. Resamples that hold only one class are skipped, since AUC
    and the rates are undefined on them.
    """
    y, p = np.asarray(y), np.asarray(p)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        yy = y[idx]
        if yy.min() == yy.max():
            continue
        values.append(np.atleast_1d(np.asarray(fn(yy, p[idx]), dtype=np.float64)))
    if not values:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        # A rate that is undefined on every resample (PPV when nothing is
        # flagged) has an undefined interval: NaN, said once in the output.
        warnings.simplefilter("ignore", RuntimeWarning)
        bounds = np.nanquantile(np.array(values), [(1 - level) / 2, (1 + level) / 2], axis=0).T
    return (float(bounds[0, 0]), float(bounds[0, 1])) if np.ndim(fn(y, p)) == 0 else bounds
