"""Screenshots of the web app on a Pixel 7, for checking the layout by eye.

    .venv/bin/python scripts/web_screenshots.py --out /tmp/web_shots

Writes start.png, benign.png, malignant.png, unusable.png, camera.png and
settings.png: the start screen, a benign and a malignant answer (test-split
images the shipped model scores lowest and highest among the first few), a
blurred photo the gate sets aside, the camera view (Chromium's fake camera
showing a test image) and the threshold settings opened.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from edgeskin import web  # noqa: E402
from edgeskin.runtime import Classifier, default_model  # noqa: E402
from test_web import write_y4m  # noqa: E402


def examples(folder: Path, tmp: Path) -> dict[str, Path]:
    """A benign-looking and a malignant-looking test image, and a blurred copy the gate refuses."""
    clf = Classifier(default_model())
    files = sorted((folder / "benign").glob("*.jpg"))[:15] + sorted((folder / "malignant").glob("*.jpg"))[:15]
    scores = {p.path: p.malignant_probability for p in clf.predict(files, clf.threshold())}
    scored = sorted(files, key=lambda f: scores[str(f)])
    blurred = tmp / "blurred.jpg"
    Image.open(scored[-1]).filter(ImageFilter.GaussianBlur(6)).save(blurred, quality=92)
    return {"benign": scored[0], "malignant": scored[-1], "unusable": blurred}


def shoot(url: str, pictures: dict[str, Path], video: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=args)
        context = browser.new_context(**p.devices["Pixel 7"], permissions=["camera"])
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-state=ready]", timeout=60_000)
        page.screenshot(path=str(out / "start.png"))
        for n, (name, path) in enumerate(pictures.items(), start=1):
            page.set_input_files("#photo", str(path))
            page.wait_for_function(f"Number(document.getElementById('result').dataset.count || 0) >= {n}")
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(out / f"{name}.png"))
        page.click("#settings summary")
        page.locator("#settings").scroll_into_view_if_needed()
        page.screenshot(path=str(out / "settings.png"))
        page.click("#open-camera")
        page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=20_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "camera.png"))
        browser.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=ROOT / ".." / "shared" / "data" / "isic-binary" / "test")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeskin-web-shots-") as tmp:
        tmp = Path(tmp)
        pictures = examples(args.images, tmp)
        video = write_y4m(pictures["malignant"], tmp / "camera.y4m")
        site = web.build(default_model(), tmp / "site")
        server, url = web.serve_in_thread(site.folder)
        try:
            shoot(url, pictures, video, args.out)
        finally:
            server.shutdown()
            server.server_close()
    print(f"wrote 6 screenshots to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
