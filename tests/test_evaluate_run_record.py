"""evaluate on the shipped model: its run record beside it is used by default, and without one the report says
that the model's training images were not checked. The card names sets, never this machine's paths."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_class_folders
from edgeskin.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

pytestmark = pytest.mark.slow  # two evaluations with figures, ~10 s each


def _training_rows(n: int) -> list[dict]:
    """A few rows of the shipped model's splits.csv whose (benign, training) images are here."""
    with open(MODELS / "training" / "splits.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["label"] == "benign"]
    return [{**r, "path": str((MODELS / "training" / r["path"]).resolve())} for r in rows
            if (MODELS / "training" / r["path"]).is_file()][:n]


@pytest.fixture
def shipped(tmp_path):
    """The shipped model in a models/-like folder whose training/ record lists 5 of its training images (the
    real one lists ~13,000, whose hashing would take ~25 s): the mechanism is the same."""
    rows = _training_rows(5)
    if len(rows) < 5:
        pytest.skip("the shipped model's training images (../shared/data) are not here")
    folder = tmp_path / "models"
    (folder / "training").mkdir(parents=True)
    shutil.copy(MODELS / "edgeskin_int8.tflite", folder)
    shutil.copy(MODELS / "training" / "config.json", folder / "training")
    with open(folder / "training" / "splits.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {"model": folder / "edgeskin_int8.tflite", "rows": rows}


@pytest.fixture
def test_set(tmp_path, shipped):
    """A set of benign/ and malignant/ (every image evaluated): synthetic lesions, and copies of three of the
    model's training images."""
    root = write_class_folders(tmp_path / "clinic", 20, seed=5)
    for i, row in enumerate(shipped["rows"][:3]):
        shutil.copy(row["path"], root / "benign" / f"copy_{i}{Path(row['path']).suffix}")
    return root


def _evaluate(model, data, out):
    r = CliRunner().invoke(main, ["evaluate", str(model), str(data), "--out", str(out), "--no-robustness",
                                  "--bootstrap", "100"])
    assert r.exit_code == 0, r.output
    return r.output, json.loads((out / "metrics.json").read_text()), (out / "MODEL_CARD.md").read_text()


def test_the_shipped_model_uses_its_own_run_record_by_default(shipped, test_set, tmp_path):
    printed, result, card = _evaluate(shipped["model"], test_set, tmp_path / "out")
    d = result["data"]
    assert d["training_images_checked"] and d["near_duplicates_left_out"] == 3 and d["evaluated"] == 40
    assert "3 near-duplicates of training images left out" in printed
    # The card knows the run: three sources by name, the backbone's alpha and weights, no machine path.
    assert "`isic-binary + ham10000 + isic2017`" in card and "alpha 1.0" in card and "`imagenet`" in card
    assert "not recorded" not in card
    assert str(tmp_path) not in card and "/work/" not in card and "`clinic`, all split" in card


def test_without_a_run_record_the_report_says_it_did_not_check(test_set, tmp_path):
    model = tmp_path / "elsewhere" / "edgeskin_int8.tflite"
    model.parent.mkdir()
    shutil.copy(MODELS / "edgeskin_int8.tflite", model)
    printed, result, card = _evaluate(model, test_set, tmp_path / "out")
    d = result["data"]
    assert not d["training_images_checked"] and d["evaluated"] == 43
    assert "not checked for near-duplicates of the model's training images" in printed
    assert "near-duplicates of training images left out" not in printed
    assert "was not checked" in card and "training images not checked" in card
    # What the model's metadata records still reaches the card: its three training sets, by name.
    assert "`isic-binary + ham10000 + isic2017`" in card and "/work/" not in card and str(tmp_path) not in card
