"""Screening decisions that a phone's JPEG re-save flips, on a run's validation split: the robustness bar, before any test.

The issue's robustness bar (a q75 4:2:0 re-save flips at most 5% of
screening decisions) is reported on the test splits, where it can only
refuse a model. This measures the same thing on the validation split's
stored images, per source, so a ship rule can name it before a test split
is read. Each file is scored as `edgeskin predict` scores it, at its own
screening threshold.

    python scripts/validation_robustness.py runs/multi-v6-s42 runs/multi-v6-s42/edgeskin_int8.tflite \\
        runs/previous/edgeskin_int8_shipped_a592106.tflite
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def flips(model: Path, samples, perturbation: str) -> dict[str, float]:
    """The share of screening decisions the perturbation flips, over all samples and per source."""
    from edgeskin.data import perturb
    from edgeskin.reporting import scoring
    from edgeskin.runtime import calibration

    scorer = scoring.load_scorer(model)
    threshold = scorer.operating_points[calibration.DEFAULT_OPERATING_POINT]
    predictor = scorer.predictor()
    stored = scorer.score(samples, predictor=predictor) >= threshold
    resaved = scorer.score(samples, predictor=predictor, transform=perturb.BY_NAME[perturbation].apply) >= threshold
    flipped = stored != resaved
    source = np.array([s.source for s in samples])
    return {"all": float(flipped.mean()), **{s: float(flipped[source == s].mean()) for s in sorted(set(source))}}


def main(argv=None) -> int:
    from edgeskin.data import perturb, sets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder (its splits.csv names the validation split)")
    ap.add_argument("models", type=Path, nargs="+", help=".tflite files to score")
    ap.add_argument("--perturbation", default="jpeg_q75", choices=sorted(perturb.BY_NAME))
    args = ap.parse_args(argv)
    samples = sets.discover(args.run / "splits.csv").val
    print(f"{len(samples)} validation images of {args.run}; screening decisions flipped by {args.perturbation}:")
    for model in args.models:
        shares = flips(model, samples, args.perturbation)
        print(f"{model}: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
