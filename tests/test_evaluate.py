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
    for key in ("roc_auc", "pr_auc", "brier", "ece", "ece_before_platt", "specificity_at_sensitivity", "thresholds"):
        assert key in m
    assert set(m["thresholds"]) == {"screening", "balanced", "specific", "requested"}
    assert result["data"]["split"] == "test" and result["compare"]["metrics"]["roc_auc"]["value"] > 0
    for key in ("roc_auc", "pr_auc", "brier"):
        lo, hi = m[key]["ci95"]
        assert lo <= m[key]["value"] <= hi
    expected = {"roc.png", "precision_recall.png", "reliability.png", "threshold_sweep.png",
                "confusion_matrices.png", "probability_histograms.png", "training_curves.png", "robustness.png"}
    assert {f.split("/")[-1] for f in m["figures"]} == expected
    for name in expected:
        _valid_png(out / "figures" / name)
    # The card carries the numbers of metrics.json.
    card = (out / "MODEL_CARD.md").read_text()
    assert f"{m['roc_auc']['value']:.3f}" in card and "not a diagnosis" in card
    # Its gate section tells the model's own usable head, with the pass rate the export measured on the file.
    usable = json.loads(tiny_run["tflite"].with_suffix(".json").read_text())["usable"]["checks"]
    assert "third output, `usable`" in card
    assert f"The file itself lets {usable['calibration_pass_rate']:.1%} of the calibration pool" in card
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


def test_evaluate_robustness_table_on_a_tiny_model(tiny_run, tmp_path):
    from edgeskin.data.perturb import BY_NAME, ROBUSTNESS

    ROTATE = BY_NAME["rotate_90"].apply

    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(tiny_run["tflite"]), str(tiny_run["data"]), "--out", str(out),
                                  "--compare", str(tiny_run["run"]), "--bootstrap", "100"])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "metrics.json").read_text())
    rows = {row["name"]: row for row in result["robustness"]}
    assert list(rows) == [p.name for p in ROBUSTNESS]
    assert [row["name"] for row in result["compare"]["robustness"]] == list(rows)
    predictions = np.array([float(row["malignant_probability"]) for row in csv.DictReader(open(out / "predictions.csv"))])
    y = np.array([row["label"] == "malignant" for row in csv.DictReader(open(out / "predictions.csv"))])
    for row in rows.values():
        assert 0.0 <= row["screening_flip_rate"] <= 1.0 and row["median_abs_delta"] >= 0.0
        assert set(row["operating_points"]) == {"screening", "balanced", "specific"}
        lo, hi = row["roc_auc"]["ci95"]
        assert lo <= row["roc_auc"]["value"] <= hi
    # One row re-derived by hand through the runtime: the table is computed
    # from the perturbed scores, not copied from the unperturbed ones.
    from edgeskin.runtime.imageio import open_rgb, to_model_input
    from edgeskin.runtime import Classifier

    clf = Classifier(tiny_run["tflite"])
    paths = [row["path"] for row in csv.DictReader(open(out / "predictions.csv"))]
    rotated = np.array([clf.malignant_probability(to_model_input(ROTATE(open_rgb(p)), clf.image_size)) for p in paths])
    predictions = np.array([clf.malignant_probability(to_model_input(open_rgb(p), clf.image_size)) for p in paths])
    t = result["model"]["operating_points"]["screening"]
    assert rows["rotate_90"]["median_abs_delta"] == pytest.approx(np.median(np.abs(rotated - predictions)), abs=1e-5)
    assert rows["rotate_90"]["screening_flip_rate"] == pytest.approx(np.mean((rotated >= t) != (predictions >= t)), abs=1e-9)
    assert rows["rotate_90"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, rotated), abs=1e-9)
    _valid_png(out / "figures" / "robustness.png")
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Robustness" in card and "JPEG re-encode, quality 75, 4:2:0" in card
    assert "jpeg_q75" in r.output  # the printed table


def test_evaluate_without_robustness(tiny_run, tmp_path):
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(tiny_run["tflite"]), str(tiny_run["data"]), "--out", str(out),
                                  "--no-robustness", "--bootstrap", "100"])
    assert r.exit_code == 0, r.output
    assert "robustness" not in json.loads((out / "metrics.json").read_text())


def test_evaluate_several_sets_reports_each_on_its_own_images(tiny_run, tmp_path):
    """A second set gets its own compact report, computed from its own images through the runtime."""
    from conftest import write_class_folders
    from edgeskin.reporting import evaluate as evaluate_lib
    from edgeskin.reporting import metrics
    from edgeskin.runtime.imageio import open_rgb, to_model_input
    from edgeskin.runtime import Classifier

    other = write_class_folders(tmp_path / "clinic_b", 20, seed=11)
    out = tmp_path / "eval"
    result = evaluate_lib.evaluate(tiny_run["tflite"], [tiny_run["data"], other], out, compare=tiny_run["run"],
                                   n_boot=100, robust=False)
    assert list(result["sets"]) == ["data", "clinic_b"]
    first, second = result["sets"]["data"], result["sets"]["clinic_b"]
    assert first["primary"] and not second["primary"] and first["data"] == result["data"]
    assert first["metrics"] == metrics.compact(result["metrics"])
    assert first["compare"]["metrics"] == metrics.compact(result["compare"]["metrics"])
    assert second["data"]["split"] == "all" and second["metrics"]["n"] == 40
    assert set(second["metrics"]["thresholds"]) == {"screening", "balanced", "specific"}
    assert "diagnosis" not in second and "diagnosis" not in result  # the tiny model has no head
    clf = Classifier(tiny_run["tflite"])
    samples, _ = evaluate_lib.evaluation_set(other)
    p = np.array([clf.malignant_probability(to_model_input(open_rgb(s.path), clf.image_size)) for s in samples])
    y = np.array([s.label for s in samples])
    assert second["metrics"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    t = result["model"]["operating_points"]["screening"]
    assert second["metrics"]["thresholds"]["screening"]["sensitivity"]["value"] == pytest.approx(np.mean(p[y == 1] >= t))
    assert second["compare"]["metrics"]["n"] == 40
    # The primary set alone is what predictions.csv and the figures are of.
    with open(out / "predictions.csv") as f:
        assert sum(1 for _ in csv.DictReader(f)) == result["metrics"]["n"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Results by test set" in card and "| clinic_b |" in card
    from edgeskin.reporting.tables import table

    assert "by test set" in table(result)


@pytest.mark.slow
def test_with_its_run_a_model_is_not_scored_on_copies_of_its_own_training_images(tiny_run, tmp_path):
    """A test image that repeats a training image from another set is left out once the run is named."""
    import csv
    import shutil

    from edgeskin.data import sets as data_lib
    from edgeskin.reporting.evaluate import evaluate

    rows = [(s.path, s.label) for s in data_lib.discover(tiny_run["data"]).test]
    trained = data_lib.discover(tiny_run["run"] / "splits.csv").train[:3]
    copies = []
    for i, s in enumerate(trained):
        copies.append(str(tmp_path / f"copy_{i}.jpg"))
        shutil.copy(s.path, copies[-1])
        rows.append((copies[-1], s.label))
    manifest = tmp_path / "other.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows((p, data_lib.LABELS[k], "test") for p, k in rows)

    def scored(run_dir):
        out = tmp_path / ("with" if run_dir else "without")
        evaluate(tiny_run["tflite"], manifest, out, n_boot=100, robust=False, run_dir=run_dir)
        with open(out / "predictions.csv", newline="") as f:
            return {r["path"] for r in csv.DictReader(f)}

    assert set(copies) <= scored(None)
    assert not set(copies) & scored(tiny_run["run"])
