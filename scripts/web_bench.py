"""Measure the web app in headless Chromium on this machine: first result, ms per image, page weight.

    .venv/bin/python scripts/web_bench.py [--model M] [--images ../shared/data/isic-binary/test] [--n 24]

Prints, for a phone-sized page (Pixel 7 emulation, this CPU):
  - time from opening the page to the first result, on a first visit and on a
    repeat visit (files from the service worker's cache);
  - ms per image after that: the median, over n images, of the page's own
    timing from the chosen file to the answer (decode, crop, resize, model,
    gate), and of the wall time seen from outside;
  - the page weight: total bytes of the built site, and gzipped (level 9).
Needs Debian's chromium, playwright and `npm ci --prefix web`. No test checks these timings.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeskin import web  # noqa: E402
from edgeskin.runtime import default_model  # noqa: E402

COUNT = "n => Number(document.getElementById('result').dataset.count || 0) > n"


def images(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*.jpg"))
    if len(files) < n + 1:
        raise SystemExit(f"web_bench: need {n + 1} JPEGs under {folder}, found {len(files)}")
    step = len(files) / (n + 1)
    return [files[int(i * step)] for i in range(n + 1)]


def first_result(page, url: str, image: Path) -> tuple[float, float]:
    """Seconds from opening the page to the model being ready, and to the first answer."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]", timeout=120_000)
    ready = time.perf_counter() - t0
    before = int(page.get_attribute("#result", "data-count") or 0)
    page.set_input_files("#photo", str(image))
    page.wait_for_function(COUNT, arg=before, timeout=60_000)
    return ready, time.perf_counter() - t0


def per_image(page, files: list[Path]) -> tuple[list[float], list[float], list[list[float]]]:
    """The page's own ms per image (data-ms), the wall ms per image, and the page's ms per step
    (decode, crop + resize, model, gate), one file after another."""
    inside, outside, steps = [], [], []
    for path in files:
        before = int(page.get_attribute("#result", "data-count"))
        t0 = time.perf_counter()
        page.set_input_files("#photo", str(path))
        page.wait_for_function(COUNT, arg=before, timeout=60_000)
        outside.append(1000 * (time.perf_counter() - t0))
        inside.append(float(page.get_attribute("#result", "data-ms")))
        steps.append([float(t) for t in page.get_attribute("#result", "data-steps").split()])
    return inside, outside, steps


def measure(site_dir: Path, files: list[Path]) -> dict:
    from playwright.sync_api import sync_playwright

    server, url = web.serve_in_thread(site_dir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            context = browser.new_context(**p.devices["Pixel 7"])
            page = context.new_page()
            cold = first_result(page, url, files[0])
            page.evaluate("navigator.serviceWorker.ready")
            page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=30_000)
            inside, outside, steps = per_image(page, files[1:])
            warm_page = context.new_page()
            warm = first_result(warm_page, url, files[0])
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return {"cold": cold, "warm": warm, "inside": inside, "outside": outside, "steps": steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--images", type=Path, default=ROOT / ".." / "shared" / "data" / "isic-binary" / "test")
    parser.add_argument("--n", type=int, default=24, help="images timed after the first (median over them)")
    args = parser.parse_args(argv)
    if not shutil.which("chromium"):
        raise SystemExit("web_bench: Debian's chromium is not installed (apt-get install chromium)")
    files = images(args.images, args.n)
    with tempfile.TemporaryDirectory(prefix="edgeskin-web-bench-") as tmp:
        site = web.build(args.model or default_model(), tmp)
        r = measure(site.folder, files)
    print(f"page weight: {site.total_bytes / 1e6:.2f} MB raw, {site.gzip_bytes / 1e6:.2f} MB gzipped "
          f"({len(site.files)} files; bar 8 MB gzipped)")
    print(f"first visit: model ready {r['cold'][0]:.2f} s, first result {r['cold'][1]:.2f} s after opening (bar 3 s)")
    print(f"repeat visit (service worker cache): model ready {r['warm'][0]:.2f} s, first result {r['warm'][1]:.2f} s")
    print(f"per image over {len(r['inside'])} images: median {statistics.median(r['inside']):.1f} ms in the page "
          f"(file -> answer; max {max(r['inside']):.1f}), median {statistics.median(r['outside']):.1f} ms wall "
          f"including the test driver (bar 60 ms)")
    medians = [statistics.median(column) for column in zip(*r["steps"])]
    print("  median per step: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in
                                           zip(("decode", "crop + resize", "model", "gate"), medians)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
