"""The model in models/: usable with no --model, self-describing, reproducible."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeskin import metadata
from edgeskin.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SHARED = ROOT.parent / "shared" / "data" / "isic-binary"


def test_predict_uses_the_shipped_model_by_default():
    r = CliRunner().invoke(main, ["predict", str(ROOT / "data" / "samples"), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert len(rows) == 4
    info = json.loads((MODELS / "edgeskin_int8.json").read_text())
    assert all(row["threshold"] == info["operating_points"]["screening"]["threshold"] for row in rows)


def test_shipped_files_agree_with_each_other():
    raw = (MODELS / "edgeskin_int8.tflite").read_bytes()
    info = metadata.read(raw)
    assert info == json.loads((MODELS / "edgeskin_int8.json").read_text())
    assert info["quantization"] == "int8" and info["checks"]["passed"]
    assert len(raw) <= 3.5e6
    card = (MODELS / "MODEL_CARD.md").read_text()
    m = json.loads((MODELS / "metrics.json").read_text())["metrics"]
    assert f"{m['roc_auc']['value']:.3f}" in card
    for f in m["figures"]:
        assert (MODELS / f).is_file() and f"({f})" in card


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/isic-binary")
def test_the_shipped_split_is_reproduced_by_train():
    from edgeskin import data

    config = json.loads((MODELS / "training" / "config.json").read_text())
    recorded = data.discover(MODELS / "training" / "splits.csv")
    again = data.split_validation(data.discover(SHARED), config["options"]["val_fraction"], config["options"]["seed"])
    assert sorted(Path(s.path).resolve() for s in again.val) == sorted(Path(s.path).resolve() for s in recorded.val)


def test_shipped_model_reports_its_robustness_and_audit():
    from edgeskin.perturb import ROBUSTNESS

    result = json.loads((MODELS / "metrics.json").read_text())
    rows = {r["name"]: r for r in result["robustness"]}
    assert list(rows) == [p.name for p in ROBUSTNESS]
    # The previous model, measured the same way, sits beside it.
    assert [r["name"] for r in result["compare"]["robustness"]] == list(rows)
    card = (MODELS / "MODEL_CARD.md").read_text()
    q75 = rows["jpeg_q75"]
    assert f"{q75['screening_flip_rate']:.1%}" in card and f"{q75['median_abs_delta']:.4f}" in card
    # The shipped model carries its Platt map, and the run's audit travels with it.
    info = metadata.read((MODELS / "edgeskin_int8.tflite").read_bytes())
    assert info["score_calibration"]["slope"] > 0 and "score_calibration" in result["metrics"]
    audit = json.loads((MODELS / "training" / "audit" / "audit.json").read_text())
    config = json.loads((MODELS / "training" / "config.json").read_text())
    assert config["audit_flags"] == [r["property"] for r in audit["properties"] if r["flagged"]]
    assert config["command"].startswith("edgeskin train ") and config["command"] in card
