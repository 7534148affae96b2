"""scripts/pool_bootstrap.py: the ship rules' sum on a run's calibration pool, and a paired bootstrap of differences."""

import json

import pytest

from conftest import load_script


def _script():
    return load_script("pool_bootstrap")


@pytest.mark.slow
def test_it_reproduces_the_export_s_figures_and_a_file_differs_from_itself_by_nothing(tiny_dx_run, capsys):
    from edgeskin.runtime import Classifier

    tflite = str(tiny_dx_run["tflite"])
    assert _script().main([str(tiny_dx_run["run"]), tflite, tflite, "--bootstrap", "50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    checks = Classifier(tflite).info["checks"]
    # The pool, its order and both metrics are export's own: the figures it printed come back.
    auc, bal = checks["auc"], checks["diagnosis_balanced_accuracy"]
    assert lines[0] == f"{tflite}: ROC AUC {auc:.4f} + balanced accuracy {bal:.4f} = {auc + bal:.4f}"
    assert lines[-1] == f"  {tflite}: +0.0000 (+0.0000 to +0.0000)"


@pytest.mark.slow
def test_draws_take_an_image_s_compressed_copies_together(tiny_dx_run):
    import numpy as np

    script = _script()
    _, y, dx, image = script.pool(tiny_dx_run["run"])
    copies = len(json.loads((tiny_dx_run["run"] / "calibration.json").read_text())["calibration_qualities"])
    assert len(y) == copies * (image.max() + 1) and np.bincount(image).tolist() == [copies] * (image.max() + 1)


def test_a_folder_that_is_not_a_run_or_a_missing_file_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _script().main([str(tmp_path), str(tmp_path / "none.tflite")])
    message = str(stop.value.code)
    assert message.startswith("error: not found:") and "splits.csv" in message and "none.tflite" in message
    assert "\n" not in message
