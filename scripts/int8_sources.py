"""Which int8 rounding costs a run its AUC: each group of layers' weights rounded as the converter rounds them.

Puts the float model's convolution weights (batch norm folded in) on their
per-channel int8 grid, one group of layers at a time, and prints the
benign/malignant ROC AUC on calibration-pool images (their q75 copy, the view
epochs are selected on), next to the untouched float model's. A group whose
rounding alone costs as much as the whole export is where int8 loses.

    python scripts/int8_sources.py runs/multi-v3-s42 --images 700
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _block(name: str) -> int:
    m = re.match(r"block_(\d+)_", name)
    return int(m.group(1)) if m else (17 if name == "Conv_1" else 0)


GROUPS = {
    "blocks 0-5": lambda n: _block(n) <= 5,
    "blocks 6-10": lambda n: 6 <= _block(n) <= 10,
    "blocks 11-16 and Conv_1": lambda n: _block(n) >= 11,
    "every expand convolution": lambda n: "expand" in n,
    "every depthwise convolution": lambda n: "depthwise" in n,
    "every projection": lambda n: "project" in n,
    "all": lambda n: True,
}


def _round(convolutions, original: dict, chosen) -> None:
    from edgeskin.training import quantaware

    for layer, fold, depthwise in convolutions:
        weights = original[layer.name]
        if chosen(layer.name):
            weights = [quantaware.on_int8_grid(weights[0], fold, depthwise), *weights[1:]]
        layer.set_weights(weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--images", type=int, default=700, help="validation images drawn (seeded) for the pool")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    from edgeskin.data import perturb, sets
    from edgeskin.training import model as model_lib, quantaware

    serving = model_lib.load(args.run / "model.keras")
    val = sets.discover(args.run / "splits.csv").val
    pick = np.random.default_rng(1).permutation(len(val))[: args.images]
    x = perturb.deployment_pool(sets.load_images([val[i] for i in sorted(pick)], int(serving.input_shape[1])), (75,))
    y = np.array([val[i].label for i in sorted(pick)])
    convolutions = list(quantaware.convolutions(model_lib.backbone_of(serving)))
    original = {layer.name: layer.get_weights() for layer, _, _ in convolutions}

    def auc() -> float:
        return float(roc_auc_score(y, serving.predict(x, batch_size=64, verbose=0)[0][:, 1]))

    print(f"{'weights on the int8 grid':28s} {'ROC AUC':>8s}   ({len(y)} pool images at q75)")
    print(f"{'none (the float model)':28s} {auc():8.4f}")
    for name, chosen in GROUPS.items():
        _round(convolutions, original, chosen)
        print(f"{name:28s} {auc():8.4f}")


if __name__ == "__main__":
    main()
