"""Fitting the input gate (edgeskin/runtime/gate.py) on a run's own images."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from PIL import Image

from edgeskin.data import perturb, sets
from edgeskin.runtime import gate as gate_lib


def fit(train_images: np.ndarray, train_sizes, calibration_images: np.ndarray) -> tuple[gate_lib.Gate, dict]:
    """Fit every limit on in-domain images, and the domain threshold on the calibration pool.

    train_images: (n, size, size, 3) uint8 training images, ideally stored and
    re-encoded; train_sizes: their original (width, height); calibration_images:
    the calibration pool. Returns the gate and the pass rates it measured.
    """
    stats = [gate_lib.quality_stats(x) for x in train_images]
    col = {k: np.array([s[k] for s in stats]) for k in stats[0]}
    sizes = np.asarray(train_sizes, dtype=np.float64)
    feats = np.stack([gate_lib.domain_features(x) for x in train_images])
    mean = feats.mean(axis=0)
    cov = np.cov(feats, rowvar=False)
    cov = (1 - gate_lib.SHRINK) * cov + gate_lib.SHRINK * np.diag(np.diag(cov)) + 1e-9 * np.eye(len(mean))
    precision = np.linalg.inv(cov)
    partial = gate_lib.Gate(
        # Size and aspect: the training images rarely vary in either, so the
        # limit is half the smallest short side and twice the widest aspect seen.
        min_short_side=float(sizes.min(axis=1).min() / 2), max_aspect=float(2 * (sizes.max(axis=1) / sizes.min(axis=1)).max()),
        min_contrast=float(np.quantile(col["contrast"], gate_lib.QUALITY_TAIL)),
        max_overexposed=float(np.quantile(col["overexposed"], 1 - gate_lib.QUALITY_TAIL)),
        max_underexposed=float(np.quantile(col["underexposed"], 1 - gate_lib.QUALITY_TAIL)),
        min_sharpness=float(np.quantile(col["sharpness"], gate_lib.QUALITY_TAIL)),
        mean=tuple(map(float, mean)), precision=tuple(map(float, precision.ravel())), max_distance=1e9,
    )
    d_cal = np.array([partial.distance(x) for x in calibration_images])
    gate = gate_lib.Gate(**{**asdict(partial), "max_distance": float(np.quantile(d_cal, gate_lib.DOMAIN_PASS))})
    square = (calibration_images.shape[2], calibration_images.shape[1])
    passed_cal = np.mean([not gate.reasons(square, x) for x in calibration_images])
    passed_train = np.mean([not gate.reasons(tuple(s), x) for s, x in zip(sizes.astype(int), train_images)])
    return gate, {"calibration_pass_rate": float(passed_cal), "training_pass_rate": float(passed_train),
                  "calibration_images": int(len(calibration_images)), "training_images": int(len(train_images))}


def fit_on_splits(train_samples, val_samples, size: int) -> tuple[gate_lib.Gate, dict]:
    """The gate of a run: fitted on its training images, stored and re-encoded at JPEG q75, with the
    calibration pool (validation as stored and at the deployment qualities) setting the domain threshold."""
    x = sets.load_images(train_samples, size)
    sizes = []
    for sample in train_samples:
        with Image.open(sample.path) as im:
            sizes.append(im.size)
    xv = sets.load_images(val_samples, size)
    gate, rates = fit(np.concatenate([x, perturb.deployment_pool(x, (75,))]), sizes + sizes,
                      np.concatenate([xv, perturb.deployment_pool(xv)]))
    return gate, rates
