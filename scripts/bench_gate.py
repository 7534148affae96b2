"""What the input gate adds to a prediction: p50 latency with and without it, per image, 1 thread.

Two measures: the whole predict path for one file (decode, crop and resize,
inference, and the gate) and the interpreter alone against interpreter + gate.

    python scripts/bench_gate.py [--model models/edgeskin_int8.tflite] [--images ../shared/data/isic-binary/test]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "edgeskin_int8.tflite"))
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "isic-binary" / "test"))
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()

    from edgeskin.runtime.imageio import find_images, open_rgb, to_model_input
    from edgeskin.runtime import Classifier

    clf = Classifier(args.model, num_threads=1)
    paths = find_images([args.images])[: args.n]

    def path_ms(gate: bool) -> float:
        times = []
        for path in paths:
            t0 = time.perf_counter()
            im = open_rgb(path)
            x = to_model_input(im, clf.image_size)
            clf.malignant_probability(x)
            if gate:
                clf.reasons(im.size, x)
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    path_ms(True)  # warm-up: file cache, interpreter
    off, on = path_ms(False), path_ms(True)
    print(f"{len(paths)} files, 1 thread, predict path p50: without gate {off:.2f} ms, with gate {on:.2f} ms; "
          f"ratio {on / off:.3f}")
    decoded = []
    for path in paths:
        im = open_rgb(path)
        decoded.append((im.size, to_model_input(im, clf.image_size)))
    model_ms, both_ms = [], []
    for size, x in decoded:
        t0 = time.perf_counter()
        clf.malignant_probability(x)
        t1 = time.perf_counter()
        clf.reasons(size, x)
        t2 = time.perf_counter()
        model_ms.append((t1 - t0) * 1e3)
        both_ms.append((t2 - t0) * 1e3)
    m, b = np.median(model_ms), np.median(both_ms)
    print(f"interpreter alone p50 {m:.2f} ms; interpreter + gate p50 {b:.2f} ms; ratio {b / m:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
