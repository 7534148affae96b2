"""The web app (web/) in headless Chromium, phone-sized: it must read images exactly as
`edgeskin predict` does, answer the same, and keep working offline.

Needs Debian's chromium, the playwright pip package and `npm ci --prefix web`;
each test skips with the reason when one is missing. Each leaves a
screenshot in $EDGESKIN_SCREENSHOTS (or a temporary folder).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from edgeskin.runtime import Classifier, default_model

ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGES = ROOT / ".." / "shared" / "data" / "isic-binary" / "test"
TOLERANCE = 0.005
N_PER_CLASS = 12  # 24 images of the test split, both classes
pytestmark = pytest.mark.slow


def _requirements() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright pip package is not installed (pip install playwright==1.65.2)"
    if not shutil.which("chromium"):
        return "Debian's chromium is not installed (apt-get install chromium)"
    if not (ROOT / "web" / "node_modules" / "@mediapipe" / "tasks-vision").is_dir():
        return "web/node_modules is missing (npm ci --prefix web)"
    return None


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("EDGESKIN_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(page, shots: Path, name: str) -> Path:
    path = shots / f"web_{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 0
    return path


def split_images(n: int = N_PER_CLASS) -> list[Path]:
    """n images of each class of the test split, spread over the sorted list."""
    out = []
    for label in ("benign", "malignant"):
        files = sorted((TEST_IMAGES / label).glob("*.jpg"))
        if len(files) < n:
            pytest.skip(f"the test split is not at {TEST_IMAGES} (../shared beside the checkout)")
        out += [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    return out


def write_y4m(image: Path, path: Path, width: int = 640, height: int = 480, frames: int = 10) -> Path:
    """A 4:2:0 video of a test image, centred on a skin-coloured frame, for Chromium's fake camera."""
    frame = Image.new("RGB", (width, height), (214, 168, 150))
    lesion = Image.open(image).convert("RGB").resize((height, height), Image.BILINEAR)
    frame.paste(lesion, ((width - height) // 2, 0))
    y, cb, cr = frame.convert("YCbCr").split()
    half = (width // 2, height // 2)
    planes = y.tobytes() + cb.resize(half, Image.BOX).tobytes() + cr.resize(half, Image.BOX).tobytes()
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + planes)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from edgeskin import web

    built = web.build(default_model(), tmp_path_factory.mktemp("site"))
    server, url = web.serve_in_thread(built.folder)
    yield built, url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    video = write_y4m(split_images(1)[-1], tmp_path_factory.mktemp("camera") / "camera.y4m")
    args = ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"]
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"), args=args)
        yield p, chromium
        chromium.close()


def open_page(browser, url: str, **options):
    """A Pixel 7 (viewport, touch, mobile user agent) with the page loaded and its model ready."""
    p, chromium = browser
    context = chromium.new_context(**p.devices["Pixel 7"], **options)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]", timeout=60_000)
    return context, page


@pytest.fixture
def phone(browser, site):
    context, page = open_page(browser, site[1])
    yield page
    context.close()


def result(page) -> dict:
    return page.eval_on_selector("#result", "e => ({...e.dataset, text: e.innerText})")


def choose(page, path) -> dict:
    """Choose a photo as from the gallery; the answer once it is there."""
    before = int(page.get_attribute("#result", "data-count") or 0)
    page.set_input_files("#photo", str(path))
    page.wait_for_function("n => Number(document.getElementById('result').dataset.count || 0) > n",
                           arg=before, timeout=30_000)
    return result(page)


def predict(paths) -> dict:
    """`edgeskin predict --json --diagnosis` on the files, by path."""
    run = subprocess.run([sys.executable, "-m", "edgeskin.cli", "predict", *map(str, paths), "--json", "--diagnosis"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {row["path"]: row for row in rows}


def variants(sources: list[Path], folder: Path) -> list[Path]:
    """Non-square, EXIF-rotated, transparent-bordered and unusable photos made from test images."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b, c, d = (Image.open(sources[i]).convert("RGB") for i in (0, -1, 1, -2))  # both classes
    out = []

    def save(im, name, **kw):
        out.append(folder / name)
        im.save(out[-1], **kw)

    save(a.resize((448, 336), Image.BICUBIC), "landscape_448x336.jpg", quality=92)
    save(b.resize((300, 530), Image.BICUBIC), "portrait_300x530.jpg", quality=92)
    save(c.resize((210, 260), Image.BICUBIC), "small_210x260_upscaled.png")
    for orientation, turn in ((6, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180),
                              (8, Image.Transpose.ROTATE_270)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(d.resize((360, 280), Image.BICUBIC).transpose(turn), f"exif_{orientation}.jpg", quality=92, exif=exif)
    clear = Image.new("RGBA", (260, 224), (0, 0, 0, 0))
    clear.paste(a, (18, 0))
    save(clear, "transparent_border.png")
    save(Image.new("RGB", (320, 240), (128, 120, 118)), "unusable_uniform.jpg", quality=92)
    save(b.filter(ImageFilter.GaussianBlur(6)), "unusable_blurred.jpg", quality=92)
    save(c.resize((60, 60)), "unusable_tiny.png")
    save(Image.new("RGB", (224, 224), (252, 252, 252)), "unusable_white.png")
    return out


def test_answers_as_predict_does(phone, shots, tmp_path):
    """Test images, non-square, rotated and unusable photos: the same decision as `edgeskin predict`,
    malignant_probability within 0.005, the same reasons and top diagnoses; no probability when unusable."""
    sources = split_images()
    files = sources + variants(sources, tmp_path / "variants")
    reference = predict(files)
    worst = 0.0
    for path in files:
        ref, got = reference[str(path)], choose(phone, path)
        assert got["label"] == ref["label"], (path.name, got, ref)
        if ref["label"] == "unusable":
            assert got["reasons"].split() == ref["reasons"], path.name
            assert "malignant_probability" not in got["text"] and "probability" not in got, path.name
            continue
        worst = max(worst, abs(float(got["probability"]) - ref["malignant_probability"]))
        assert abs(float(got["probability"]) - ref["malignant_probability"]) <= TOLERANCE, path.name
        assert [x.split(":")[0] for x in got["diagnosis"].split()] == [x["dx"] for x in ref["diagnosis"]], path.name
    labels = [reference[str(p)]["label"] for p in files]
    # The set must exercise all three answers, or agreement would prove little.
    assert {"benign", "malignant", "unusable"} <= set(labels), labels
    print(f"{len(files)} images, largest |difference| {worst:.2e}")
    shot(phone, shots, "agreement_last")


def page_model_input(page, path: Path) -> np.ndarray:
    """The page's own decode + crop + resize of a file, as a (224, 224, 3) array."""
    data = base64.b64encode(path.read_bytes()).decode()
    out = page.evaluate("""async ([name, data]) => {
        const {decodeFile, toModelInput} = await import('./preprocess.js');
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const rgb = toModelInput(await decodeFile(new File([bytes], name)), 224);
        let s = ''; for (const v of rgb) s += String.fromCharCode(v);
        return btoa(s);
    }""", [path.name, data])
    return np.frombuffer(base64.b64decode(out), dtype=np.uint8).reshape(224, 224, 3)


def test_preprocessing_is_pillow_exact(phone, shots, tmp_path):
    """Crop and Pillow-bilinear resize in JS, down- and upscaling, PNG and EXIF-rotated JPEG: Pillow's pixels exactly."""
    from edgeskin.imageio import load_rgb  # the reference the runtime itself uses

    rng = np.random.default_rng(7)
    files = []
    for w, h in ((640, 480), (301, 457), (1003, 998), (150, 100), (224, 500), (2000, 1500)):
        # Smooth structure plus noise: every filter tap matters, as in a photo.
        base = Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        noisy = np.clip(np.asarray(base, dtype=np.int16) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        files.append(tmp_path / f"random_{w}x{h}.png")
        Image.fromarray(noisy).save(files[-1])
    files += [p for p in variants(split_images(2), tmp_path / "v") if p.name.startswith(("exif_", "landscape"))]
    for path in files:
        ours, pillow = page_model_input(phone, path), load_rgb(path, 224)
        differ = int((ours != pillow).any(axis=2).sum())
        assert differ == 0, f"{path.name}: {differ} pixels differ from Pillow"
    shot(phone, shots, "preprocessing")
