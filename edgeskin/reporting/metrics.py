"""Screening metrics with bootstrap confidence intervals.

scikit-learn does the curve maths; this module adds what a screening report
needs on top: rates at a threshold, specificity at fixed sensitivities, and
a percentile bootstrap around every figure.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

from edgeskin.runtime import calibration
from edgeskin.reporting.stats import bootstrap  # noqa: F401  (part of this module's API)

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
        out["thresholds"][name] = _point_with_ci(y, p, t, keys, n_boot, seed)
    return out


def _point_with_ci(y, p, t: float, keys, n_boot: int, seed: int) -> dict:
    """at_threshold's figures, those named in keys with their intervals (one bootstrap for all of them)."""
    point = at_threshold(y, p, t)
    bounds = bootstrap(lambda a, b: [at_threshold(a, b, t)[k] for k in keys], y, p, n_boot, seed)
    for key, (lo, hi) in zip(keys, bounds):
        point[key] = {"value": point[key], "ci95": [float(lo), float(hi)]}
    return point


# The figures a further test set gets: what `summary` computes and `compact` picks out of a `report`.
POINT_KEYS = ("threshold", "sensitivity", "specificity")


def summary(y, p, thresholds: dict[str, float], n_boot: int = 1000, seed: int = 0) -> dict:
    """The compact report of one test set: ROC AUC, ECE and the rates at each threshold, with intervals.

    Its numbers equal those of `report` on the same data (same resamples),
    so the primary set and the further sets of one evaluation read alike.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    points = {name: _point_with_ci(y, p, t, POINT_KEYS[1:], n_boot, seed) for name, t in thresholds.items()}
    return {
        "n": int(len(y)),
        "n_malignant": int(y.sum()),
        "n_benign": int(len(y) - y.sum()),
        "roc_auc": _with_ci(roc_auc_score, y, p, n_boot, seed),
        "ece": _with_ci(lambda a, b: calibration.expected_calibration_error(b, a), y, p, n_boot, seed),
        "thresholds": {name: {k: pt[k] for k in POINT_KEYS} for name, pt in points.items()},
    }


def compact(full: dict) -> dict:
    """The `summary` part of a full `report`, without computing anything again."""
    return {**{k: full[k] for k in ("n", "n_malignant", "n_benign", "roc_auc", "ece")},
            "thresholds": {name: {k: pt[k] for k in POINT_KEYS} for name, pt in full["thresholds"].items()}}


# --- the diagnosis head -----------------------------------------------------------------

TOP_K = 3  # top-3 accuracy: is the true diagnosis among the three most probable


def diagnosis_index(dx, names) -> np.ndarray:
    """Each image's diagnosis as a position in names; -1 where it has none or one the model does not know."""
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup.get(d, -1) for d in dx], dtype=np.int64)


def balanced_accuracy(true, pred) -> float:
    """Mean recall over the diagnoses present among true: the ISIC 2018 challenge metric.

    A diagnosis absent from true has no recall, so it is left out of the mean
    (as scikit-learn's balanced_accuracy_score does), not counted as zero.
    """
    true, pred = np.asarray(true), np.asarray(pred)
    return float(np.mean([np.mean(pred[true == k] == k) for k in np.unique(true)]))


def top_k_hits(probabilities, true, k: int = TOP_K) -> np.ndarray:
    """Per image: is the true diagnosis among the k most probable (ties broken by order, as argsort does)."""
    top = np.argsort(-np.asarray(probabilities), axis=1, kind="stable")[:, :k]
    return (top == np.asarray(true)[:, None]).any(axis=1)


def diagnosis_confusion(true, pred, n: int) -> np.ndarray:
    """Counts: row = true diagnosis, column = predicted."""
    grid = np.zeros((n, n), dtype=np.int64)
    np.add.at(grid, (np.asarray(true), np.asarray(pred)), 1)
    return grid


def per_class(confusion: np.ndarray, names) -> dict:
    """Support, recall and precision of each diagnosis (NaN where undefined: never true, never predicted)."""
    tp, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    return {name: {"support": int(support[i]), "predicted": int(predicted[i]),
                   "recall": _safe_div(tp[i], support[i]), "precision": _safe_div(tp[i], predicted[i])}
            for i, name in enumerate(names)}


def diagnosis_report(probabilities, true, names, n_boot: int = 1000, seed: int = 0) -> dict:
    """The diagnosis head's figures on the images whose true diagnosis (index into names) is >= 0.

    probabilities is (n, len(names)); the prediction is the most probable
    diagnosis. Intervals are percentile bootstraps over the counted images.
    """
    probabilities, true = np.asarray(probabilities, dtype=np.float64), np.asarray(true, dtype=np.int64)
    if probabilities.shape != (len(true), len(names)):
        raise ValueError(f"diagnosis probabilities of shape {probabilities.shape}, expected {(len(true), len(names))}")
    known = true >= 0
    out = {"images": int(known.sum()), "images_without_known_diagnosis": int((~known).sum()), "diagnoses": list(names)}
    if not known.any():
        return out
    p, t = probabilities[known], true[known]
    pred, hits = p.argmax(axis=1), top_k_hits(p, true[known])
    confusion = diagnosis_confusion(t, pred, len(names))
    return {**out,
            "balanced_accuracy": _with_ci(balanced_accuracy, t, pred, n_boot, seed),
            "accuracy": _with_ci(lambda a, b: np.mean(a == b), t, pred, n_boot, seed),
            "top3_accuracy": _with_ci(lambda a, h: np.mean(h), t, hits, n_boot, seed),
            "per_class": per_class(confusion, names),
            "confusion": confusion.tolist()}
