"""`edgeskin calibrate`: a site's Platt map and operating points, written to a new file, without TensorFlow."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgeskin.runtime import calibration, metadata
from edgeskin.cli import main
from edgeskin.runtime import Classifier
from edgeskin.reporting.site import SiteOptions, _folds, cross_validate
from conftest import TINY_TEST_PER_CLASS

pytestmark = pytest.mark.slow


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibrate_writes_a_new_model_that_predicts_with_the_site_map(tiny_run, tmp_path):
    model = tiny_run["tflite"]
    before = _digest(model)
    out = tmp_path / "site" / "clinic.tflite"
    r = CliRunner().invoke(main, ["calibrate", str(model), str(tiny_run["data"] / "test"), "--out", str(out),
                                  "--bootstrap", "100", "--target-sensitivity", "0.9"])
    assert r.exit_code == 0, r.output
    assert "cross-validated" in r.output and _digest(model) == before
    info = metadata.read(out.read_bytes())
    assert json.loads(out.with_suffix(".json").read_text()) == info
    site = info["site_calibration"]
    assert site["counts"] == {"benign": TINY_TEST_PER_CLASS, "malignant": TINY_TEST_PER_CLASS} and site["target_sensitivity"] == 0.9
    assert site["previous_score_calibration"]["slope"] == metadata.read(model.read_bytes())["score_calibration"]["slope"]
    # The new file's probability is its raw output through the new map, and the
    # standard metadata carries the same map for MediaPipe.
    new, old = Classifier(out), Classifier(model)
    x = np.full((64, 64, 3), 90, dtype=np.uint8)
    assert new.raw_score(x) == old.raw_score(x)
    cal = info["score_calibration"]
    assert new.malignant_probability(x) == pytest.approx(float(calibration.Platt(cal["slope"], cal["offset"]).apply(new.raw_score(x))))
    lines = metadata.associated_files(out.read_bytes())[metadata.CALIBRATION_FILE].decode().split("\n")
    assert lines[1] == f"1.0,{cal['slope']!r},{cal['offset']!r}"
    # The screening point reaches the target on the data it was chosen on.
    assert info["operating_points"]["screening"]["sensitivity"] >= 0.9
    card = (tmp_path / "site" / "clinic_MODEL_CARD.md").read_text()
    assert str(tiny_run["data"] / "test") in card and "cross-validated" in card
    assert (tmp_path / "site" / "clinic_reliability.png").stat().st_size > 2000


def test_cross_validated_figures_never_see_their_own_fold():
    """Each held-out fold's probabilities and decisions come from a map and
    thresholds fitted on the other folds only."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    raw = calibration.sigmoid(1.5 * (2 * y - 1) + rng.normal(0, 1.5, 200))
    options = SiteOptions(folds=5)
    p, flagged = cross_validate(raw, y, options)
    fold = _folds(y, options.folds, options.seed)
    assert sorted(np.bincount(fold)) == [40] * 5 and all(np.bincount(y[fold == f]).tolist() == [20, 20] for f in range(5))
    for f in range(5):
        fit, held = fold != f, fold == f
        platt = calibration.fit_platt(raw[fit], y[fit])
        t = calibration.choose_operating_points(platt.apply(raw[fit]), y[fit])["screening"].threshold
        assert p[held] == pytest.approx(platt.apply(raw[held]))
        assert np.array_equal(flagged["screening"][held], p[held] >= t)
    # Fitted on everything, the screening point reaches 0.95 on its own data;
    # held out, it need not: the report says what a new image would see.
    in_sample = calibration.choose_operating_points(calibration.fit_platt(raw, y).apply(raw), y)["screening"]
    assert in_sample.sensitivity >= 0.95


def test_calibrate_refuses_too_few_images_and_keeps_everything(tiny_run, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(tiny_run["data"] / "test", site)
    for p in sorted((site / "malignant").glob("*.jpg"))[19:]:
        p.unlink()
    out = tmp_path / "new.tflite"
    before = _digest(tiny_run["tflite"])
    r = CliRunner().invoke(main, ["calibrate", str(tiny_run["tflite"]), str(site), "--out", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "only 19 malignant" in r.output and "at least 20" in r.output
    assert not out.exists() and _digest(tiny_run["tflite"]) == before


def test_calibrate_refuses_unreadable_data_and_its_own_input(tiny_run, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(tiny_run["data"] / "test", site)
    (site / "benign" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "new.tflite"
    r = CliRunner().invoke(main, ["calibrate", str(tiny_run["tflite"]), str(site), "--out", str(out)])
    assert r.exit_code == 1 and "broken.jpg" in r.output and "Traceback" not in r.output
    assert not out.exists() and not list(tmp_path.glob("new*"))
    r = CliRunner().invoke(main, ["calibrate", str(tiny_run["tflite"]), str(tiny_run["data"] / "test"),
                                  "--out", str(tiny_run["tflite"])])
    assert r.exit_code == 1 and "refusing to overwrite" in r.output
    r = CliRunner().invoke(main, ["calibrate", str(tiny_run["tflite"]), str(site), "--out", str(out),
                                  "--target-sensitivity", "1.5"])
    assert r.exit_code == 2


def test_calibrate_runs_with_tensorflow_absent(tiny_run, tmp_path):
    out = tmp_path / "clinic.tflite"
    code = f"""
import sys, json
for name in ("tensorflow", "keras", "sklearn", "matplotlib", "cv2"):
    sys.modules[name] = None  # any import of these now fails
from click.testing import CliRunner
from edgeskin.cli import main
r = CliRunner().invoke(main, ["calibrate", {str(tiny_run['tflite'])!r}, {str(tiny_run['data'] / 'test')!r},
                              "--out", {str(out)!r}, "--bootstrap", "100"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "sklearn", "cv2", "matplotlib")
                and sys.modules[m] is not None)
print(json.dumps({{"exit": r.exit_code, "loaded": loaded, "output": r.output}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["exit"] == 0, result["output"]
    assert result["loaded"] == [] and out.is_file()


def test_a_failed_write_keeps_the_previous_output_whole(tiny_run, tmp_path, monkeypatch):
    import edgeskin.reporting.site as site

    out = tmp_path / "clinic.tflite"
    args = ["calibrate", str(tiny_run["tflite"]), str(tiny_run["data"] / "test"), "--out", str(out), "--bootstrap", "100"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert len(before) == 4  # model, JSON, card, figure

    def broken(*_):
        raise OSError("disk full")

    monkeypatch.setattr(site, "render_card", broken)
    r = CliRunner().invoke(main, args + ["--target-sensitivity", "0.9"])
    assert r.exit_code == 1 and "disk full" in r.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no .tmp left, nothing replaced
