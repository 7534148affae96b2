"""End-to-end check of the web app in headless Chromium.

Starts `edgeskin app` on a free local port, opens it in Debian's Chromium
(driven by Playwright, with no browser download), uploads a sample image,
waits for the decision to appear, and saves a screenshot.

    python scripts/browser_check.py [--image data/samples/malignant_1.jpg] [--out browser_check.png]

Needs: apt-get install chromium; pip install ".[app]" playwright.
Exits 0 when the result appeared, 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, seconds: float, server: subprocess.Popen) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the app did not come up at {url} within {seconds:.0f} s")


def _upload_and_capture(url: str, args) -> str:
    """Open the app, upload the image, wait for the result and its Grad-CAM, screenshot; the result line."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.goto(url, wait_until="networkidle", timeout=args.timeout * 1000)
        page.get_by_text("Not a diagnosis").first.wait_for(timeout=args.timeout * 1000)
        page.locator("input[type=file]").first.set_input_files(str(args.image))
        result = page.get_by_text(re.compile(r"malignant_probability \d\.\d{3} at threshold")).first
        result.wait_for(timeout=args.timeout * 1000)
        # The Grad-CAM column renders after the probability.
        page.get_by_text("Grad-CAM: regions").first.wait_for(timeout=args.timeout * 1000)
        page.wait_for_function(
            "Array.from(document.images).filter(i => i.complete && i.naturalWidth >= 200).length >= 2",
            timeout=args.timeout * 1000)
        page.wait_for_timeout(500)
        text = result.inner_text()
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=ROOT / "data" / "samples" / "malignant_1.jpg")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("browser_check.png"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgeskin.cli", "app", "--port", str(port)]
    if args.model:
        cmd += ["--model", str(args.model)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            wait_healthy(url, args.timeout, server)
            text = _upload_and_capture(url, args)
            print(f"PASS: {args.image.name}: {text.strip()}; screenshot {args.out}")
            return 0
        except Exception as exc:  # report any failure as one line, with the server's log
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            print(f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n{tail}")
            return 1
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
