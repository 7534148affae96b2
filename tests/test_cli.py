import json

import pytest
from click.testing import CliRunner
from PIL import Image

from edgeskin.cli import main
from conftest import TINY_TEST_PER_CLASS


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1
    return errors[0]


@pytest.fixture
def images(tiny_run, tmp_path):
    good = sorted((tiny_run["data"] / "test" / "malignant").glob("*.jpg"))[:2]
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good[0].read_bytes()[:200])
    return {"good": good, "text": text, "corrupt": corrupt}


@pytest.mark.slow
def test_predict_json_has_exactly_the_documented_keys(tiny_run, images):
    r = run("predict", *images["good"], "--model", tiny_run["tflite"], "--threshold", 0.4, "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert len(rows) == 2
    for row, path in zip(rows, images["good"]):
        assert list(row) == ["path", "malignant_probability", "threshold", "label", "usable", "reasons"]
        assert row["path"] == str(path) and row["threshold"] == 0.4
        assert row["usable"] == (row["reasons"] == [])
        expected = "malignant" if row["malignant_probability"] >= 0.4 else "benign"
        assert row["label"] == (expected if row["usable"] else "unusable")


@pytest.mark.slow
def test_predict_readable_lines_and_folders(tiny_run):
    r = run("predict", tiny_run["data"] / "test", "--model", tiny_run["tflite"], "--operating-point", "balanced")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    # An image the gate sets aside gets its reasons and no probability.
    assert len(lines) == 2 * TINY_TEST_PER_CLASS
    assert all("malignant_probability" in line or ": cannot judge this image (" in line for line in lines), lines


@pytest.mark.slow
def test_bad_images_are_reported_and_the_rest_go_on(tiny_run, images):
    r = run("predict", images["text"], images["good"][0], images["corrupt"], "--model", tiny_run["tflite"], "--json")
    assert r.exit_code == 1
    rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert [sorted(row) for row in rows] == [
        ["error", "path"], ["label", "malignant_probability", "path", "reasons", "threshold", "usable"], ["error", "path"]]
    assert "2 of 3 image(s) could not be read" in r.output


@pytest.mark.slow
def test_threshold_out_of_range(tiny_run, images):
    r = run("predict", images["good"][0], "--model", tiny_run["tflite"], "--threshold", 2)
    assert r.exit_code == 2 and "0.0<=x<=1.0" in r.output


def test_missing_model_and_broken_model(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.jpg")
    assert "no such model file" in one_line_error(run("predict", tmp_path / "a.jpg", "--model", tmp_path / "none.tflite"))
    (tmp_path / "broken.tflite").write_bytes(b"garbage" * 10)
    assert "broken.tflite" in one_line_error(run("predict", tmp_path / "a.jpg", "--model", tmp_path / "broken.tflite"))


@pytest.mark.slow
def test_unknown_operating_point_and_both_options(tiny_run, images):
    assert "lenient" in one_line_error(run("predict", images["good"][0], "--model", tiny_run["tflite"],
                                           "--operating-point", "lenient"))
    assert "not both" in one_line_error(run("predict", images["good"][0], "--model", tiny_run["tflite"],
                                            "--operating-point", "screening", "--threshold", 0.3))


def test_train_refuses_a_set_with_an_empty_class(class_folders, tmp_path):
    for p in (class_folders / "malignant").iterdir():
        p.unlink()
    msg = one_line_error(run("train", class_folders, "--out", tmp_path / "run", "--weights", "none"))
    assert "no malignant images" in msg
    assert not (tmp_path / "run" / "model.keras").exists()


def test_train_refuses_unreadable_images(class_folders, tmp_path):
    (class_folders / "benign" / "broken.jpg").write_text("oops")
    msg = one_line_error(run("train", class_folders, "--out", tmp_path / "run", "--weights", "none",
                             "--image-size", 64, "--alpha", "0.35"))
    assert "unreadable" in msg and "broken.jpg" in msg


def test_train_bad_weights_path(class_folders, tmp_path):
    msg = one_line_error(run("train", class_folders, "--out", tmp_path / "run", "--weights", tmp_path / "nope.h5"))
    assert "weights" in msg


@pytest.mark.slow
def test_train_never_overwrites_a_run(tiny_run):
    before = (tiny_run["run"] / "model.keras").stat().st_mtime_ns
    msg = one_line_error(run("train", tiny_run["data"], "--out", tiny_run["run"], "--weights", "none"))
    assert "already holds a run" in msg
    assert (tiny_run["run"] / "model.keras").stat().st_mtime_ns == before


def test_export_of_something_that_is_not_a_run(tmp_path):
    assert "not a finished run folder" in one_line_error(run("export", tmp_path, "--int8"))


@pytest.mark.slow
def test_metadata_with_a_nan_threshold_is_refused(tiny_run, images, tmp_path):
    from edgeskin.runtime import metadata

    raw = tiny_run["tflite"].read_bytes()
    info = metadata.read(raw)
    info["operating_points"]["screening"]["threshold"] = float("nan")
    bad = tmp_path / "nan.tflite"
    bad.write_bytes(metadata.embed_json(raw, info))
    assert "nan.tflite" in one_line_error(run("predict", images["good"][0], "--model", bad))


def test_manifest_row_with_missing_fields(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nonly_a_path.jpg\n")
    assert "one value per column" in one_line_error(run("train", tmp_path / "m.csv", "--out", tmp_path / "run"))


@pytest.mark.slow
def test_evaluate_rejects_a_nan_threshold_and_leaves_out_untouched(tiny_run, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "MODEL_CARD.md").write_text("old card")
    msg = one_line_error(run("evaluate", tiny_run["tflite"], tiny_run["data"], "--out", out, "--threshold", "nan"))
    assert "threshold" in msg and (out / "MODEL_CARD.md").read_text() == "old card"


@pytest.mark.slow
def test_explain_empty_folder_and_name_collisions(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    model = str(tiny_run["run"] / "model.keras")
    assert "no images found" in one_line_error(run("explain", tmp_path / "empty", "--model", model))
    src = next((tiny_run["data"] / "test" / "benign").glob("*.jpg"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.jpg").write_bytes(src.read_bytes())
    r = run("explain", tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", "--model", model, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*_overlay.png")) == ["x_2_overlay.png", "x_overlay.png"]
    # It says which model gave the probability: the float one, not the int8 one predict runs.
    assert "scored by the float Keras model" in r.output and "float model's malignant_probability" in r.output


def test_a_too_small_calibration_split_says_which_val_fraction_would_work(tmp_path):
    from conftest import write_class_folders
    from edgeskin.data import sets, splits

    data = write_class_folders(tmp_path / "set", 60)
    msg = one_line_error(run("train", data, "--out", tmp_path / "run", "--weights", "none", "--image-size", 64,
                             "--alpha", "0.35"))
    assert "only 12 benign and 12 malignant" in msg
    # 20 / 60 images, rounded up: the fraction it names does give 20 of each class.
    assert "--val-fraction 0.34 would work" in msg and "40 more benign and 40 more malignant" in msg
    val = splits.split_validation(sets.discover(data), 0.34, 42).val
    assert min(sets.Dataset(data, train=val).counts()["train"].values()) >= sets.MIN_PER_CLASS
    assert not (tmp_path / "run" / "model.keras").exists()


def test_train_passes_the_split_seed_and_the_seed_apart(class_folders, tmp_path, monkeypatch):
    import edgeskin.training.train as train_lib

    seen = []

    def stop(data, out, options, **_):
        seen.append(options)
        raise ValueError("stopped before training")

    monkeypatch.setattr(train_lib, "train", stop)
    one_line_error(run("train", class_folders, "--out", tmp_path / "run", "--seed", 43, "--split-seed", 42))
    one_line_error(run("train", class_folders, "--out", tmp_path / "run", "--seed", 43))
    assert [(o.seed, o.validation_seed) for o in seen] == [(43, 42), (43, 43)]
    # numpy's own words for a negative seed ("expected non-negative integer") name no flag.
    assert "'--split-seed'" in one_line_error(run("train", class_folders, "--out", tmp_path / "run", "--split-seed", -1))
    assert len(seen) == 2
