"""How far apart two int8 files really are on a run's calibration pool: the ship rules' sum, with a paired bootstrap.

The ship rules compare files by their calibration pool ROC AUC plus their
diagnosis balanced accuracy, as `export` prints them. This scores every file
on that pool through the runtime, prints the same two figures and their sum,
and gives each file's difference from the first with a 95% interval from a
paired bootstrap over the validation images (an image's compressed copies
are drawn together). The interval is the pool's own sampling noise; what a
different training seed changes comes on top of it (docs/recipe.md, run v10).

    python scripts/pool_bootstrap.py runs/multi-v10-s43 runs/previous/edgeskin_int8_shipped_a592106.tflite \\
        runs/multi-v9a-s42/edgeskin_int8.tflite runs/multi-v10-s43/edgeskin_int8.tflite
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def require(run: Path, models) -> None:
    """Exit with a one-line error naming every file of the run or model that is not there."""
    missing = [str(p) for p in (run / "config.json", run / "splits.csv", run / "calibration.json", *models)
               if not p.is_file()]
    if missing:
        sys.exit(f"error: not found: {', '.join(missing)} (give a finished run folder and .tflite files)")


def pool(run: Path):
    """The calibration pool's images, labels, diagnoses and image ids, in export's order, at the run's size."""
    from edgeskin.data import sets
    from edgeskin.training.arrays import calibration_pool

    size = json.loads((run / "config.json").read_text())["options"]["model"]["image_size"]
    samples = sets.discover(run / "splits.csv").val
    qualities = tuple(json.loads((run / "calibration.json").read_text())["calibration_qualities"])
    x, y = calibration_pool(samples, size, qualities)
    copies = len(y) // len(samples)
    return x, y, [s.dx for s in samples] * copies, np.tile(np.arange(len(samples)), copies)


def heads(model: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each pool image's raw malignant score and diagnosis probabilities, as an app reads them."""
    from edgeskin.runtime import Classifier

    try:
        classifier = Classifier(model)
    except Exception as exc:  # the runtime's own message says what is wrong with the file
        sys.exit(f"error: {str(exc).splitlines()[0] if str(exc) else f'{model}: {type(exc).__name__}'}")
    if not classifier.diagnoses:
        sys.exit(f"error: {model} has no diagnosis head; the ship rules' sum needs one")
    out = [classifier.raw_heads(v) for v in x]
    return (np.array([o["malignant"] for o in out]), np.array([o["diagnosis"] for o in out]),
            list(classifier.diagnoses))


def rule_sum(y, score, dx_index, dx_prob, rows=None) -> tuple[float, float]:
    """(ROC AUC, diagnosis balanced accuracy) on the given rows (all by default), as export computes them."""
    from sklearn.metrics import roc_auc_score

    from edgeskin.reporting import metrics

    rows = np.arange(len(y)) if rows is None else rows
    known = rows[dx_index[rows] >= 0]
    return (float(roc_auc_score(y[rows], score[rows])),
            metrics.balanced_accuracy(dx_index[known], dx_prob[known].argmax(axis=1)))


def paired_differences(y, dx_index, image, files, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(files)) sums on bootstrap draws of whole validation images, the same draws for every file."""
    rng = np.random.default_rng(seed)
    rows_of = [np.flatnonzero(image == i) for i in range(image.max() + 1)]
    draws = np.empty((n_boot, len(files)))
    for b in range(n_boot):
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(rows_of), len(rows_of))])
        draws[b] = [sum(rule_sum(y, s, dx_index, p, rows)) for s, p in files]
    return draws


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder: its splits.csv and calibration.json name the pool")
    ap.add_argument("models", type=Path, nargs="+", help=".tflite files; each is compared with the first")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    require(args.run, args.models)
    x, y, dx, image = pool(args.run)
    files, dx_index = [], None
    for model in args.models:
        score, prob, names = heads(model, x)
        index = np.array([names.index(d) if d in names else -1 for d in dx])
        if dx_index is not None and not np.array_equal(index, dx_index):
            sys.exit(f"{model}: its diagnoses differ from {args.models[0]}'s; the balanced accuracies would not compare")
        files.append((score, prob))
        dx_index = index
        auc, bal = rule_sum(y, score, dx_index, prob)
        print(f"{model}: ROC AUC {auc:.4f} + balanced accuracy {bal:.4f} = {auc + bal:.4f}")
    draws = paired_differences(y, dx_index, image, files, args.bootstrap, args.seed)
    print(f"{len(y)} pool images ({image.max() + 1} validation images); difference from {args.models[0].name}, "
          f"95% interval of {args.bootstrap} paired draws:")
    for k, model in enumerate(args.models[1:], 1):
        d = draws[:, k] - draws[:, 0]
        lo, hi = np.percentile(d, [2.5, 97.5])
        print(f"  {model}: {d.mean():+.4f} ({lo:+.4f} to {hi:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
