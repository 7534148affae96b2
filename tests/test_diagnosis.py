"""The diagnosis head: trained beside the benign/malignant one, exported, read back, and predicted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeskin.data import sets
from edgeskin.runtime import metadata
from edgeskin.cli import main
from edgeskin.runtime.imageio import load_rgb
from edgeskin.runtime import Classifier

pytestmark = pytest.mark.slow


def _test_images(run, n=3):
    return [s.path for s in sets.discover(run["manifest"]).test[:n]]


def test_the_run_records_the_head_and_per_source_validation(tiny_dx_run):
    cal = json.loads((tiny_dx_run["run"] / "calibration.json").read_text())
    assert cal["diagnoses"] == list(sets.DIAGNOSES)
    assert set(cal["per_source"]) == {"clinic_a", "clinic_b"}
    for row in cal["per_source"].values():
        assert 0.0 <= row["auc"] <= 1.0 and row["diagnosis"]["images"] > 0
    splits = sets.discover(tiny_dx_run["run"] / "splits.csv")
    assert {s.source for s in splits.val} == {"clinic_a", "clinic_b"}
    assert any(s.dx for s in splits.train)


def test_the_int8_file_carries_both_heads_with_their_labels(tiny_dx_run):
    raw = tiny_dx_run["tflite"].read_bytes()
    info = metadata.read(raw)
    assert info["diagnoses"] == list(sets.DIAGNOSES)
    assert info["output_tensors"] == ["probabilities", "diagnosis", "usable"]
    files = metadata.associated_files(raw)
    assert files["diagnosis_labels.txt"].decode().split() == list(sets.DIAGNOSES)
    assert files["labels.txt"].decode().split() == list(sets.LABELS)
    from edgeskin.runtime._vendor import metadata_schema_py_generated as md

    standard = md.ModelMetadataT.InitFromObj(
        md.ModelMetadata.GetRootAsModelMetadata(metadata.entries(raw)[metadata.STANDARD_KEY], 0))
    outputs = standard.subgraphMetadata[0].outputTensorMetadata
    assert [o.name.decode() for o in outputs][:2] == ["probabilities", "diagnosis"]
    assert [f.name.decode() for f in outputs[1].associatedFiles] == ["diagnosis_labels.txt"]
    # The export's agreement check is tested failing and passing in test_the_export_checks_the_diagnosis_head.


def test_the_runtime_reads_both_heads_from_one_invocation(tiny_dx_run):
    clf = Classifier(tiny_dx_run["tflite"])
    assert clf.diagnoses == sets.DIAGNOSES
    assert clf.output_names() == ["probabilities", "diagnosis", "usable"]
    pixels = load_rgb(_test_images(tiny_dx_run, 1)[0], clf.image_size)
    p, dx = clf.scores(pixels)
    assert p == pytest.approx(clf.malignant_probability(pixels))
    assert dx.shape == (len(sets.DIAGNOSES),) and dx.sum() == pytest.approx(1.0)
    top = clf.top_diagnoses(dx)
    assert [name for name, _ in top] == [sets.DIAGNOSES[i] for i in np.argsort(-dx, kind="stable")[:3]]
    assert top[0][1] >= top[1][1] >= top[2][1]


def test_predict_diagnosis_json_contract(tiny_dx_run):
    paths = _test_images(tiny_dx_run)
    r = CliRunner().invoke(main, ["predict", *paths, "--model", str(tiny_dx_run["tflite"]), "--diagnosis", "--json",
                                  "--no-gate"])
    assert r.exit_code == 0, r.output
    clf = Classifier(tiny_dx_run["tflite"])
    for line, path in zip(r.output.splitlines(), paths):
        row = json.loads(line)
        assert list(row) == ["path", "malignant_probability", "threshold", "label", "usable", "reasons", "diagnosis"]
        assert [list(d) for d in row["diagnosis"]] == [["dx", "probability"]] * 3
        _, dx = clf.scores(load_rgb(path, clf.image_size))
        expected = clf.top_diagnoses(dx)
        assert [(d["dx"], d["probability"]) for d in row["diagnosis"]] == [(n, round(p, 6)) for n, p in expected]
    # Without the flag the contract is unchanged.
    r = CliRunner().invoke(main, ["predict", paths[0], "--model", str(tiny_dx_run["tflite"]), "--json"])
    assert "diagnosis" not in json.loads(r.output)


def test_predict_diagnosis_readable_line(tiny_dx_run):
    path = _test_images(tiny_dx_run, 1)[0]
    r = CliRunner().invoke(main, ["predict", path, "--model", str(tiny_dx_run["tflite"]), "--diagnosis", "--no-gate"])
    assert r.exit_code == 0, r.output
    line = r.output.strip()
    assert "; diagnosis " in line and line.count(", ") >= 2


def test_diagnosis_on_a_model_without_the_head_is_a_one_line_error(tiny_run):
    path = next((tiny_run["data"] / "test" / "benign").glob("*.jpg"))
    r = CliRunner().invoke(main, ["predict", str(path), "--model", str(tiny_run["tflite"]), "--diagnosis"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "no diagnosis head" in r.output


def test_no_diagnosis_is_given_for_an_image_the_model_cannot_judge(tiny_dx_run, tmp_path):
    from PIL import Image

    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(flat)
    r = CliRunner().invoke(main, ["predict", str(flat), "--model", str(tiny_dx_run["tflite"]), "--diagnosis", "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)
    assert row["usable"] is False and row["diagnosis"] == []


def test_centring_the_diagnosis_logits_changes_no_probability(tiny_dx_run):
    from edgeskin.training import model as model_lib

    serving = model_lib.load(tiny_dx_run["run"] / "model.keras")
    layer = serving.get_layer("diagnosis")
    w, b = layer.get_weights()
    layer.set_weights([w + 2.0, b - 1.0])  # a shared part, as Adam leaves behind
    x = np.stack([load_rgb(p, 64) for p in _test_images(tiny_dx_run, 4)]).astype(np.float32)
    before = serving.predict(x, verbose=0)
    model_lib.centre_diagnosis_logits(serving)
    after = serving.predict(x, verbose=0)
    # float32: the shared term is hundreds, so the two agree to about 1e-4, not exactly.
    np.testing.assert_allclose(after[1], before[1], atol=5e-4)
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    w2, b2 = serving.get_layer("diagnosis").get_weights()
    assert np.abs(w2.mean(axis=1)).max() < 1e-4 and abs(float(b2.mean())) < 1e-4


def test_the_export_checks_the_diagnosis_head(tiny_dx_run, tmp_path):
    """The fixture's export passed a real agreement bar; the same export with a bar just above what the
    head reached fails, is kept aside as .failed.tflite, and leaves the model already there alone."""
    from edgeskin.training.export import ExportOptions, export
    from conftest import TINY_DX_MIN_AGREEMENT

    checks = tiny_dx_run["export"].info["checks"]
    reached = checks["diagnosis_top1_agreement"]
    assert tiny_dx_run["export"].passed and checks["min_diagnosis_agreement"] == TINY_DX_MIN_AGREEMENT <= reached
    assert reached < 1.0, "the int8 head agrees with the float one everywhere: no bar above it to test failing"
    out = tmp_path / "edgeskin_int8.tflite"
    out.write_bytes(b"the model that was here before")
    options = ExportOptions.for_int8(representative_images=40, max_auc_drop=1.0, min_diagnosis_agreement=min(1.0, reached + 0.01))
    result = export(tiny_dx_run["run"], out, options, log=lambda *_: None)
    # The conversion is deterministic (same representative images, same model): it reaches the same agreement.
    assert result.info["checks"]["diagnosis_top1_agreement"] == pytest.approx(reached)
    assert not result.passed and "diagnosis head agreed" in result.failure(options)
    assert out.read_bytes() == b"the model that was here before"
    assert result.path.name == "edgeskin_int8.failed.tflite" and result.path.is_file()
