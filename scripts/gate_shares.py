"""The share of test lesions the shipped model sets aside, stored and after a phone's q75 4:2:0 re-encode.

The in-model gate issue's bars: at most 2% stored, at most 3% re-encoded.
isic-binary's test split is taken less its near-duplicates of its own
training split (as tests/test_shipped.py does); HAM10000's test split is
lesion-level already.

    python scripts/gate_shares.py [--model models/edgeskin_int8.tflite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from edgeskin.data import perturb, sets, splits
    from edgeskin.runtime import Classifier
    from edgeskin.runtime.imageio import open_rgb, to_model_input

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "edgeskin_int8.tflite")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()
    clf = Classifier(args.model, num_threads=2)

    def share(images) -> float:
        return float(np.mean([bool(clf.reasons(im.size, to_model_input(im, clf.image_size))) for im in images]))

    for name in ("isic-binary", "ham10000"):
        ds = sets.discover(args.data / name)
        kept = splits.held_out_test(ds)[0] if name == "isic-binary" else ds.split("test")
        stored = [open_rgb(s.path) for s in kept]
        print(f"{name} test ({len(stored)} images): set aside {share(stored):.2%} stored, "
              f"{share([perturb.reencode(im, 75) for im in stored]):.2%} after a q75 4:2:0 re-encode")


if __name__ == "__main__":
    main()
