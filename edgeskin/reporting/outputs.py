"""The files of a report: predictions.csv and the metrics with their figures (shared by evaluate and train)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edgeskin.data import sets
from edgeskin.reporting import figures, metrics


def write_predictions(path: Path, samples, p: np.ndarray, diagnosis: np.ndarray | None = None,
                      diagnoses: tuple[str, ...] = ()) -> None:
    """One row an image; with a diagnosis head, its true diagnosis and every diagnosis probability too."""
    dx_columns = diagnosis is not None
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "malignant_probability"]
                   + (["dx"] + [f"p_{name}" for name in diagnoses] if dx_columns else []))
        for i, (s, v) in enumerate(zip(samples, p)):
            w.writerow([s.path, sets.LABELS[s.label], f"{v:.6f}"]
                       + ([s.dx] + [f"{q:.6f}" for q in diagnosis[i]] if dx_columns else []))


def report_files(y, p, thresholds: dict, out: Path, temperature=None, compare=None, history=None,
                 n_boot: int = 1000, name: str = "model", platt=None) -> dict:
    """Metrics and figures for one scored set; shared by `evaluate` and the end of `train`."""
    out.mkdir(parents=True, exist_ok=True)
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    m = metrics.report(y, p, thresholds, temperature, n_boot=n_boot, platt=platt)
    named = {k: v for k, v in m["thresholds"].items()}
    curves = {name: (y, p, m["roc_auc"]["value"])}
    pr = {name: (y, p, m["pr_auc"]["value"])}
    if compare is not None:
        cname, cp, cm = compare
        curves[cname] = (y, cp, cm["roc_auc"]["value"])
        pr[cname] = (y, cp, cm["pr_auc"]["value"])
    written = [
        figures.roc(curves, named, figs / "roc.png"),
        figures.precision_recall(pr, figs / "precision_recall.png"),
        figures.reliability(y, p, figs / "reliability.png",
                            before=platt.invert(p) if platt else metrics.uncalibrated(p, temperature) if temperature else None),
        figures.threshold_sweep(y, p, named, figs / "threshold_sweep.png"),
        figures.confusion_matrices(named, figs / "confusion_matrices.png"),
        figures.histograms(y, p, named, figs / "probability_histograms.png"),
    ]
    if history is not None:
        written.append(figures.training_curves(history, figs / "training_curves.png"))
    m["figures"] = sorted(str(f.relative_to(out)) for f in written if f is not None)
    return m
