"""Screening metrics with bootstrap confidence intervals.

scikit-learn does the curve maths; this module adds what a screening report
needs on top: rates at a threshold, specificity at fixed sensitivities, and
a percentile bootstrap around every figure.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

from edgeskin import calibration
from edgeskin.stats import bootstrap  # noqa: F401  (part of this module's API)

SENSITIVITY_TARGETS = (0.90, 0.95, 0.99)


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def at_threshold(y, p, threshold: float) -> dict:
    """Confusion matrix and rates of the rule p >= threshold."""
    y = np.asarray(y).astype(bool)
    flagged = np.asarray(p) >= threshold
    tp, fn = int((flagged & y).sum()), int((~flagged & y).sum())
    fp, tn = int((flagged & ~y).sum()), int((~flagged & ~y).sum())
    sens, spec = _safe_div(tp, tp + fn), _safe_div(tn, tn + fp)
    ppv, npv = _safe_div(tp, tp + fp), _safe_div(tn, tn + fn)
    return {
        "threshold": float(threshold),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": npv,
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sens + spec) / 2,
        "confusion": {"tp": tp, "fn": fn, "fp": fp, "tn": tn},
    }


def specificity_at_sensitivity(y, p, target: float) -> float:
    """The best specificity of any threshold whose sensitivity is >= target."""
    fpr, tpr, _ = roc_curve(np.asarray(y).astype(int), p)
    ok = tpr >= target - 1e-12
    return float(1.0 - fpr[ok].min())


def _with_ci(fn, y, p, n, seed) -> dict:
    lo, hi = bootstrap(fn, y, p, n, seed)
    return {"value": float(fn(np.asarray(y), np.asarray(p))), "ci95": [lo, hi]}


def json_safe(obj):
    """The same structure with NaN and infinities as None, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def uncalibrated(p, temperature: float) -> np.ndarray:
    """Undo temperature scaling: sigmoid(T * logit(p))."""
    return calibration.sigmoid(temperature * calibration.logit(p))


def report(y, p, thresholds: dict[str, float], temperature: float | None = None,
           n_boot: int = 1000, seed: int = 0, platt=None) -> dict:
    """Every figure of the evaluation, each with its 95% interval, under stable keys."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    out = {
        "n": int(len(y)),
        "n_malignant": int(y.sum()),
        "n_benign": int(len(y) - y.sum()),
        "roc_auc": _with_ci(roc_auc_score, y, p, n_boot, seed),
        "pr_auc": _with_ci(average_precision_score, y, p, n_boot, seed),
        "brier": _with_ci(brier_score_loss, y, p, n_boot, seed),
        "ece": _with_ci(lambda a, b: calibration.expected_calibration_error(b, a), y, p, n_boot, seed),
        "specificity_at_sensitivity": {
            f"{t:.2f}": _with_ci(lambda a, b, t=t: specificity_at_sensitivity(a, b, t), y, p, n_boot, seed)
            for t in SENSITIVITY_TARGETS
        },
        "thresholds": {},
    }
    if temperature is not None:
        out["temperature"] = float(temperature)
        out["ece_before_temperature"] = _with_ci(
            lambda a, b: calibration.expected_calibration_error(uncalibrated(b, temperature), a), y, p, n_boot, seed)
    if platt is not None:
        out["score_calibration"] = platt.to_dict()
        out["ece_before_platt"] = _with_ci(
            lambda a, b: calibration.expected_calibration_error(platt.invert(b), a), y, p, n_boot, seed)
    keys = ("sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy")
    for name, t in thresholds.items():
        point = at_threshold(y, p, t)
        bounds = bootstrap(lambda a, b, t=t: [at_threshold(a, b, t)[k] for k in keys], y, p, n_boot, seed)
        for key, (lo, hi) in zip(keys, bounds):
            point[key] = {"value": point[key], "ci95": [float(lo), float(hi)]}
        out["thresholds"][name] = point
    return out
