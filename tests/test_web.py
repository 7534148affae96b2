"""The web app (web/) in headless Chromium, phone-sized: it must read images exactly as
`edgeskin predict` does, answer the same, and keep working offline.

Needs Debian's chromium, the playwright pip package and `npm ci --prefix web`;
each test skips with the reason when one is missing. Each leaves a
screenshot in $EDGESKIN_SCREENSHOTS (or a temporary folder).
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from edgeskin.runtime import Classifier, default_model

ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGES = ROOT / ".." / "shared" / "data" / "isic-binary" / "test"
TOLERANCE = 0.005
N_PER_CLASS = 12  # 24 images of the test split, both classes
pytestmark = pytest.mark.slow


def _requirements() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401  (only whether it is there)
    except ImportError:
        return "the playwright pip package is not installed (pip install playwright==1.65.2)"
    if not shutil.which("chromium"):
        return "Debian's chromium is not installed (apt-get install chromium)"
    if not (ROOT / "web" / "node_modules" / "@mediapipe" / "tasks-vision").is_dir():
        return "web/node_modules is missing (npm ci --prefix web)"
    return None


def screenshot_folder(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("EDGESKIN_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return screenshot_folder(tmp_path_factory)


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


def predict(paths, model=None) -> dict:
    """`edgeskin predict --json --diagnosis` on the files, by path."""
    extra = ["--model", str(model)] if model else []
    run = subprocess.run([sys.executable, "-m", "edgeskin.cli", "predict", *map(str, paths), "--json", "--diagnosis", *extra],
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


def pillow_model_input(path: Path, size: int = 224) -> np.ndarray:
    """edgeskin/imageio.py's open_rgb + to_model_input for RGB(A) files, restated with Pillow alone
    (the tests import nothing of edgeskin but its runtime): EXIF orientation, alpha on white,
    the largest centred square, Image.resize(BILINEAR)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        im = im.convert("RGB")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    return np.asarray(im if side == size else im.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def test_preprocessing_is_pillow_exact(phone, shots, tmp_path):
    """Crop and Pillow-bilinear resize in JS, down- and upscaling, PNG and EXIF-rotated JPEG: Pillow's pixels exactly."""
    rng = np.random.default_rng(7)
    files = []
    for w, h in ((640, 480), (301, 457), (1003, 998), (150, 100), (224, 500), (2000, 1500)):
        # Smooth structure plus noise: every filter tap matters, as in a photo.
        base = Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        noisy = np.clip(np.asarray(base, dtype=np.int16) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        files.append(tmp_path / f"random_{w}x{h}.png")
        Image.fromarray(noisy).save(files[-1])
    files += [p for p in variants(split_images(2), tmp_path / "v")
              if p.name.startswith(("exif_", "landscape", "portrait", "small", "transparent"))]
    for path in files:
        ours, pillow = page_model_input(phone, path), pillow_model_input(path)
        differ = int((ours != pillow).any(axis=2).sum())
        assert differ == 0, f"{path.name}: {differ} pixels differ from Pillow"
    shot(phone, shots, "preprocessing")


def test_camera_gives_a_decision(browser, site, shots):
    """Chromium's fake camera (a y4m of a test image): the viewfinder, a capture, a decision."""
    context, page = open_page(browser, site[1], permissions=["camera"])
    try:
        page.click("#open-camera")
        page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=20_000)
        assert page.is_visible("#capture") and page.is_visible(".guide")
        shot(page, shots, "camera")
        size = page.evaluate("[document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]")
        assert size == [640, 480]
        page.click("#capture")
        page.wait_for_function("Number(document.getElementById('result').dataset.count || 0) > 0", timeout=30_000)
        got = result(page)
        assert got["label"] in ("benign", "malignant"), got
        assert got["level"] in ("benign", "uncertain (refer)", "suspicious")
        assert page.is_hidden("#camera") and page.is_visible("#open-camera")
        assert page.evaluate("document.getElementById('video').srcObject") is None  # the camera is released
        shot(page, shots, "camera_result")
    finally:
        context.close()


def test_offline_reload_still_classifies(browser, shots, tmp_path):
    """After one visit the service worker holds the site: server stopped, context offline, reload, answer."""
    from edgeskin import web

    built = web.build(default_model(), tmp_path / "site")
    server, url = web.serve_in_thread(built.folder)
    context, page = open_page(browser, url)
    try:
        page.evaluate("navigator.serviceWorker.ready")
        page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=30_000)
        cached = page.evaluate("""caches.keys().then((k) => caches.open(k[0])).then((c) => c.keys())
            .then((r) => r.map((q) => new URL(q.url).pathname.slice(1)))""")
        # Every file but the service worker itself (the browser keeps that), and the bare folder URL.
        assert sorted(cached) == sorted([""] + [f for f in built.files if f != "sw.js"])
        server.shutdown()
        server.server_close()
        context.set_offline(True)
        page.reload()
        page.wait_for_selector("body[data-state=ready]", timeout=60_000)
        got = choose(page, split_images(1)[-1])
        assert got["label"] in ("benign", "malignant"), got
        shot(page, shots, "offline")
    finally:
        context.close()


def test_non_image_gets_a_clear_message(phone, shots, tmp_path):
    """A text file, even one named .jpg, is refused in words, with no answer."""
    for name in ("notes.txt", "fake.jpg"):
        path = tmp_path / name
        path.write_text("not a picture\n")
        got = choose(phone, path)
        assert got["label"] == "error"
        assert f"{name} is not an image this browser can read" in got["text"]
        assert "probability" not in got and "malignant_probability" not in got["text"]
    shot(phone, shots, "non_image")


def expected_level(p: float, threshold: float, suspicious_at: float) -> str:
    """The Streamlit app's three levels (edgeskin/app.py decide), restated to check the page against."""
    return "benign" if p < threshold else "uncertain (refer)" if p < max(threshold, suspicious_at) else "suspicious"


def test_threshold_and_operating_points(phone, shots):
    """The page starts at the model's default operating point; presets and the slider move the decision."""
    clf = Classifier(default_model())
    points = clf.operating_points
    got = choose(phone, split_images()[-1])
    p = float(got["probability"])
    assert float(got["threshold"]) == clf.threshold()
    assert got["level"] == expected_level(p, clf.threshold(), points["specific"])
    phone.click("#settings summary")
    for name, threshold in points.items():
        phone.check(f"#points input[value={name}]")
        got = result(phone)
        assert float(got["threshold"]) == threshold and got["level"] == expected_level(p, threshold, points["specific"])
    # The slider moves in steps of 0.001: the first step above p makes it benign.
    for threshold in (0.0, min(1.0, math.floor(p * 1000 + 1) / 1000)):
        phone.fill("#threshold", str(threshold))
        got = result(phone)
        assert float(got["threshold"]) == pytest.approx(threshold)
        assert got["label"] == ("malignant" if p >= threshold else "benign")
        assert phone.is_checked("#points input[value=custom]")
    shot(phone, shots, "threshold")


def test_a_calibrated_model_replaces_the_shipped_one(phone, shots, tmp_path):
    """An `edgeskin calibrate` output chosen in the page: its own operating points and score calibration are used."""
    images = split_images(20)
    site_data = tmp_path / "clinic"
    for path in images:
        (site_data / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, site_data / path.parent.name / path.name)
    model = tmp_path / "clinic.tflite"
    subprocess.run([sys.executable, "-m", "edgeskin.cli", "calibrate", str(default_model()), str(site_data),
                    "--out", str(model), "--folds", "2", "--bootstrap", "100"], check=True, capture_output=True,
                   cwd=ROOT, timeout=300)
    clinic = Classifier(model)
    assert clinic.operating_points != Classifier(default_model()).operating_points
    phone.set_input_files("#model-file", str(model))
    phone.wait_for_function("document.getElementById('status').textContent.startsWith('Using clinic.tflite')")
    assert f"screening {clinic.operating_points['screening']:.3f}" in phone.text_content("#model-name")
    sample = images[::10]
    reference = predict(sample, model)
    for path in sample:
        got, ref = choose(phone, path), reference[str(path)]
        assert float(got["threshold"]) == clinic.threshold() and got["label"] == ref["label"], path.name
        assert abs(float(got["probability"]) - ref["malignant_probability"]) <= TOLERANCE, path.name
    not_a_model = tmp_path / "notes.tflite"
    not_a_model.write_bytes(b"hello, not a flatbuffer")
    phone.set_input_files("#model-file", str(not_a_model))
    phone.wait_for_function("document.getElementById('status').className === 'error'")
    assert "notes.tflite is not a TFLite model" in phone.inner_text("#status")
    assert float(choose(phone, sample[0])["threshold"]) == clinic.threshold()  # still the calibrated model
    shot(phone, shots, "other_model")


def test_usable_head_replaces_the_distance(phone):
    """A model with a third head `usable` decides out-of-domain itself; without one, the gate's distance does."""
    lesion = np.asarray(Image.open(split_images(1)[-1]).convert("RGB"))
    noise = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)  # out of domain by distance
    pictures = [base64.b64encode(x.tobytes()).decode() for x in (lesion, noise)]
    out = phone.evaluate("""async ([lesion, noisy]) => {
        const {readResult} = await import('./classify.js');
        const {gateReasons} = await import('./gate.js');
        const {readModelInfo} = await import('./modelzip.js');
        const {gate} = readModelInfo(new Uint8Array(await (await fetch('model.tflite')).arrayBuffer()));
        const head = (name, scores) => ({headName: name, headIndex: 0,
            categories: Object.entries(scores).map(([categoryName, score]) => ({categoryName, score}))});
        const probs = head('probabilities', {malignant: 0.7, benign: 0.3});
        const verdict = (usable) => readResult({classifications: usable ? [probs, head('usable', usable)] : [probs]}, [])
            .outOfDomain;
        const skin = Uint8Array.from(atob(lesion), (c) => c.charCodeAt(0));
        const noise = Uint8Array.from(atob(noisy), (c) => c.charCodeAt(0));
        const reasons = (rgb, ood) => gateReasons(gate, 224, 224, rgb, 224, ood);
        return {
            verdicts: [verdict(null), verdict({usable: 0.2, out_of_domain: 0.8}), verdict({usable: 0.9})],
            noise: [reasons(noise, undefined), reasons(noise, false)],
            skin: [reasons(skin, undefined), reasons(skin, true)],
            flat: [reasons(new Uint8Array(224 * 224 * 3).fill(128), true),
                   reasons(new Uint8Array(224 * 224 * 3).fill(128), undefined)],
        };
    }""", pictures)
    assert out["verdicts"] == [None, True, False]  # undefined comes back as None
    assert out["noise"] == [["out_of_domain"], []]  # the head's "usable" overrules the distance
    assert out["skin"] == [[], ["out_of_domain"]]
    # As predict: the head's verdict stands beside a failed quality check; the distance only when nothing else failed.
    assert out["flat"] == [["nearly_uniform", "out_of_domain"], ["nearly_uniform"]]
