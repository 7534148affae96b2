"""Whether the diagnosis head ranks malignancy better than the benign/malignant head, alone or added to it.

The diagnosis head was trained through the backbone as hard as the
benign/malignant one; its three malignant diagnoses (mel, bcc, akiec) give a
second malignancy score, P(mel) + P(bcc) + P(akiec). This prints, per source
of a run's calibration pool, the ROC AUC of the file's malignant score, of
that sum, and of their logits added (at two weights), through the runtime as
an app reads both heads. ISIC 2017's only malignant diagnosis is melanoma,
so P(mel) alone is printed too. Test splits are never read.

    python scripts/malignancy_from_diagnosis.py models/training models/edgeskin_int8.tflite
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MALIGNANT_DIAGNOSES = ("mel", "bcc", "akiec")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder: its splits.csv and calibration.json name the pool")
    ap.add_argument("model", type=Path, help="a .tflite file with a diagnosis head")
    args = ap.parse_args(argv)
    from pool_bootstrap import heads, pool, require

    require(args.run, [args.model])
    from sklearn.metrics import roc_auc_score

    from edgeskin.data import sets

    x, y, _, image = pool(args.run)
    source = np.array([s.source for s in sets.discover(args.run / "splits.csv").val])[image]
    score, prob, names = heads(args.model, x)
    from_dx = prob[:, [names.index(d) for d in MALIGNANT_DIAGNOSES]].sum(axis=1)
    columns = {"malignant head": _logit(score), "diagnosis sum": _logit(from_dx),
               "head + sum": _logit(score) + _logit(from_dx), "head + sum/2": _logit(score) + _logit(from_dx) / 2,
               "P(mel)": prob[:, names.index("mel")]}
    print(f"{'pool (ROC AUC)':16s}" + "".join(f"{c:>16s}" for c in columns))
    for name in ("all", *sorted(set(source))):
        rows = np.ones(len(y), bool) if name == "all" else source == name
        print(f"{name:16s}" + "".join(f"{roc_auc_score(y[rows], v[rows]):16.4f}" for v in columns.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
