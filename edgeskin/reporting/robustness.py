"""How much the answer moves when the same images are saved, lit or held another way.

Each perturbation of `perturb.ROBUSTNESS` costs one pass over the evaluated
set. For each it reports the ROC AUC (with a bootstrap CI), sensitivity and
specificity at every operating point, the share of screening decisions that
flip against the unperturbed images, and the median |delta malignant_probability|.
A model that reads the lesion moves little; one that reads the file's
compression moves a lot on a re-encode.
"""

from __future__ import annotations

import numpy as np

from edgeskin.runtime import calibration
from edgeskin.reporting import metrics
from edgeskin.data import perturb


def _summary(y, p, p_base, thresholds: dict, n_boot: int, seed: int) -> dict:
    screening = thresholds.get(calibration.DEFAULT_OPERATING_POINT, next(iter(thresholds.values())))
    flips = (p >= screening) != (p_base >= screening)
    points = {}
    for name, t in thresholds.items():
        sens, spec = calibration.rates(p, y, t)
        base_sens, base_spec = calibration.rates(p_base, y, t)
        points[name] = {"threshold": float(t), "sensitivity": sens, "specificity": spec,
                        "delta_sensitivity": sens - base_sens, "delta_specificity": spec - base_spec}
    lo, hi = metrics.bootstrap(lambda a, b: metrics.roc_auc_score(a, b), y, p, n_boot, seed)
    return {
        "roc_auc": {"value": float(metrics.roc_auc_score(y, p)), "ci95": [lo, hi]},
        "operating_points": points,
        "screening_flip_rate": float(flips.mean()),
        "median_abs_delta": float(np.median(np.abs(p - p_base))),
        "p95_abs_delta": float(np.quantile(np.abs(p - p_base), 0.95)),
        "mean_probability_benign": float(p[np.asarray(y) == 0].mean()),
    }


def measure(score_images, y, p_base, thresholds: dict, perturbations=perturb.ROBUSTNESS, n_boot: int = 1000,
            seed: int = 0, progress=None) -> list[dict]:
    """One row a perturbation.

    score_images(transform) scores the evaluated set with transform (a PIL
    image -> PIL image) applied to every decoded image before the model's own
    crop and resize; p_base are the scores of the unperturbed set.
    """
    y, p_base = np.asarray(y), np.asarray(p_base, dtype=np.float64)
    rows = []
    for pert in progress(perturbations, len(perturbations)) if progress else perturbations:
        p = np.asarray(score_images(pert.apply), dtype=np.float64)
        rows.append({"name": pert.name, "description": pert.description,
                     **_summary(y, p, p_base, thresholds, n_boot, seed)})
    return rows
