"""One process of a distributed test run (tests/test_scale.py): a tiny training with a strategy.

python tests/distributed_worker.py {none|mirrored|multi-worker} DATA RUN_DIR WEIGHTS [--logical-cpus N]
    [--resume] [--die-after-epoch N]

--die-after-epoch ends the process abruptly (exit status 3) once fine-tuning's
checkpoint of that epoch is written: a run killed there, for --resume to continue.

Logical CPU devices must be configured before TensorFlow initialises, so this
runs in a fresh process; multi-worker takes its place in the cluster from TF_CONFIG.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("distribute")
    parser.add_argument("data")
    parser.add_argument("run_dir")
    parser.add_argument("weights")
    parser.add_argument("--logical-cpus", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--die-after-epoch", type=int, default=0)
    args = parser.parse_args()
    import tensorflow as tf

    if args.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    tf.config.experimental.enable_op_determinism()

    from edgeskin.training.model import ModelOptions
    from edgeskin.training.options import TrainOptions
    from edgeskin.training.train import resume, train

    if args.die_after_epoch:
        _die_after(args.die_after_epoch)
    log = lambda message: print(message, flush=True)  # noqa: E731
    if args.resume:
        resume(args.run_dir, log=log, distribute_as=args.distribute)
        return
    options = TrainOptions.for_smoke_test(model=ModelOptions(image_size=64, alpha=0.35, weights=args.weights),
                                          head_epochs=1, head_copies=1, fine_tune_epochs=2,
                                          distribute=args.distribute)
    train(args.data, args.run_dir, options, log=log)


def _die_after(epoch: int) -> None:
    from edgeskin.training.checkpoint import Checkpoint

    save = Checkpoint.save

    def save_then_die(self, state, *args, **kwargs):
        save(self, state, *args, **kwargs)
        if state["phase"] == "fine_tune" and state["epoch"] == epoch:
            os._exit(3)

    Checkpoint.save = save_then_die


if __name__ == "__main__":
    sys.exit(main())
