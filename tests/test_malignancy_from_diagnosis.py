"""scripts/malignancy_from_diagnosis.py: the diagnosis head's malignancy score beside the malignant head, on the pool."""

import pytest

from conftest import load_script


def _script():
    return load_script("malignancy_from_diagnosis")


@pytest.mark.slow
def test_its_malignant_head_column_is_the_export_s_pool_auc(tiny_dx_run, capsys):
    from edgeskin.runtime import Classifier

    tflite = tiny_dx_run["tflite"]
    assert _script().main([str(tiny_dx_run["run"]), str(tflite)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:]}
    assert "all" in rows and len(rows) >= 3  # the whole pool and each of the run's two sources
    assert all(len(v) == 5 and all(0.0 <= a <= 1.0 for a in v) for v in rows.values())
    assert f"{rows['all'][0]:.4f}" == f"{Classifier(str(tflite)).info['checks']['auc']:.4f}"


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as stop:
        _script().main([str(tmp_path), str(tmp_path / "none.tflite")])
    message = str(stop.value.code)
    assert message.startswith("error: not found:") and "splits.csv" in message and "\n" not in message
