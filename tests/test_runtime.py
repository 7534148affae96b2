import json
import subprocess
import sys

import numpy as np
import pytest

from edgeskin.runtime import calibration as cal_lib
from edgeskin.runtime import Classifier, RuntimeModelError


def test_broken_model_files_give_clear_errors(tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 100)
    with pytest.raises(RuntimeModelError, match="junk.tflite"):
        Classifier(tmp_path / "junk.tflite")
    with pytest.raises(RuntimeModelError, match="no such model"):
        Classifier(tmp_path / "missing.tflite")


@pytest.mark.slow
def test_truncated_model(tiny_run, tmp_path):
    raw = tiny_run["tflite"].read_bytes()
    (tmp_path / "cut.tflite").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(RuntimeModelError, match="cut.tflite"):
        Classifier(tmp_path / "cut.tflite")


@pytest.mark.slow
def test_classifier_reads_its_metadata(tiny_run):
    c = Classifier(tiny_run["tflite"])
    info = json.loads(tiny_run["tflite"].with_suffix(".json").read_text())
    assert c.image_size == 64 and c.labels == ["benign", "malignant"]
    assert c.threshold() == info["operating_points"]["screening"]["threshold"]
    assert c.threshold(operating_point="specific") == info["operating_points"]["specific"]["threshold"]
    assert c.threshold(0.4) == 0.4
    with pytest.raises(ValueError, match="no operating point 'lenient'"):
        c.threshold(operating_point="lenient")
    with pytest.raises(ValueError, match="lie in"):
        c.threshold(1.5)
    x = np.full((64, 64, 3), 128, dtype=np.uint8)
    p, raw = c.malignant_probability(x), c.raw_score(x)
    assert 0.0 <= p <= 1.0
    # The model's own uint8 softmax output moves in steps of 1/256 ...
    assert raw * 256 == pytest.approx(round(raw * 256), abs=1e-6)
    # ... and the probability is that output through the Platt map of the metadata.
    cal = info["score_calibration"]
    assert cal["type"] == "platt" and cal["slope"] > 0
    assert p == pytest.approx(float(cal_lib.Platt(cal["slope"], cal["offset"]).apply(raw)), abs=1e-9)


@pytest.mark.slow
def test_predict_path_never_loads_tensorflow(tiny_run):
    image = next((tiny_run["data"] / "test" / "malignant").glob("*.jpg"))
    code = f"""
import sys, json
from click.testing import CliRunner
from edgeskin.cli import main
r = CliRunner().invoke(main, ["predict", {str(image)!r}, "--model", {str(tiny_run['tflite'])!r}, "--json"])
assert r.exit_code == 0, r.output
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "sklearn", "cv2", "matplotlib"))
print(json.dumps({{"loaded": loaded, "output": r.output}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert json.loads(result["output"])["path"] == str(image)


@pytest.mark.slow
def test_tta_averages_the_four_flips(tiny_run):
    c = Classifier(tiny_run["tflite"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    views = [x, x[:, ::-1], x[::-1], x[::-1, ::-1]]
    expected = np.mean([c.malignant_probability(np.ascontiguousarray(v)) for v in views])
    assert c.malignant_probability(x, tta=True) == pytest.approx(expected)
