"""Fine-tuning throughput on this machine: images per second by batch size, input size and unfrozen depth.

Builds the training network the library builds (MobileNetV2 with its
in-graph preprocessing, both heads, BatchNorm frozen), unfreezes it from the
given layer, and times steady-state training steps on random pixels after a
warm-up, with no input pipeline: what the network itself costs per image.

    python scripts/bench_training.py --batch-sizes 32 64 --size 160 --from block_11_expand --steps 20
    python scripts/bench_training.py --batch-sizes 32 --from block_6_expand --xla off on off on   # XLA against none
    python scripts/bench_training.py --batch-sizes 32 --from block_6_expand --precision float32 mixed_bfloat16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def images_per_second(batch_size: int, size: int, start: str, steps: int, xla: bool = False,
                      precision: str = "float32") -> float:
    import keras

    # Keras's mixed policies compute in 16 bits and keep float32 weights; the network is built under it.
    keras.mixed_precision.set_global_policy(precision)

    from edgeskin.data import sets
    from edgeskin.training import model as model_lib

    # Random weights: the time of a step does not depend on their values (and Keras has ImageNet weights at 224 px only).
    options = model_lib.ModelOptions(image_size=size, weights="none", diagnoses=sets.DIAGNOSES)
    net, backbone, _ = model_lib.build(options)
    model_lib.set_fine_tuning(backbone, start)
    net.compile(optimizer=keras.optimizers.Adam(1e-5), loss=[keras.losses.BinaryCrossentropy(from_logits=True),
                                                             keras.losses.CategoricalCrossentropy(from_logits=True)],
                jit_compile=xla)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size * steps, size, size, 3), dtype=np.uint8).astype("float32")
    y = (rng.integers(0, 2, (len(x), 1)).astype("float32"),
         np.eye(len(sets.DIAGNOSES), dtype="float32")[rng.integers(0, len(sets.DIAGNOSES), len(x))])
    net.fit(x[: batch_size * 3], (y[0][: batch_size * 3], y[1][: batch_size * 3]), batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    net.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    return len(x) / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--from", dest="start", default="block_11_expand")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per batch size, after 3 warm-up steps")
    ap.add_argument("--xla", nargs="+", choices=["off", "on"], default=["off"],
                    help="XLA (jit_compile) settings to time, in this order, for every batch size; the warm-up "
                         "steps take the compilation")
    ap.add_argument("--precision", nargs="+", choices=["float32", "mixed_bfloat16", "mixed_float16"],
                    default=["float32"], help="Keras dtype policies to time, in this order (this CPU has AVX512_BF16)")
    args = ap.parse_args()
    print(f"{'batch':>6s} {'XLA':>4s} {'precision':>15s} {'img/s':>8s}   "
          f"({args.size} px, unfrozen from {args.start}, {args.steps} steps)")
    for b in args.batch_sizes:
        for xla in args.xla:
            for precision in args.precision:
                speed = images_per_second(b, args.size, args.start, args.steps, xla == "on", precision)
                print(f"{b:6d} {xla:>4s} {precision:>15s} {speed:8.1f}", flush=True)


if __name__ == "__main__":
    main()
