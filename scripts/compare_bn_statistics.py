"""Whether the frozen backbone reads dermoscopy better with batch-norm statistics of dermoscopy (AdaBN) than ImageNet's.

The recipe keeps every BatchNorm in inference mode with ImageNet's moving
statistics. AdaBN (Li et al. 2016) re-estimates them on the target domain,
a common fix for a large shift of domain. This fits phase 1's heads twice on
the recipe's split, once on features with ImageNet's statistics and once
with statistics averaged over augmented training images at the serving size
(blocks 0-5 then put on the int8 grid, as `--int8-grid` does), and prints
both on the calibration pool's q75 copy. Test splits are never read.

Example: python scripts/compare_bn_statistics.py ../shared/data/isic-binary ../shared/data/ham10000 ../shared/data/isic2017
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def reestimate(keras, serving, batches) -> None:
    """Every BatchNorm's moving statistics replaced by their mean over the given batches of raw pixels."""
    from edgeskin.training import model as model_lib

    backbone, pre = model_lib.backbone_of(serving), serving.get_layer("preprocess")
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    try:
        for k, x in enumerate(batches, 1):
            for layer in norms:  # a running mean: batch k weighs 1/k
                layer.momentum = 1.0 - 1.0 / k
            backbone(pre(keras.ops.image.resize(x, serving.input.shape[1:3])), training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum


def augmented(arrays, augmentation, batches: int, batch_size: int = 64, seed: int = 5):
    """Batches of freshly augmented training images, drawn without replacement within a batch."""
    from edgeskin.data import augment

    rng = np.random.default_rng(seed)
    for _ in range(batches):
        idx = rng.choice(len(arrays.y_train), batch_size, replace=False)
        yield augment.augment_batch(arrays.x_train[idx], rng, augmentation).astype("float32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--batches", type=int, default=60, help="augmented batches of 64 the statistics average over")
    args = ap.parse_args()

    import keras

    from compare_diagnosis_losses import pool_scores
    from edgeskin.data import sets
    from edgeskin.training import phases
    from edgeskin.training.arrays import load_arrays
    from edgeskin.training.options import TrainOptions
    from edgeskin.training.train import prepare_dataset

    started = time.time()
    dataset, options = prepare_dataset(args.sources, TrainOptions.for_multisource(), print)
    arrays = load_arrays(dataset, options)
    print(f"{'batch-norm statistics':24s} {'AUC':>6s} {'bal acc':>8s} {'top-3':>6s} {'mel recall':>10s}  (pool, q75)")
    for name in ("ImageNet", "dermoscopy (AdaBN)"):
        keras.utils.set_random_seed(options.seed)
        nets = phases.build_nets(options)
        if name != "ImageNet":
            reestimate(keras, nets.serving, augmented(arrays, options.augmentation, args.batches))
            nets.net.set_weights(nets.serving.get_weights())
        nets.snap_below(options.fine_tune_from)
        features = phases.head_features(nets, arrays, options)
        phases.fit_head(keras, nets, arrays, options, features, phases.History())
        s = pool_scores(nets, arrays, features[1], sets.DIAGNOSES.index("mel"))
        print(f"{name:24s} {s['auc']:6.3f} {s['balanced_accuracy']:8.3f} {s['top3']:6.3f} "
              f"{s['melanoma_recall']:10.3f}  ({(time.time() - started) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
