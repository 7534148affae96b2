"""Peak memory and throughput of fine-tuning's input, streamed from disk against decoded in memory (issue #19).

For each training-set size and input mode, a fresh process takes that many
images of DATA (cycling through them if DATA has fewer), a fixed 100-image
validation set, and runs `steps` fine-tuning steps of the real pipeline
(arrays.load_arrays, phases' batches, model.fit). It reports the process's
peak resident memory and the training images per second after a warm-up.
Streamed memory must not grow with the set (within 10% from 2,000 to 8,000).

Example (the figures in docs/scale.md):
  python scripts/bench_streaming.py ../shared/data/ham10000 --sizes 2000 8000 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
WARM_UP = 3  # steps left out of the throughput: tracing and the first batches' queue


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _dataset(data: str, n: int, seed: int):
    import numpy as np

    from edgeskin.data import sets

    found = sets.discover_many([data])
    pool = list(found.train + found.val + found.test)
    np.random.default_rng(seed).shuffle(pool)
    val, rest = pool[:100], pool[100:]
    return sets.Dataset("bench", train=tuple(rest[i % len(rest)] for i in range(n)), val=tuple(val))


def one(args) -> dict:
    """Measure one (mode, size) in this process; return the figures."""
    from edgeskin.data import sets
    from edgeskin.training import model as model_lib, phases
    from edgeskin.training.arrays import load_arrays
    from edgeskin.training.options import TrainOptions

    options = TrainOptions(model=model_lib.ModelOptions(image_size=args.image_size, alpha=args.alpha, weights="none",
                                                        diagnoses=sets.DIAGNOSES),
                           batch_size=args.batch_size, input=args.mode, fine_tune_from=args.fine_tune_from)
    dataset = _dataset(args.data, args.n, args.seed)
    started = time.time()
    arrays = load_arrays(dataset, options)
    load_s, after_load = time.time() - started, _peak_mb()
    import keras

    nets = phases.build_nets(options)
    model_lib.set_fine_tuning(nets.backbone, options.fine_tune_from)
    phases.compile_heads(keras, nets.net, 1e-4, options, arrays, weights=(1.0, 0.5))
    batches = phases.fine_tuning_batches(keras, arrays, options)
    fit_input = batches.fit_arguments(1) if hasattr(batches, "fit_arguments") else {"x": batches}
    times = []
    stamp = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs=None: times.append(time.time()))
    nets.net.fit(**{**fit_input, "steps_per_epoch": args.steps}, epochs=1, callbacks=[stamp], verbose=0)
    rate = (len(times) - WARM_UP) * args.batch_size / (times[-1] - times[WARM_UP - 1])
    return {"mode": args.mode, "images": args.n, "peak_rss_mb": round(_peak_mb(), 1),
            "rss_after_load_mb": round(after_load, 1), "load_s": round(load_s, 1), "images_per_s": round(rate, 1),
            "steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size, "alpha": args.alpha}


def _child(args, mode: str, n: int) -> dict:
    command = [sys.executable, __file__, args.data, "--one", mode, str(n)] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("data", "one", "sizes", "modes")]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{mode} {n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--modes", nargs="+", default=["stream", "memory"], choices=["stream", "memory"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--fine-tune-from", default="block_6_expand")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= WARM_UP:
        parser.error(f"--steps must exceed the {WARM_UP} warm-up steps")
    if args.one:
        args.mode, args.n = args.one[0], int(args.one[1])
        print(json.dumps(one(args)))
        return
    rows = [_child(args, mode, n) for mode in args.modes for n in args.sizes]
    print(f"{'mode':<7}{'images':>8}{'peak RSS MB':>13}{'after load MB':>15}{'load s':>8}{'images/s':>10}")
    for r in rows:
        print(f"{r['mode']:<7}{r['images']:>8}{r['peak_rss_mb']:>13}{r['rss_after_load_mb']:>15}{r['load_s']:>8}"
              f"{r['images_per_s']:>10}")
    for mode in args.modes:
        peaks = [r["peak_rss_mb"] for r in rows if r["mode"] == mode]
        print(f"{mode}: peak RSS from {args.sizes[0]} to {args.sizes[-1]} images: {peaks[-1] / peaks[0] - 1:+.1%}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
