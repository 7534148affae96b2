"""Which diagnosis loss the heads learn best from: each fitted on the same cached frozen features (phase 1 alone).

The run's own split (same seed and validation share as `train`), one augmented
copy of the training set through the frozen ImageNet backbone at the training
size (the layers below --fine-tune-from on the int8 grid, as `--int8-grid`
puts them), and the same initial head for every loss. Each head trains as
phase 1 does and keeps its best epoch by ROC AUC + diagnosis balanced
accuracy on the calibration pool's q75 copy, where its figures are printed.
Test splits are never read. Through-the-backbone comparisons cost a
fine-tuning run each; this one costs seconds a loss once the features exist.

Example: python scripts/compare_diagnosis_losses.py ../shared/data/isic-binary ../shared/data/ham10000 ../shared/data/isic2017
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

LOSSES = {  # name: (diagnosis_loss, diagnosis_weighting, label_smoothing, class-balanced sampling)
    "weighted, inverse frequency": ("weighted", "inverse", 0.0, False),
    "weighted, sqrt frequency": ("weighted", "sqrt", 0.0, False),
    "unweighted": ("weighted", "none", 0.0, False),
    "unweighted, class-balanced sampling": ("weighted", "none", 0.0, True),
    "balanced softmax": ("balanced_softmax", "none", 0.0, False),
    "balanced softmax + label smoothing 0.1": ("balanced_softmax", "none", 0.1, False),
}


def balanced_draw(arrays, features, seed: int):
    """The training rows drawn again, with replacement, so that every diagnosis is drawn equally often; images
    with no diagnosis keep their share. The heads then train on the draw (class-balanced sampling)."""
    import numpy as np

    dx = np.where(arrays.d_train.sum(axis=1) > 0, arrays.d_train.argmax(axis=1), -1)
    counts = {k: int((dx == k).sum()) for k in np.unique(dx[dx >= 0])}
    share = (dx >= 0).mean()  # the images with a diagnosis keep their share of the draw, split evenly among them
    p = np.array([share / (len(counts) * counts[k]) if k >= 0 else 1.0 / len(dx) for k in dx])
    rows = np.random.default_rng(seed).choice(len(dx), len(dx), p=p / p.sum())
    drawn = replace(arrays, y_train=arrays.y_train[rows], w_train=arrays.w_train[rows], d_train=arrays.d_train[rows])
    return drawn, (features[0][rows], features[1])


def pool_scores(nets, arrays, f_cal, melanoma: int) -> dict:
    from edgeskin.training import model as model_lib
    from edgeskin.training.report import auc, diagnosis_report

    outputs = nets.head.predict(f_cal, batch_size=256, verbose=0)
    dx = diagnosis_report(outputs[1], arrays.dx_cal[arrays.epoch_view()])
    return {"auc": auc(model_lib.malignant_logits(outputs), arrays.y_cal[arrays.epoch_view()]),
            "balanced_accuracy": dx["balanced_accuracy"], "top3": dx["top3_accuracy"],
            "melanoma_recall": dx["recall"].get(melanoma, float("nan"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--fine-tune-from", default="block_6_expand", help="the layers below it go on the int8 grid")
    ap.add_argument("--head-epochs", type=int, default=12)
    args = ap.parse_args()

    import keras

    from edgeskin.data import sets
    from edgeskin.training import phases
    from edgeskin.training.arrays import diagnosis_targets, load_arrays
    from edgeskin.training.options import TrainOptions
    from edgeskin.training.train import prepare_dataset

    started = time.time()
    options = TrainOptions.for_multisource(seed=args.seed, val_fraction=args.val_fraction, head_copies=1,
                                           head_epochs=args.head_epochs, fine_tune_from=args.fine_tune_from)
    dataset, options = prepare_dataset(args.sources, options, print)
    arrays = load_arrays(dataset, options)
    keras.utils.set_random_seed(options.seed)
    nets = phases.build_nets(options)
    nets.snap_below(options.fine_tune_from)
    features = phases.head_features(nets, arrays, options)
    print(f"features of {len(features[0])} training and {len(features[1])} pool images: {time.time() - started:.0f} s")
    start = nets.head.get_weights()
    print(f"{'diagnosis loss':40s} {'AUC':>6s} {'bal acc':>8s} {'top-3':>6s} {'mel recall':>10s}  (pool, q75)")
    for name, (loss, weighting, smoothing, balanced) in LOSSES.items():
        variant = replace(options, diagnosis_loss=loss, diagnosis_weighting=weighting, label_smoothing=smoothing)
        keras.utils.set_random_seed(options.seed)
        nets.head.set_weights(start)
        targets = replace(arrays, d_train=diagnosis_targets(dataset.train, options.model.diagnoses, weighting))
        drawn, fit_features = balanced_draw(targets, features, options.seed) if balanced else (targets, features)
        phases.fit_head(keras, nets, drawn, variant, fit_features, phases.History())
        s = pool_scores(nets, arrays, features[1], sets.DIAGNOSES.index("mel"))
        print(f"{name:40s} {s['auc']:6.3f} {s['balanced_accuracy']:8.3f} {s['top3']:6.3f} {s['melanoma_recall']:10.3f}")


if __name__ == "__main__":
    main()
