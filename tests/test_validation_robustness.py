"""scripts/validation_robustness.py: the robustness bar measured on a run's validation split, per source."""

import pytest

from conftest import load_script


def _script():
    return load_script("validation_robustness")


@pytest.mark.slow
def test_flips_per_source_add_up_to_the_whole_split(tiny_dx_run):
    from edgeskin.data import sets

    samples = sets.discover(tiny_dx_run["run"] / "splits.csv").val
    shares = _script().flips(tiny_dx_run["tflite"], samples, "jpeg_q50")
    counts = {s: sum(x.source == s for x in samples) for s in ("clinic_a", "clinic_b")}
    assert set(shares) == {"all", *counts}
    assert all(0.0 <= v <= 1.0 for v in shares.values())
    weighted = sum(shares[s] * n for s, n in counts.items()) / len(samples)
    assert shares["all"] == pytest.approx(weighted)


@pytest.mark.slow
def test_a_perturbation_that_changes_nothing_flips_nothing(tiny_dx_run, monkeypatch):
    from edgeskin.data import perturb, sets

    unchanged = perturb.Perturbation("same", "the image as it is", lambda im: im.copy())
    monkeypatch.setitem(perturb.BY_NAME, "same", unchanged)
    samples = sets.discover(tiny_dx_run["run"] / "splits.csv").val
    assert _script().flips(tiny_dx_run["tflite"], samples, "same") == {"all": 0.0, "clinic_a": 0.0, "clinic_b": 0.0}


@pytest.mark.slow
def test_main_prints_a_line_a_model(tiny_dx_run, capsys):
    assert _script().main([str(tiny_dx_run["run"]), str(tiny_dx_run["tflite"]), "--perturbation", "jpeg_q75"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("screening decisions flipped by jpeg_q75:")
    assert lines[1].startswith(f"{tiny_dx_run['tflite']}: all ") and "clinic_a" in lines[1] and "clinic_b" in lines[1]
