"""Runtime benchmark: edgeskin's int8 and float32 models against Google's int8 MobileNetV2.

For each model, in a fresh process of its own (so that peak RSS is that
model's alone), through the same interpreter:
  - latency of one inference, p50 and p95, at 1 and 2 threads;
  - throughput over a folder of JPEGs, decoding and resizing included, with
    images decoded in parallel (edgeskin's own predict path for our models);
  - the cost of --tta (four views) on the int8 model;
  - peak RSS and file size.
It prints a table and the ratio of our int8 latency to the reference's.

    python scripts/bench_runtime.py [--images ../shared/data/isic-binary/test] [--runs 200]
    python scripts/bench_runtime.py --extra "int8 without usable head" runs/multi-v2-s42/no_usable_int8.tflite

--extra adds a model to the table and prints the shipped int8 model's latency
over it (for example, the cost of the in-model gate's third output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {
    "edgeskin int8": ROOT / "models" / "edgeskin_int8.tflite",
    "edgeskin float32": ROOT / "models" / "edgeskin_float32.tflite",
    "reference int8": ROOT.parent / "shared" / "reference" / "mobilenet_v2_1.0_224_quant.tflite",
}


def _ready(interpreter_cls, model: Path, threads: int):
    """An interpreter with a fixed random input set and ten warm-up runs behind it; returns (it, input, x)."""
    import numpy as np

    it = interpreter_cls(model_path=str(model), num_threads=threads)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 255, inp["shape"]).astype(inp["dtype"])
    for _ in range(10):
        it.set_tensor(inp["index"], x)
        it.invoke()
    return it, inp, x


def _latency(interpreter_cls, model: Path, threads: int, runs: int, tta: bool = False) -> dict:
    import numpy as np

    it, inp, x = _ready(interpreter_cls, model, threads)
    views = 4 if tta else 1
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(views):
            it.set_tensor(inp["index"], x)
            it.invoke()
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def _throughput(model: Path, images: list[Path], threads: int, ours: bool) -> float:
    """Images per second over a folder, from file to probability."""
    from concurrent.futures import ThreadPoolExecutor

    from edgeskin.runtime.imageio import load_rgb
    from edgeskin.runtime.classifier import Classifier, _interpreter_class

    start = time.perf_counter()
    if ours:
        classifier = Classifier(model, num_threads=threads)
        n = sum(1 for _ in classifier.predict(images, 0.5, workers=threads))
    else:
        it = _interpreter_class()(model_path=str(model), num_threads=threads)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        size = int(inp["shape"][1])
        with ThreadPoolExecutor(threads) as pool:
            n = 0
            for pixels in pool.map(lambda p: load_rgb(p, size), images):
                it.set_tensor(inp["index"], pixels[None].astype(inp["dtype"]))
                it.invoke()
                n += 1
    return n / (time.perf_counter() - start)


def measure(name: str, model: Path, images: list[Path], runs: int) -> dict:
    """Everything for one model (runs in its own process)."""
    import resource

    from edgeskin.runtime.classifier import _interpreter_class

    cls = _interpreter_class()
    ours = name.startswith("edgeskin")
    out = {"name": name, "file": str(model), "size_mb": model.stat().st_size / 1e6}
    for threads in (1, 2):
        out[f"latency_{threads}t"] = _latency(cls, model, threads, runs)
    if name == "edgeskin int8":
        out["latency_tta_1t"] = _latency(cls, model, 1, max(runs // 4, 20), tta=True)
    out["throughput_img_s"] = _throughput(model, images, 2, ours) if images else None
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _paired(a: Path, b: Path, runs: int) -> int:
    import numpy as np

    from edgeskin.runtime.classifier import _interpreter_class

    for threads in (1, 2):
        its = {m: _ready(_interpreter_class(), m, threads)[0] for m in (a, b)}
        times = {m: [] for m in (a, b)}
        for _ in range(runs):
            for m, it in its.items():
                t = time.perf_counter()
                it.invoke()
                times[m].append(time.perf_counter() - t)
        pa, pb = (1000 * float(np.median(times[m])) for m in (a, b))
        print(f"{threads} thread(s), {runs} interleaved runs each: p50 {a.name} {pa:.3f} ms, {b.name} {pb:.3f} ms, "
              f"ratio {pa / pb:.3f}")
    return 0


def _measure_each(args) -> list[dict]:
    """Each model measured in a process of its own, so one model's arena never inflates the next one's RSS."""
    results = []
    for name, model in [*DEFAULTS.items(), *((n, Path(m)) for n, m in args.extra)]:
        if not model.is_file():
            print(f"skip {name}: {model} not found", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, "--one", name, str(model), "--images", str(args.images),
               "--runs", str(args.runs), "--limit", str(args.limit)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def _print_table(results: list[dict], args, n_images: int) -> None:
    """The table, then the ratios the latency bar is read from."""
    print(f"{os.cpu_count()} CPU cores; {args.runs} timed runs per setting; throughput over {n_images} JPEGs "
          f"from {args.images} with 2 threads")
    print(f"{'model':<18}{'size MB':>8}{'p50 1t':>9}{'p95 1t':>9}{'p50 2t':>9}{'p95 2t':>9}{'img/s':>8}{'RSS MB':>8}")
    for r in results:
        tp = f"{r['throughput_img_s']:.0f}" if r["throughput_img_s"] else "-"
        print(f"{r['name']:<18}{r['size_mb']:>8.2f}{r['latency_1t']['p50_ms']:>9.2f}{r['latency_1t']['p95_ms']:>9.2f}"
              f"{r['latency_2t']['p50_ms']:>9.2f}{r['latency_2t']['p95_ms']:>9.2f}{tp:>8}{r['peak_rss_mb']:>8.0f}")
    by = {r["name"]: r for r in results}
    if "edgeskin int8" in by:
        tta = by["edgeskin int8"]["latency_tta_1t"]
        print(f"--tta on edgeskin int8, 1 thread: p50 {tta['p50_ms']:.2f} ms, p95 {tta['p95_ms']:.2f} ms per image")
    if "edgeskin int8" in by and "reference int8" in by:
        for t in (1, 2):
            ratio = by["edgeskin int8"][f"latency_{t}t"]["p50_ms"] / by["reference int8"][f"latency_{t}t"]["p50_ms"]
            print(f"ratio edgeskin int8 / reference int8, p50 latency at {t} thread(s): {ratio:.3f}")
        size = by["edgeskin int8"]["size_mb"] / by["reference int8"]["size_mb"]
        print(f"ratio edgeskin int8 / reference int8, file size: {size:.3f}")
    for name, _ in args.extra:
        if "edgeskin int8" in by and name in by:
            for t in (1, 2):
                ratio = by["edgeskin int8"][f"latency_{t}t"]["p50_ms"] / by[name][f"latency_{t}t"]["p50_ms"]
                print(f"ratio edgeskin int8 / {name}, p50 latency at {t} thread(s): {ratio:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "isic-binary" / "test")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--limit", type=int, default=300, help="images for the throughput run")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--extra", nargs=2, action="append", default=[], metavar=("NAME", "MODEL"),
                        help="Another model to measure beside the defaults.")
    parser.add_argument("--paired", nargs=2, metavar=("MODEL_A", "MODEL_B"),
                        help="Only the p50 latency ratio of two models, their invocations interleaved in one process "
                             "so that the machine's drift falls on both alike (for a cost smaller than that drift).")
    args = parser.parse_args(argv)
    if args.paired:
        return _paired(*map(Path, args.paired), args.runs)

    from edgeskin.runtime.imageio import find_images

    images = find_images([args.images])[: args.limit] if args.images.exists() else []
    if args.one:
        print(json.dumps(measure(args.one[0], Path(args.one[1]), images, args.runs)))
        return 0

    results = _measure_each(args)
    _print_table(results, args, len(images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
