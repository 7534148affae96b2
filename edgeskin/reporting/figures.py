"""The evaluation figures, as PNG files that can be read at a glance."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

COLOURS = {"screening": "#d62728", "balanced": "#1f77b4", "specific": "#2ca02c", "requested": "#9467bd"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def roc(curves: dict[str, tuple], points: dict[str, dict], path: Path) -> Path:
    """ROC curves (name -> (y, p, auc)) with the first model's operating points marked."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y, p, auc) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {auc:.3f})")
    for name, m in points.items():
        ax.plot(1 - m["specificity"]["value"], m["sensitivity"]["value"], "o", ms=9,
                color=COLOURS.get(name, "k"), label=f"{name} @ {m['threshold']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity", title="ROC curve", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def precision_recall(curves: dict[str, tuple], path: Path) -> Path:
    from sklearn.metrics import precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y, p, ap) in curves.items():
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, lw=2, label=f"{name} (AP {ap:.3f})")
        ax.axhline(np.mean(y), ls=":", color="grey")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall curve", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def reliability(y, p, path: Path, bins: int = 15, before=None) -> Path:
    """Reliability diagram over a histogram of the probabilities."""
    plt = _plt()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    edges = np.linspace(0, 1, bins + 1)

    def curve(probs, label, style):
        idx = np.minimum((np.asarray(probs) * bins).astype(int), bins - 1)
        xs, ys = [], []
        for b in range(bins):
            m = idx == b
            if m.any():
                xs.append(np.mean(np.asarray(probs)[m]))
                ys.append(np.mean(np.asarray(y)[m]))
        ax.plot(xs, ys, style, label=label)

    if before is not None:
        curve(before, "before calibration", "s--")
    curve(p, "calibrated", "o-")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.set(ylabel="observed malignant fraction", title="Reliability diagram", ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    hx.hist(p, bins=edges, color="#7f7f7f")
    hx.set(xlabel="malignant_probability", ylabel="images")
    return _save(fig, path)


def threshold_sweep(y, p, points: dict[str, dict], path: Path) -> Path:
    """Sensitivity, specificity and PPV against the threshold."""
    from edgeskin.reporting.metrics import at_threshold

    plt = _plt()
    ts = np.linspace(0, 1, 201)
    rows = [at_threshold(y, p, t) for t in ts]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for key, style in (("sensitivity", "-"), ("specificity", "-"), ("ppv", "--")):
        ax.plot(ts, [r[key] for r in rows], style, lw=2, label=key)
    for name, m in points.items():
        ax.axvline(m["threshold"], color=COLOURS.get(name, "k"), ls=":", lw=1.5, label=f"{name} ({m['threshold']:.3f})")
    ax.set(xlabel="threshold on malignant_probability", ylabel="rate", title="Threshold sweep", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def confusion_matrices(points: dict[str, dict], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, len(points), figsize=(3.6 * len(points), 3.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], points.items()):
        c = m["confusion"]
        grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(grid, cmap="Blues")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=13,
                    color="white" if v > grid.max() / 2 else "black")
        ax.set_xticks([0, 1], ["benign", "malignant"])
        ax.set_yticks([0, 1], ["benign", "malignant"])
        ax.set(xlabel="predicted", ylabel="actual", title=f"{name} (t={m['threshold']:.3f})")
    return _save(fig, path)


def histograms(y, p, points: dict[str, dict], path: Path) -> Path:
    plt = _plt()
    y, p = np.asarray(y).astype(bool), np.asarray(p)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    edges = np.linspace(0, 1, 41)
    ax.hist(p[~y], bins=edges, alpha=0.6, label=f"benign (n={int((~y).sum())})", color="#1f77b4")
    ax.hist(p[y], bins=edges, alpha=0.6, label=f"malignant (n={int(y.sum())})", color="#d62728")
    for name, m in points.items():
        ax.axvline(m["threshold"], color=COLOURS.get(name, "k"), ls=":", lw=1.5, label=name)
    ax.set(xlabel="malignant_probability", ylabel="images", title="Probabilities by true class")
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(history_csv: Path, path: Path) -> Path | None:
    """Loss and validation AUC per epoch, both phases on one time axis."""
    history_csv = Path(history_csv)
    if not history_csv.is_file():
        return None
    with open(history_csv) as f:
        # The diagnosis head's own refit (phase 3) has no loss or AUC of the decision to plot.
        rows = [r for r in csv.DictReader(f) if r["phase"] in ("head", "fine_tune")]
    if not rows:
        return None
    plt = _plt()
    fig, (lx, ax) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(1, len(rows) + 1)
    for key, style in (("loss", "-"), ("val_loss", "--")):
        lx.plot(x, [float(r[key]) for r in rows], style, label=key)
    ax.plot(x, [float(r["val_auc"]) for r in rows], "o-", ms=3, label="val_auc")
    if any(r.get("val_dx_balanced_accuracy") for r in rows):
        ax.plot(x, [float(r["val_dx_balanced_accuracy"] or "nan") for r in rows], "s-", ms=3,
                label="val diagnosis balanced accuracy")
    switch = sum(r["phase"] == "head" for r in rows)
    for a in (lx, ax):
        if switch < len(rows):
            a.axvline(switch + 0.5, color="grey", ls=":", label="fine-tuning starts")
        a.set_xlabel("epoch (head, then fine-tuning)")
        a.legend(fontsize=8)
    lx.set(ylabel="loss", title="Loss")
    ax.set(ylabel="ROC AUC / balanced accuracy", title="Validation")
    return _save(fig, path)


def audit(report: dict, samples, rows, path: Path) -> Path:
    """One panel a property: its distribution per class, the AUC in the title, flags in red."""
    plt = _plt()
    props = report["properties"]
    cols = 4
    fig, axes = plt.subplots(int(np.ceil(len(props) / cols)), cols, figsize=(4 * cols, 2.8 * np.ceil(len(props) / cols)))
    labels = np.array([s.label for s in samples])
    for ax, row in zip(axes.flat, props):
        values = [r[row["property"]] for r in rows]
        if row["kind"] == "numeric":
            v = np.array(values, dtype=np.float64)
            ok = np.isfinite(v)
            bins = np.histogram_bin_edges(v[ok], bins=30) if ok.any() else 10
            for k, (name, colour) in enumerate((("benign", "#1f77b4"), ("malignant", "#d62728"))):
                ax.hist(v[ok & (labels == k)], bins=bins, alpha=0.55, density=True, color=colour, label=name)
        else:
            levels = sorted(set(values))
            x = np.arange(len(levels))
            for k, (name, colour) in enumerate((("benign", "#1f77b4"), ("malignant", "#d62728"))):
                n = max(1, int((labels == k).sum()))
                share = [sum(1 for val, y in zip(values, labels) if val == lv and y == k) / n for lv in levels]
                ax.bar(x + (k - 0.5) * 0.4, share, width=0.4, color=colour, alpha=0.8, label=name)
            ax.set_xticks(x, levels, fontsize=7)
        ax.set_title(f"{row['property']}: AUC {row['auc']:.2f}" + (" FLAGGED" if row["flagged"] else ""),
                     fontsize=9, color="#d62728" if row["flagged"] else "black")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(props):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def robustness(rows: list[dict], path: Path) -> Path:
    """Per perturbation: ROC AUC, the share of screening decisions that flip, and the median |delta probability|."""
    plt = _plt()
    names = [r["name"] for r in rows]
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.35 * len(names) + 1.5), sharey=True)
    panels = (("roc_auc", "ROC AUC"), ("screening_flip_rate", "screening decisions flipped"),
              ("median_abs_delta", "median |delta malignant_probability|"))
    for ax, (key, title) in zip(axes, panels):
        vals = [r[key]["value"] if isinstance(r[key], dict) else r[key] for r in rows]
        ax.barh(y, vals, color="#1f77b4")
        if key == "roc_auc":
            ax.set_xlim(min(0.5, min(vals) - 0.02), 1.0)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    return _save(fig, path)


def diagnosis_confusion(confusion, names, path: Path, title: str = "Diagnosis head") -> Path:
    """The diagnosis confusion matrix: rows true, columns predicted, coloured by the share of each
    row (so a rare diagnosis reads as clearly as a common one), every cell's count written in it.

    Rows of diagnoses with no image are left out; every column stays, since
    the model may predict a diagnosis the set does not hold.
    """
    plt = _plt()
    grid = np.asarray(confusion, dtype=np.int64)
    rows = np.flatnonzero(grid.sum(axis=1))
    if len(rows) == 0:
        raise ValueError("a confusion matrix with no images")
    counts = grid[rows]
    shares = counts / counts.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(0.75 * len(names) + 2.2, 0.6 * len(rows) + 1.8))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, f"{v}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(rows)), [f"{names[r]} (n={grid[r].sum()})" for r in rows])
    ax.set(xlabel="predicted diagnosis", ylabel="true diagnosis", title=f"{title}: share of each true diagnosis")
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the row")
    return _save(fig, path)
