"""MediaPipe Tasks' ImageClassifier must run the shipped model unchanged.

mediapipe pins opencv-contrib-python, which clashes with the training stack's
OpenCV, so the check runs in its own environment (`./run.sh test` makes
.venv-mediapipe) through scripts/check_mediapipe.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(os.environ.get("EDGESKIN_MEDIAPIPE_PYTHON", ROOT / ".venv-mediapipe" / "bin" / "python"))


SHARED_TEST = ROOT.parent / "shared" / "data" / "isic-binary" / "test"


def _check(model: Path, images: Path, *extra: str):
    if not PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"no MediaPipe environment at {PYTHON}; run.sh test should have made it")
        pytest.skip(f"no MediaPipe environment at {PYTHON}; ./run.sh test makes one")
    return subprocess.run([str(PYTHON), str(ROOT / "scripts" / "check_mediapipe.py"), str(model), str(images), *extra],
                          capture_output=True, text=True, timeout=600)


def test_mediapipe_reads_the_shipped_model():
    model = ROOT / "models" / "edgeskin_int8.tflite"
    r = _check(model, ROOT / "data" / "samples")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASS")
    # On the samples the category itself must come back, not just a zero score.
    assert r.stdout.count("mediapipe malignant 0.") + r.stdout.count("mediapipe malignant 1.") == 4


@pytest.mark.slow
def test_mediapipe_reads_a_fresh_export(tiny_run):
    r = _check(tiny_run["tflite"], tiny_run["data"] / "test")
    assert r.returncode == 0, r.stdout + r.stderr
    # The third head, the in-model gate, is listed and matches edgeskin's out_of_domain probability.
    assert r.stdout.count("mediapipe usable head out_of_domain") == len(list((tiny_run["data"] / "test").rglob("*.jpg")))


@pytest.mark.skipif(not SHARED_TEST.is_dir(), reason="../shared/data/isic-binary is not beside the project")
def test_mediapipe_applies_the_shipped_score_calibration_on_20_test_images():
    r = _check(ROOT / "models" / "edgeskin_int8.tflite", SHARED_TEST, "--limit", "20")
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("PASS") and "over 20 images" in last and "with score calibration" in last


@pytest.mark.slow
def test_mediapipe_reads_a_site_calibrated_model(tiny_run, tmp_path):
    from click.testing import CliRunner

    from edgeskin.cli import main

    out = tmp_path / "clinic.tflite"
    r = CliRunner().invoke(main, ["calibrate", str(tiny_run["tflite"]), str(tiny_run["data"] / "test"), "--out", str(out),
                                  "--bootstrap", "100"])
    assert r.exit_code == 0, r.output
    r = _check(out, tiny_run["data"] / "test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "with score calibration" in r.stdout


@pytest.mark.slow
def test_mediapipe_lists_the_diagnosis_head_second(tiny_dx_run):
    r = _check(tiny_dx_run["tflite"], tiny_dx_run["manifest"].parent, "--limit", "8")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("mediapipe diagnosis head top") == 8
    assert r.stdout.strip().splitlines()[-1].startswith("PASS")
