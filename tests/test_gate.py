"""The input gate: each quality reason on constructed images, the domain score, the contract."""

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFilter

from conftest import lesion
from edgeskin.runtime import gate as gate_lib
from edgeskin.training import gate as gate_fit
from edgeskin.cli import main


def _in_domain(n=120, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(lesion(rng, bool(i % 2), size=size)) for i in range(n)])


@pytest.fixture(scope="module")
def fitted():
    x = _in_domain(600)
    gate, rates = gate_fit.fit(x, [(64, 64)] * len(x), _in_domain(200, seed=1))
    return gate, rates


def _px(im, size=64):
    from edgeskin.runtime.imageio import to_model_input

    return im.size, to_model_input(im, size)


def test_fit_lets_in_domain_images_through(fitted):
    gate, rates = fitted
    assert rates["calibration_pass_rate"] >= 0.98 and rates["training_pass_rate"] >= 0.98
    held_out = _in_domain(200, seed=2)
    assert np.mean([not gate.reasons((64, 64), x) for x in held_out]) >= 0.95


def test_each_quality_reason(fitted):
    gate, _ = fitted
    rng = np.random.default_rng(5)
    good = lesion(rng, True, size=64)
    assert gate.reasons(*_px(good)) == []
    assert gate.reasons(*_px(good.resize((8, 8)))) == ["too_small"]
    assert "extreme_aspect" in gate.reasons(*_px(lesion(rng, True, size=256).crop((0, 0, 256, 40))))
    assert "nearly_uniform" in gate.reasons(*_px(Image.new("RGB", (64, 64), (224, 172, 150))))
    white = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(white).text((4, 28), "hello", fill="black")
    assert "overexposed" in gate.reasons(*_px(white))
    dark = Image.fromarray((np.asarray(good) * 0.02).astype(np.uint8))
    assert "underexposed" in gate.reasons(*_px(dark))
    blurred = good.filter(ImageFilter.GaussianBlur(6))
    assert gate.reasons(*_px(blurred)) == ["too_blurred"]


def test_domain_distance_flags_what_is_not_dermoscopy(fitted):
    gate, _ = fitted
    rng = np.random.default_rng(6)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    ramp = np.linspace(140, 250, 64)[:, None, None] * np.array([0.45, 0.7, 1.0])  # a blue sky, lighter downwards
    sky = Image.fromarray((np.tile(ramp, (1, 64, 1)) + rng.normal(0, 6, (64, 64, 3))).clip(0, 255).astype(np.uint8))
    assert gate.reasons(*_px(noise)) == [gate_lib.OUT_OF_DOMAIN]
    assert gate.reasons(*_px(sky))  # smooth as well as blue: set aside one way or the other
    for im in (noise, sky):
        assert gate.distance(_px(im)[1]) > gate.max_distance > gate.distance(_in_domain(1, seed=9)[0])


def test_gate_round_trips_through_a_dict(fitted):
    gate, _ = fitted
    again = gate_lib.Gate.from_dict(json.loads(json.dumps({**gate.to_dict(), "checks": {"x": 1}})))
    assert again == gate
    with pytest.raises(ValueError, match="gate"):
        gate_lib.Gate.from_dict({**gate.to_dict(), "precision": [1.0]})


@pytest.mark.slow
def test_predict_contract_with_and_without_the_gate(tiny_run, tmp_path):
    good = next((tiny_run["data"] / "test" / "malignant").glob("*.jpg"))
    Image.new("RGB", (64, 64), (224, 172, 150)).save(tmp_path / "flat.png")
    args = ["predict", str(good), str(tmp_path / "flat.png"), "--model", str(tiny_run["tflite"])]
    r = CliRunner().invoke(main, args + ["--json"])
    assert r.exit_code == 0, r.output  # an unusable image is an answer, not an error
    rows = {json.loads(line)["path"]: json.loads(line) for line in r.output.splitlines()}
    flat = rows[str(tmp_path / "flat.png")]
    assert flat["usable"] is False and flat["label"] == "unusable" and "nearly_uniform" in flat["reasons"]
    assert 0.0 <= flat["malignant_probability"] <= 1.0
    assert rows[str(good)]["usable"] is True and rows[str(good)]["reasons"] == []
    assert rows[str(good)]["label"] in ("benign", "malignant")
    r = CliRunner().invoke(main, args)
    assert "cannot judge this image (the image shows almost no structure): retake it" in r.output
    r = CliRunner().invoke(main, args + ["--json", "--no-gate"])
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert all(row["usable"] and row["label"] in ("benign", "malignant") for row in rows)


@pytest.mark.slow
def test_evaluate_reports_what_the_gate_set_aside(tiny_run, tmp_path):
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(tiny_run["tflite"]), str(tiny_run["data"]), "--out", str(out),
                                  "--no-robustness", "--bootstrap", "100"])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "metrics.json").read_text())
    g = result["gate"]
    assert g["images"] == result["data"]["evaluated"] and g["set_aside"] == len(g["set_aside_files"])
    assert "gate:" in r.output and "## Input gate" in (out / "MODEL_CARD.md").read_text()


def test_app_says_cannot_judge():
    from edgeskin import app as app_module

    msg = app_module.cannot_judge(["too_blurred"])
    assert msg == "Cannot judge this photo: the image is too blurred. Retake it."
    buf = io.BytesIO()
    Image.new("RGB", (80, 40), "red").save(buf, format="PNG")
    (pixels, size), error = app_module.read_upload("x.png", buf.getvalue(), 32, with_size=True)
    assert error is None and size == (80, 40) and pixels.shape == (32, 32, 3)
