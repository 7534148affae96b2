"""Diagnosis-head metrics, the per-set report and the card's sections, on hand-built numbers and a stand-in model.

Nothing here trains: a stand-in Scorer answers from each image's pixels, so
the whole evaluate path (several sets, the diagnosis head, the card) runs in
seconds.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import lesion, write_class_folders
from edgeskin.reporting import card
from edgeskin.data import sets
from edgeskin.reporting import evaluate, figures, metrics, tables

NAMES = ("akiec", "bcc", "mel", "nv")

# Four diagnoses, 10 images; rows are probabilities over NAMES.
TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
PROBS = np.array([
    [0.6, 0.2, 0.1, 0.1],  # akiec -> akiec
    [0.1, 0.2, 0.3, 0.4],  # akiec -> nv; akiec 4th: not in top 3
    [0.1, 0.7, 0.1, 0.1],  # bcc -> bcc
    [0.5, 0.3, 0.1, 0.1],  # bcc -> akiec; bcc 2nd
    [0.1, 0.6, 0.2, 0.1],  # bcc -> bcc
    [0.1, 0.1, 0.2, 0.6],  # mel -> nv; mel 2nd
    [0.0, 0.1, 0.8, 0.1],  # mel -> mel
    [0.1, 0.1, 0.1, 0.7],  # nv -> nv
    [0.1, 0.1, 0.5, 0.3],  # nv -> mel; nv 2nd
    [0.2, 0.1, 0.1, 0.6],  # nv -> nv
])


def test_balanced_accuracy_is_the_mean_of_hand_counted_recalls():
    r = metrics.diagnosis_report(PROBS, TRUE, NAMES, n_boot=200)
    recalls = {"akiec": 1 / 2, "bcc": 2 / 3, "mel": 1 / 2, "nv": 2 / 3}
    for name, value in recalls.items():
        assert r["per_class"][name]["recall"] == pytest.approx(value)
    assert r["balanced_accuracy"]["value"] == pytest.approx(np.mean(list(recalls.values())))
    assert r["accuracy"]["value"] == pytest.approx(6 / 10)
    lo, hi = r["balanced_accuracy"]["ci95"]
    assert 0.0 <= lo <= r["balanced_accuracy"]["value"] <= hi <= 1.0
    from sklearn.metrics import balanced_accuracy_score

    assert r["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(TRUE, PROBS.argmax(axis=1)))


def test_top3_precision_support_and_confusion_by_hand():
    r = metrics.diagnosis_report(PROBS, TRUE, NAMES, n_boot=200)
    assert r["top3_accuracy"]["value"] == pytest.approx(9 / 10)  # only image 1 misses
    # Predicted: akiec twice (1 right), bcc twice (2), mel twice (1), nv four times (2).
    expected = {"akiec": (2, 2, 1 / 2), "bcc": (3, 2, 1.0), "mel": (2, 2, 1 / 2), "nv": (3, 4, 2 / 4)}
    for name, (support, predicted, precision) in expected.items():
        c = r["per_class"][name]
        assert (c["support"], c["predicted"]) == (support, predicted)
        assert c["precision"] == pytest.approx(precision)
    assert np.array(r["confusion"]).sum() == 10 and np.trace(r["confusion"]) == 6
    assert r["confusion"][0] == [1, 0, 0, 1]  # rows true, columns predicted


def test_unknown_diagnoses_do_not_count_and_absent_ones_leave_the_mean():
    dx = ["akiec", "", "wart", "nv"]
    index = metrics.diagnosis_index(dx, NAMES)
    assert index.tolist() == [0, -1, -1, 3]
    p = np.array([[0.9, 0.1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0.2, 0.1, 0.1, 0.6]])
    r = metrics.diagnosis_report(p, index, NAMES, n_boot=100)
    assert r["images"] == 2 and r["images_without_known_diagnosis"] == 2
    assert r["balanced_accuracy"]["value"] == 1.0  # bcc and mel have no image: no recall, not a zero
    assert np.isnan(r["per_class"]["bcc"]["recall"]) and np.isnan(r["per_class"]["bcc"]["precision"])
    assert metrics.diagnosis_report(p, np.full(4, -1), NAMES)["images"] == 0
    with pytest.raises(ValueError, match="shape"):
        metrics.diagnosis_report(p[:, :3], index, NAMES)


def test_summary_equals_the_compact_part_of_the_full_report():
    rng = np.random.default_rng(1)
    y = (rng.random(120) < 0.4).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    points = {"screening": 0.3, "balanced": 0.5}
    assert metrics.summary(y, p, points, n_boot=150) == metrics.compact(metrics.report(y, p, points, n_boot=150))


def test_confusion_figure_is_written_from_hand_built_counts(tmp_path):
    grid = metrics.diagnosis_confusion(TRUE, PROBS.argmax(axis=1), 6)  # two diagnoses with no image: rows left out
    out = figures.diagnosis_confusion(grid, NAMES + ("df", "vasc"), tmp_path / "confusion_matrix.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200 and np.asarray(im.convert("L")).std() > 5
    with pytest.raises(ValueError):
        figures.diagnosis_confusion(np.zeros((3, 3)), NAMES[:3], tmp_path / "empty.png")


def test_keras_outputs_of_a_serving_and_a_training_model():
    s = evaluate.Scorer("m.keras", Path("m.keras"), "keras", {}, 2.0, {}, None, diagnoses=NAMES)
    dx = np.array([[0.1, 0.2, 0.3, 0.4]])
    p, d = s._keras_outputs([np.array([[0.3, 0.7]]), dx])
    assert p == pytest.approx([0.7]) and d is not None and np.allclose(d, dx)
    logits = np.log(dx)  # a training model's diagnosis output: softmax of it is dx again
    p, d = s._keras_outputs([np.array([[0.0]]), logits])
    assert p == pytest.approx([0.5]) and np.allclose(d, dx)
    p, d = s._keras_outputs(np.array([[0.4, 0.6]]))  # one output: no head
    assert d is None and p == pytest.approx([0.6])


# --- the whole evaluate path with a stand-in model --------------------------------------------


@dataclass(frozen=True)
class StandIn(evaluate.Scorer):
    """Malignant probability from the image's darkness; diagnosis from it too, so that the
    dark (malignant) pictures lean to mel and the light ones to nv."""

    def predictor(self):
        def run(x):
            dark = 1.0 - x.reshape(len(x), -1).mean(axis=1) / 255.0
            p = np.clip((dark - 0.2) * 2.0, 0.0, 1.0)
            if not self.diagnoses:
                return p, None
            logits = np.zeros((len(x), len(self.diagnoses)))
            logits[:, self.diagnoses.index("mel")] = 6 * p
            logits[:, self.diagnoses.index("nv")] = 6 * (1 - p)
            logits[:, self.diagnoses.index("bkl")] = 2.5
            e = np.exp(logits)
            return p, e / e.sum(axis=1, keepdims=True)

        return 32, run


def _stand_in(name, diagnoses):
    points = {"screening": 0.3, "balanced": 0.5}
    return StandIn(name, Path(name), "tflite", points, None, {}, None, diagnoses=diagnoses)


def _dx_rows(root: Path, n: int, seed: int) -> list[dict]:
    """n pictures under root with diagnoses: mel (malignant) every other one, then nv and bkl; every tenth has none."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        dx = "mel" if i % 2 == 0 else ("nv" if i % 4 == 1 else "bkl")
        lesion(rng, dx == "mel").save(root / f"ISIC_{i:07d}.jpg", quality=90)
        rows.append({"image_id": f"ISIC_{i:07d}", "label": "malignant" if dx == "mel" else "benign",
                     "dx": "" if i % 10 == 9 else dx})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _dx_manifest(root: Path, n: int = 50, seed: int = 4) -> Path:
    """A manifest set, ham10000.csv, all of it a test split."""
    rows = _dx_rows(root, n, seed)
    return _write_csv(root / "ham10000.csv", [{"path": f"{r['image_id']}.jpg", "label": r["label"], "dx": r["dx"],
                                               "split": "test"} for r in rows])


def _isic2017_folder(root: Path, n: int = 50, seed: int = 5) -> Path:
    """An ISIC 2017 challenge folder (images/, labels.csv), all of it the official test split."""
    rows = _dx_rows(root / "images", n, seed)
    _write_csv(root / "labels.csv", [{**r, "official_split": "test"} for r in rows])
    return root


@pytest.fixture
def stand_in_sets(tmp_path, monkeypatch):
    """Three test sets (class folders, a manifest with diagnoses, an ISIC 2017 folder),
    and load_scorer answering with stand-ins: model.tflite with the head, old.tflite without."""
    primary = write_class_folders(tmp_path / "isic-binary", 22, seed=1)
    ham = _dx_manifest(tmp_path / "sets")
    isic = _isic2017_folder(tmp_path / "isic2017")
    models = {"model.tflite": _stand_in("model.tflite", sets.DIAGNOSES), "old.tflite": _stand_in("old.tflite", ())}
    monkeypatch.setattr(evaluate, "load_scorer", lambda source: models[Path(source).name])
    return primary, ham, isic


def test_evaluate_reports_every_set_and_the_diagnosis_head(stand_in_sets, tmp_path):
    primary, ham, isic = stand_in_sets
    out = tmp_path / "eval"
    result = evaluate.evaluate("model.tflite", [primary, ham, isic], out, compare="old.tflite", n_boot=100,
                               robust=False)
    assert list(result["sets"]) == ["isic-binary", "ham10000", "isic2017"]
    first = result["sets"]["isic-binary"]
    assert first["primary"] and first["metrics"] == metrics.compact(result["metrics"])
    assert "diagnosis" not in first and "diagnosis" not in result  # class folders record no diagnosis
    other = result["sets"]["ham10000"]
    assert other["data"]["evaluated"] == 50 and other["metrics"]["n"] == 50
    dx = other["diagnosis"]
    assert dx["images"] == 45 and dx["images_without_known_diagnosis"] == 5
    assert set(other["metrics"]["thresholds"]) == {"screening", "balanced"}
    assert "diagnosis" not in other["compare"]  # the compared model has no head
    assert other["compare"]["model"]["name"] == "old.tflite"
    # Recomputed from the stand-in on that set alone.
    samples, _ = evaluate.evaluation_set(ham)
    scores = _stand_in("model.tflite", sets.DIAGNOSES).scores(samples)
    y = np.array([s.label for s in samples])
    from sklearn.metrics import roc_auc_score

    assert other["metrics"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, scores.malignant))
    index = metrics.diagnosis_index([s.dx for s in samples], sets.DIAGNOSES)
    expected = metrics.diagnosis_report(scores.diagnosis, index, sets.DIAGNOSES, n_boot=100)
    assert dx["balanced_accuracy"]["value"] == pytest.approx(expected["balanced_accuracy"]["value"])
    assert dx["balanced_accuracy"]["ci95"] == pytest.approx(expected["balanced_accuracy"]["ci95"])
    assert (out / dx["figure"]).is_file() and dx["figure"] == "figures/confusion_matrix_ham10000.png"
    assert dx["figure"] in result["metrics"]["figures"]
    assert json.loads((out / "metrics.json").read_text())["sets"]["ham10000"]["diagnosis"]["images"] == 45


def test_card_and_table_show_the_sets_the_head_and_the_published_isic2017_aucs(stand_in_sets, tmp_path):
    primary, ham, isic = stand_in_sets
    out = tmp_path / "eval"
    result = evaluate.evaluate("model.tflite", [isic, primary], out, compare="old.tflite", n_boot=100, robust=False)
    assert result["diagnosis"]["figure"] == "figures/confusion_matrix.png"
    assert (out / "figures" / "confusion_matrix.png").is_file()
    text = (out / "MODEL_CARD.md").read_text()
    assert "## Results by test set" in text and "## Diagnosis head" in text
    assert "0.874 (RECOD Titans)" in text and "0.868 (Casio and Shinshu University)" in text
    assert f"{result['diagnosis']['balanced_accuracy']['value']:.3f}" in text
    assert "![diagnosis confusion matrix](figures/confusion_matrix.png)" in text
    assert text.count("confusion_matrix.png") == 1  # in its own section, not again under Figures
    row = next(line for line in text.splitlines() if line.startswith("| isic-binary |") and "`old.tflite`" in line)
    assert f"{result['sets']['isic-binary']['compare']['metrics']['roc_auc']['value']:.3f}" in row
    printed = tables.table(result)
    assert "diagnosis head on isic2017" in printed and "by test set" in printed
    # A card for the same result renders with no sets too (older metrics.json files).
    assert "## Results by test set" not in card.render({k: v for k, v in result.items() if k != "sets"}, {})


def test_predictions_carry_the_diagnosis_columns(stand_in_sets, tmp_path):
    _, ham, _ = stand_in_sets
    out = tmp_path / "eval"
    evaluate.evaluate("model.tflite", ham, out, n_boot=100, robust=False)
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["path", "label", "malignant_probability", "dx"]
    assert sum(float(rows[0][f"p_{d}"]) for d in sets.DIAGNOSES) == pytest.approx(1.0, abs=1e-4)


def test_bad_set_lists_are_one_line_errors(stand_in_sets, tmp_path):
    primary, ham, _ = stand_in_sets
    with pytest.raises(evaluate.EvaluationError, match="no data set"):
        evaluate.evaluate("model.tflite", [], tmp_path / "e")
    with pytest.raises(evaluate.EvaluationError, match="named 'isic-binary'"):
        evaluate.evaluate("model.tflite", [primary, primary], tmp_path / "e")
    with pytest.raises(sets.DataError, match="no such file"):
        evaluate.evaluate("model.tflite", [primary, tmp_path / "missing"], tmp_path / "e", robust=False)
    assert not (tmp_path / "e" / "metrics.json").exists()


@pytest.mark.slow
def test_a_real_diagnosis_head_is_measured_through_keras_and_tflite_in_one_pass(tiny_dx_run, tmp_path):
    """The run folder (Keras, two outputs) against its int8 export (runtime, two output tensors)."""
    from edgeskin.runtime.imageio import open_rgb, to_model_input
    from edgeskin.runtime import Classifier

    ham = _dx_manifest(tmp_path / "sets")
    out = tmp_path / "eval"
    result = evaluate.evaluate(tiny_dx_run["run"], ham, out, compare=tiny_dx_run["tflite"], n_boot=100, robust=False)
    assert result["model"]["diagnoses"] == list(sets.DIAGNOSES)
    dx, cdx = result["diagnosis"], result["compare"]["diagnosis"]
    assert dx["images"] == cdx["images"] == 45
    assert sum(c["support"] for c in dx["per_class"].values()) == 45
    assert (out / "figures" / "confusion_matrix.png").is_file()
    # The int8 model's figures, recomputed image by image through the runtime.
    clf = Classifier(tiny_dx_run["tflite"])
    samples, _ = evaluate.evaluation_set(ham)
    probs = np.stack([clf.scores(to_model_input(open_rgb(s.path), clf.image_size))[1] for s in samples])
    index = metrics.diagnosis_index([s.dx for s in samples], clf.diagnoses)
    known = index >= 0
    assert cdx["top3_accuracy"]["value"] == pytest.approx(np.mean(metrics.top_k_hits(probs[known], index[known])))
    assert cdx["balanced_accuracy"]["value"] == pytest.approx(
        metrics.balanced_accuracy(index[known], probs[known].argmax(axis=1)))


def test_card_gives_both_commands_of_a_run_that_started_from_another(stand_in_sets, tmp_path):
    primary, _, _ = stand_in_sets
    result = evaluate.evaluate("model.tflite", [primary], tmp_path / "eval", n_boot=100, robust=False)
    config = {"command": "edgeskin train DATA --start-from runs/float --int8-grid", "seconds": 900,
              "started_from": {"run": "runs/float", "command": "edgeskin train DATA --out runs/float", "seconds": 4146}}
    lines = card.render(result, {}, config).splitlines()
    first = lines.index("- First, the run it started from (float, 69 min): `edgeskin train DATA --out runs/float`")
    assert lines[first + 1].startswith("- Then this run") and "--int8-grid" in lines[first + 2]
    # The recipe's own words: the diagnosis learnt through the backbone, and the int8 grid.
    config["options"] = {"diagnosis_in_fine_tuning": True, "diagnosis_loss": "balanced_softmax", "label_smoothing": 0.1,
                         "int8_grid": True, "model": {"diagnoses": ["mel", "nv"], "diagnosis_l2": 0.001}}
    text = card.render(result, {}, config)
    assert "through the fine-tuned layers" in text and "kept out of fine-tuning" not in text
    assert "balanced softmax" in text and "label smoothing 0.1" in text and "`--int8-grid`" in text
