import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import roc_auc_score

from edgeskin.cli import main

pytestmark = pytest.mark.slow


def _valid_png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas


def test_evaluate_writes_every_file_and_agrees_with_predict(tiny_run, tmp_path):
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(tiny_run["tflite"]), str(tiny_run["data"]), "--out", str(out),
                                  "--threshold", "0.4", "--compare", str(tiny_run["run"]), "--run", str(tiny_run["run"]),
                                  "--bootstrap", "200"])
    assert r.exit_code == 0, r.output
    assert "ROC AUC" in r.output
    result = json.loads((out / "metrics.json").read_text())
    m = result["metrics"]
    for key in ("roc_auc", "pr_auc", "brier", "ece", "ece_before_temperature", "specificity_at_sensitivity", "thresholds"):
        assert key in m
    assert set(m["thresholds"]) == {"screening", "balanced", "specific", "requested"}
    assert result["data"]["split"] == "test" and result["compare"]["metrics"]["roc_auc"]["value"] > 0
    for key in ("roc_auc", "pr_auc", "brier"):
        lo, hi = m[key]["ci95"]
        assert lo <= m[key]["value"] <= hi
    expected = {"roc.png", "precision_recall.png", "reliability.png", "threshold_sweep.png",
                "confusion_matrices.png", "probability_histograms.png", "training_curves.png"}
    assert {f.split("/")[-1] for f in m["figures"]} == expected
    for name in expected:
        _valid_png(out / "figures" / name)
    # The card carries the numbers of metrics.json.
    card = (out / "MODEL_CARD.md").read_text()
    assert f"{m['roc_auc']['value']:.3f}" in card and "not a diagnosis" in card
    # The AUC agrees with one computed independently from `predict --json`.
    p = CliRunner().invoke(main, ["predict", str(tiny_run["data"] / "test"), "--model", str(tiny_run["tflite"]), "--json"])
    rows = [json.loads(line) for line in p.output.splitlines()]
    with open(out / "predictions.csv") as f:
        evaluated = {row["path"] for row in csv.DictReader(f)}
    rows = [row for row in rows if row["path"] in evaluated]
    y = [("/malignant/" in row["path"]) for row in rows]
    auc = roc_auc_score(y, [row["malignant_probability"] for row in rows])
    assert auc == pytest.approx(m["roc_auc"]["value"], abs=0.002)


def test_run_folder_has_its_own_evaluation(tiny_run):
    ev = tiny_run["run"] / "evaluation"
    data = json.loads((ev / "metrics.json").read_text())
    assert data["metrics"]["n"] > 0
    for f in data["metrics"]["figures"]:
        _valid_png(ev / f)


def test_evaluate_bad_inputs(tmp_path, tiny_run):
    r = CliRunner().invoke(main, ["evaluate", str(tiny_run["tflite"]), str(tmp_path)])
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.count("Error") == 1
