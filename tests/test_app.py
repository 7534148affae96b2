"""The web app through Streamlit's AppTest: upload, decide, move the slider."""

import io
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from edgeskin import app as app_module  # noqa: E402

pytestmark = pytest.mark.slow
APP = str(Path(app_module.__file__))


def test_decide_levels():
    assert app_module.decide(0.1, 0.3, 0.7) == "benign"
    assert app_module.decide(0.5, 0.3, 0.7) == "uncertain (refer)"
    assert app_module.decide(0.8, 0.3, 0.7) == "suspicious"
    assert app_module.decide(0.5, 0.5, 0.2) == "suspicious"  # above a slider set past the specific point


def test_read_upload_in_memory_and_errors():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (100, 80), (120, 60, 40)).save(buf, format="PNG")
    pixels, error = app_module.read_upload("a.png", buf.getvalue(), 64)
    assert error is None and pixels.shape == (64, 64, 3)
    pixels, error = app_module.read_upload("b.jpg", b"plain text", 64)
    assert pixels is None and "b.jpg" in error
    _, error = app_module.read_upload("big.jpg", b"0" * (app_module.MAX_UPLOAD_MB * 1024 * 1024 + 1), 64)
    assert "larger than" in error


@pytest.fixture
def app(tiny_run, monkeypatch):
    monkeypatch.setenv("EDGESKIN_MODEL", str(tiny_run["tflite"]))
    monkeypatch.setenv("EDGESKIN_KERAS", str(tiny_run["run"] / "model.keras"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def _decisions(at):
    return [m.value for m in at.markdown if m.value.startswith("### ")]


def test_upload_gives_a_decision_and_the_slider_changes_it(app, tiny_run):
    image = next((tiny_run["data"] / "test" / "malignant").glob("*.jpg"))
    assert any("Not a diagnosis" in e.value for e in app.error)
    app.file_uploader[0].set_value((image.name, image.read_bytes(), "image/jpeg")).run()
    assert not app.exception
    assert len(_decisions(app)) == 1
    app.slider(key="threshold").set_value(0.0).run()
    assert "suspicious" in _decisions(app)[0] or "uncertain" in _decisions(app)[0]
    app.slider(key="threshold").set_value(1.0).run()
    assert "benign" in _decisions(app)[0]


def test_bad_upload_gets_a_clear_message(app):
    app.file_uploader[0].set_value(("notes.jpg", b"not an image", "image/jpeg")).run()
    assert not app.exception
    assert any("notes.jpg: not a readable JPG or PNG image" in e.value for e in app.error)


def test_model_page(app):
    app.sidebar.radio[0].set_value("Model").run()
    assert not app.exception
    assert any("The model" in t.value for t in app.title)


def test_the_top_diagnoses_show_under_the_decision(tiny_dx_run, monkeypatch):
    from edgeskin.data import sets

    monkeypatch.setenv("EDGESKIN_MODEL", str(tiny_dx_run["tflite"]))
    monkeypatch.delenv("EDGESKIN_KERAS", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    from edgeskin.runtime.imageio import open_rgb, to_model_input
    from edgeskin.runtime import Classifier

    clf = Classifier(tiny_dx_run["tflite"])

    def judged(path):
        im = open_rgb(path)
        return not clf.reasons(im.size, to_model_input(im, clf.image_size))

    image = next(s.path for s in sets.discover(tiny_dx_run["manifest"]).test if judged(s.path))
    at.file_uploader[0].set_value((Path(image).name, Path(image).read_bytes(), "image/jpeg")).run()
    assert not at.exception
    values = [m.value for m in at.markdown]
    decision = next(i for i, v in enumerate(values) if v.startswith("### "))
    lines = [v for v in values if v.startswith("Most likely diagnoses")]
    assert len(lines) == 1 and values.index(lines[0]) > decision
    assert lines[0].count("%") == 3
