"""What weight averaging buys a fine-tuned run, and what it costs: EMA and SWA against the weights as they train.

Fine-tuning goes on from a finished run's network (its layers, split and
recipe, at a constant learning rate) for a few epochs. After every step an
exponential moving average (EMA) of the trained weights is updated; after
every epoch the epoch's weights join an equal-weight average (SWA). At the
end of each epoch all three are scored as `train` selects epochs: ROC AUC and
diagnosis balanced accuracy on the calibration pool's q75 copy. The EMA's
cost is its own update time against the epoch's. Test splits are never read.

Example: python scripts/compare_weight_averaging.py runs/multi-v4-s42 --epochs 3 --lr 3e-5

With --train-image-size it also measures a short phase at another input size
(FixRes: a run trained at 160 px, which is scored at 224, goes on at 224).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def _score(nets, arrays, options) -> tuple[float, float]:
    from edgeskin.training import phases

    logs = {}
    phases.score_on_pool(nets, arrays, options, logs)
    # A run without a diagnosis head has no balanced accuracy: nan, so the sums show it too.
    return logs["val_auc"], logs.get("val_dx_balanced_accuracy", float("nan"))


def _scored_with(nets, arrays, options, variables, values) -> tuple[float, float]:
    """The score with values in place of the variables' own, which are put back afterwards."""
    from edgeskin.training import averaging

    with averaging.applied(variables, values):
        return _score(nets, arrays, options)


def _averages(keras, nets, arrays, options, momentum: float, started: float):
    """The EMA is train --ema's own (averaging.WeightAverage); the SWA is kept here."""
    from edgeskin.training.averaging import WeightAverage

    variables = nets.net.trainable_variables
    ema = WeightAverage(variables, momentum)

    class Averages(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.swa, self.count = None, 0
            self.ema_seconds, self.epoch_started = 0.0, time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started, self.ema_seconds = time.time(), 0.0

        def on_train_batch_end(self, batch, logs=None):
            t = time.perf_counter()
            ema.update()
            self.ema_seconds += time.perf_counter() - t

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.time() - self.epoch_started
            now = [v.numpy() for v in variables]
            self.count += 1
            self.swa = now if self.swa is None else [s + (x - s) / self.count for s, x in zip(self.swa, now)]
            rows = {"as trained": _score(nets, arrays, options),
                    f"EMA {momentum}": _scored_with(nets, arrays, options, variables, ema.values),
                    f"SWA of {self.count} epochs": _scored_with(nets, arrays, options, variables, self.swa)}
            for name, (auc, dx) in rows.items():
                print(f"epoch {epoch + 1}  {name:22s} AUC {auc:.4f}  balanced accuracy {dx:.4f}  sum {auc + dx:.4f}")
            print(f"epoch {epoch + 1}  {seconds:.0f} s, of which the EMA's updates {self.ema_seconds:.1f} s "
                  f"({self.ema_seconds / seconds:.1%}); {(time.time() - started) / 60:.1f} min in all", flush=True)

    return Averages()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--ema-momentum", type=float, default=0.999)
    ap.add_argument("--train-image-size", type=int, default=None, help="the random crops' size [default: the run's]")
    args = ap.parse_args()

    import keras

    from edgeskin.data import sets
    from edgeskin.training import model as model_lib, phases, run as run_lib
    from edgeskin.training.arrays import load_arrays
    from edgeskin.training.options import TrainOptions

    started = time.time()
    try:
        options = replace(TrainOptions.from_dict(run_lib.read_config(args.run)["options"]), fine_tune_epochs=args.epochs)
    except run_lib.RunError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.train_image_size:
        options = replace(options, train_image_size=args.train_image_size)
    arrays = load_arrays(sets.discover(args.run / "splits.csv"), options)
    keras.utils.set_random_seed(options.seed)
    nets = phases.build_nets(options)
    nets.load(args.run / "best.keras")
    model_lib.set_fine_tuning(nets.backbone, options.fine_tune_from)
    auc, dx = _score(nets, arrays, options)
    print(f"start ({args.run}): AUC {auc:.4f}  balanced accuracy {dx:.4f}  sum {auc + dx:.4f}; "
          f"{(time.time() - started) / 60:.1f} min")
    batches = phases.fine_tuning_batches(keras, arrays, options)
    phases.compile_heads(keras, nets.net, args.lr, options, arrays, weights=(1.0, options.diagnosis_loss_weight))
    callback = _averages(keras, nets, arrays, options, args.ema_momentum, started)
    nets.net.fit(batches, epochs=args.epochs, callbacks=[callback], verbose=2)
    print(f"trainable weights averaged: {sum(int(np.prod(v.shape)) for v in nets.net.trainable_variables):,}")


if __name__ == "__main__":
    main()
