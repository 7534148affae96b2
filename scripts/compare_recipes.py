"""Choose the compression-blind recipe on the validation split, with the backbone frozen.

For each recipe, with the in-graph chroma subsampling on or off, a logistic head is trained on frozen ImageNet MobileNetV2
features of augmented copies of the training split (the same split `train`
carves with the same seed), then measured on the validation split as stored
and re-encoded at JPEG q75 4:2:0: ROC AUC on both, the median |delta
probability| and the share of decisions at the stored-validation screening
threshold that flip. test/ is never read.

Example: python scripts/compare_recipes.py ../shared/data/isic-binary --copies 2
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--chroma", nargs="+", choices=["off", "on"], default=["off", "on"])
    ap.add_argument("--recipes", nargs="+", default=["naive", "augmentation only", "harmonize + augmentation"])
    args = ap.parse_args()

    from edgeskin.data import augment, perturb, sets, splits
    from edgeskin.training import model as model_lib

    ds = splits.split_validation(sets.discover(args.data), 0.2, args.seed)
    x_train_raw = sets.load_images(ds.train, 224)
    y_train = np.array([s.label for s in ds.train])
    x_val = sets.load_images(ds.val, 224)
    y_val = np.array([s.label for s in ds.val])
    run = _recipe(x_train_raw, y_train, y_val, args.copies, args.seed)
    x_val75 = perturb.deployment_pool(x_val, (75,))
    off = augment.AugmentOptions.off()
    recipes = {
        "naive": dataclasses.replace(off, harmonize_quality=None),
        "harmonize only": off,
        "augmentation only": dataclasses.replace(augment.AugmentOptions(), harmonize_quality=None),
        "harmonize + augmentation": augment.AugmentOptions(),
    }
    print(f"{'recipe':<48}{'AUC stored':>11}{'AUC q75':>9}{'median|dp|':>11}{'flipped':>9}{'spec drop':>10}  seconds")
    for chroma in args.chroma:
        net, _, _ = model_lib.build(model_lib.ModelOptions(chroma_subsampling=chroma == "on"))
        extract = model_lib.feature_extractor(net)
        feats = lambda x: extract.predict(x, batch_size=64, verbose=0)  # noqa: E731
        f_val, f_val75 = feats(x_val), feats(x_val75)
        for name in args.recipes:
            run(f"{name}, in-graph chroma 4:2:0 {chroma}", recipes[name], feats, f_val, f_val75)


def _recipe(x_train_raw, y_train, y_val, copies, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from edgeskin.data import augment
    from edgeskin.runtime import calibration

    def run(name, opts, feats, f_val, f_val75):
        t0 = time.time()
        rng = np.random.default_rng(seed)
        x_h = augment.harmonize(x_train_raw, opts)
        f = np.concatenate([feats(augment.augment_batch(x_h, rng, opts)) for _ in range(copies)])
        clf = LogisticRegression(C=0.5, max_iter=3000, class_weight="balanced").fit(f, np.tile(y_train, copies))
        p, p75 = clf.predict_proba(f_val)[:, 1], clf.predict_proba(f_val75)[:, 1]
        t = calibration.choose_operating_points(p, y_val)["screening"].threshold
        spec, spec75 = calibration.rates(p, y_val, t)[1], calibration.rates(p75, y_val, t)[1]
        print(f"{name:<48}{roc_auc_score(y_val, p):>11.4f}{roc_auc_score(y_val, p75):>9.4f}"
              f"{np.median(np.abs(p75 - p)):>11.4f}{np.mean((p >= t) != (p75 >= t)):>9.1%}{spec - spec75:>10.3f}"
              f"  {time.time() - t0:.0f}", flush=True)

    return run


if __name__ == "__main__":
    main()
