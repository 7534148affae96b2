"""Calibration of a trained network and its validation report, on the calibration pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeskin.data import sets
from edgeskin.runtime import calibration
from edgeskin.training import model as model_lib
from edgeskin.training.arrays import Arrays
from edgeskin.training.options import TrainOptions
from edgeskin.training.run import save_keras, write_json


def auc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def diagnosis_report(probabilities, dx_index) -> dict:
    """Balanced accuracy, top-3 accuracy and per-class recall on the images that have a diagnosis (index >= 0)."""
    dx_index = np.asarray(dx_index)
    known = dx_index >= 0
    if not known.any():
        return {"images": 0, "balanced_accuracy": float("nan"), "top3_accuracy": float("nan")}
    from edgeskin.reporting import metrics

    p, d = np.asarray(probabilities)[known], dx_index[known]
    pred = p.argmax(axis=1)
    recalls = {int(k): float(np.mean(pred[d == k] == k)) for k in np.unique(d)}
    return {"images": int(known.sum()), "balanced_accuracy": metrics.balanced_accuracy(d, pred),
            "top3_accuracy": float(np.mean(metrics.top_k_hits(p, d, 3))), "recall": recalls}


def diagnosis_prior_weight(probabilities, dx_index, log_prior: np.ndarray) -> tuple[float, dict]:
    """How much of the training prior to add back to the diagnosis logits, chosen on the calibration pool.

    A head trained with the balanced softmax gives balanced posteriors; on a
    pool where naevi are most of the images they over-correct (the run
    shipped first named a naevus for 0.4% of the pool's naevi). Adding
    a * log(prior) to its logits moves it back towards the plain posterior
    (a = 1); a is the grid value with the best balanced accuracy.
    """
    logp = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-12, None))
    reports = {round(float(a), 2): diagnosis_report(logp + a * log_prior, dx_index) for a in np.arange(0.0, 1.01, 0.05)}
    best = max(reports, key=lambda a: reports[a]["balanced_accuracy"])
    return best, {"chosen": best, "balanced_accuracy": reports[best]["balanced_accuracy"],
                  "balanced_accuracy_without": reports[0.0]["balanced_accuracy"]}


def calibrate(net, arrays: Arrays, run_dir: Path, options: TrainOptions) -> tuple[float, dict, np.ndarray, float]:
    """Temperature, then thresholds on the calibrated probabilities they will be applied to.

    Both are chosen on the calibration pool, the validation split re-encoded
    the way phones save images, so they hold on a phone's JPEG.
    """
    outputs = net.predict(arrays.x_cal, batch_size=64, verbose=0)
    z = model_lib.malignant_logits(outputs).astype(np.float64)
    y = arrays.y_cal
    temperature = calibration.fit_temperature(z, y)
    p = calibration.sigmoid(z / temperature)
    points = calibration.choose_operating_points(p, y)
    save_keras(model_lib.calibrated(net, temperature), run_dir / "model.keras")
    val_auc = auc(z, y)
    write_json(run_dir / "calibration.json", {
        "temperature": temperature,
        "operating_points": {k: v.to_dict() for k, v in points.items()},
        "default_operating_point": calibration.DEFAULT_OPERATING_POINT,
        "chosen_on": (f"validation split ({len(y) // len(options.calibration_qualities)} images) re-encoded at JPEG quality "
                      f"{', '.join(map(str, options.calibration_qualities))} with 4:2:0 chroma ({len(y)} images)"),
        "calibration_qualities": list(options.calibration_qualities),
        "val_auc": val_auc,
        "val_nll_before": calibration.nll(z, y),
        "val_nll_after": calibration.nll(z, y, temperature),
        "val_ece_before": calibration.expected_calibration_error(calibration.sigmoid(z), y),
        "val_ece_after": calibration.expected_calibration_error(p, y),
        "per_source": _per_source(p, y, arrays, points, outputs, options.model.diagnoses),
        **({"diagnoses": list(options.model.diagnoses),
            "diagnosis": _json_keys(diagnosis_report(outputs[1], arrays.dx_cal), options.model.diagnoses)} if options.model.diagnoses else {}),
    })
    return temperature, points, p, val_auc


def _json_keys(report: dict, diagnoses=sets.DIAGNOSES) -> dict:
    """The report with diagnosis names, not indices, as recall keys."""
    return {**report, "recall": {diagnoses[k]: v for k, v in report.get("recall", {}).items()}}


def _per_source(p, y, arrays: Arrays, points, outputs, diagnoses=sets.DIAGNOSES) -> dict:
    """Validation figures of each source on its own, so that a large source cannot hide a poor one."""
    screening = points[calibration.DEFAULT_OPERATING_POINT].threshold
    out = {}
    for source in sorted(set(arrays.source_cal)):
        m = arrays.source_cal == source
        row = {"images": int(m.sum()), "malignant": int(y[m].sum())}
        if 0 < y[m].sum() < m.sum():
            sens, spec = calibration.rates(p[m], y[m], screening)
            row.update(auc=auc(p[m], y[m]), screening_sensitivity=sens, screening_specificity=spec,
                       ece=calibration.expected_calibration_error(p[m], y[m]))
        if isinstance(outputs, (list, tuple)) and len(outputs) > 1 and (arrays.dx_cal[m] >= 0).any():
            row["diagnosis"] = _json_keys(diagnosis_report(np.asarray(outputs[1])[m], arrays.dx_cal[m]), diagnoses)
        out[source] = row
    return out


def write_evaluation(run_dir: Path, y, p, points, temperature) -> None:
    """The same evaluation that `edgeskin evaluate` writes, on the calibration
    pool, so every run can be judged without touching a test set."""
    from edgeskin.reporting.outputs import report_files
    from edgeskin.reporting.metrics import json_safe

    report = report_files(y, p, {k: v.threshold for k, v in points.items()}, run_dir / "evaluation",
                          temperature, history=run_dir / "history.csv")
    write_json(run_dir / "evaluation" / "metrics.json",
                json_safe({"data": {"split": "validation (calibration pool)"}, "metrics": report}))
