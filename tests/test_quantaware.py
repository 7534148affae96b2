"""Int8-aware training: the layers that never train put on the int8 file's own weight grid (training/quantaware.py).

A fresh run with --int8-grid, and its resume, are checked in test_resume.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_class_folders
from edgeskin.cli import main
from edgeskin.training import quantaware


def _on_grid(kernel, fold, depthwise: bool) -> bool:
    shape, axes = ((1, 1, -1, 1), (0, 1, 3)) if depthwise else ((1, 1, 1, -1), (0, 1, 2))
    folded = kernel * fold.reshape(shape)
    step = np.abs(folded).max(axis=axes, keepdims=True) / quantaware.INT8_STEPS
    ratio = folded / step
    return bool(np.allclose(ratio, np.round(ratio), atol=1e-3))


@pytest.mark.parametrize("depthwise", [False, True])
def test_a_kernel_moves_onto_its_grid_by_at_most_half_a_step(depthwise):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 8, 1) if depthwise else (1, 1, 8, 5)).astype("float32")
    fold = rng.uniform(0.1, 40.0, size=8 if depthwise else 5).astype("float32")
    snapped = quantaware.on_int8_grid(kernel, fold, depthwise)
    assert not _on_grid(kernel, fold, depthwise) and _on_grid(snapped, fold, depthwise)
    shape = (1, 1, -1, 1) if depthwise else (1, 1, 1, -1)
    axes = (0, 1, 3) if depthwise else (0, 1, 2)
    step = np.abs(kernel * fold.reshape(shape)).max(axis=axes, keepdims=True) / quantaware.INT8_STEPS
    assert np.all(np.abs((snapped - kernel) * fold.reshape(shape)) <= step / 2 + 1e-6)
    # The converter rounds the snapped kernel to itself: snapping again moves nothing.
    np.testing.assert_allclose(quantaware.on_int8_grid(snapped, fold, depthwise), snapped, rtol=1e-5, atol=1e-7)


def _cmd(data, out, weights, *extra):
    return ["train", str(data), "--out", str(out), "--seed", "3", "--weights", str(weights), "--image-size", "64",
            "--alpha", "0.35", "--batch-size", "8", "--head-epochs", "1", "--fine-tune-epochs", "1",
            "--fine-tune-from", "block_16_expand", "--val-fraction", "0.3", "--head-copies", "1", *extra]


def frozen_layers_on_grid(run_dir, start: str | None = "block_16_expand") -> tuple[int, int]:
    """How many of the run's convolutions before layer start (those that never train) are on the int8 grid, of how many."""
    from edgeskin.training import model as model_lib

    found = list(quantaware.convolutions(model_lib.backbone_of(model_lib.load(run_dir / "best.keras")), start))
    return sum(_on_grid(layer.get_weights()[0], fold, depthwise) for layer, fold, depthwise in found), len(found)


@pytest.mark.slow
def test_a_float_run_is_made_ready_for_int8_by_a_run_that_starts_from_it(tmp_path, tiny_run, tiny_weights):
    runner = CliRunner()
    assert frozen_layers_on_grid(tiny_run["run"])[0] == 0
    # tiny_run's data, split as tiny_run split it (seed 42 and --val-fraction 0.2 are the defaults of both).
    r = runner.invoke(main, _cmd(tiny_run["data"], tmp_path / "int8", tiny_weights, "--start-from", str(tiny_run["run"]),
                                 "--int8-grid", "--seed", "42", "--val-fraction", "0.2"))
    assert r.exit_code == 0, r.output
    assert "phase 1" not in r.output and "started from" in r.output and "int8 grid" in r.output
    on, total = frozen_layers_on_grid(tmp_path / "int8")
    assert total > 30 and on == total
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert config["started_from"]["run"] == str(tiny_run["run"]) and config["options"]["int8_grid"]
    assert config["started_from"]["seconds"] == json.loads((tiny_run["run"] / "config.json").read_text())["seconds"]
    # Another split (here another seed) would put the first run's training images into this one's checks.
    r = runner.invoke(main, _cmd(tiny_run["data"], tmp_path / "other", tiny_weights, "--start-from",
                                 str(tiny_run["run"]), "--seed", "4", "--val-fraction", "0.2"))
    assert r.exit_code != 0 and "split the data differently" in r.output and "Traceback" not in r.output


def test_a_run_cannot_start_from_itself(tmp_path, tiny_weights):
    data = write_class_folders(tmp_path / "data", 70, seed=5)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("kept")
    r = CliRunner().invoke(main, _cmd(data, tmp_path / "run", tiny_weights, "--start-from", str(tmp_path / "run"),
                                      "--overwrite"))
    assert r.exit_code != 0 and "cannot start from itself" in r.output and "Traceback" not in r.output
    assert (tmp_path / "run" / "keep.txt").read_text() == "kept"


def test_both_networks_land_on_the_grid_when_they_train_and_serve_at_different_sizes():
    """The pool is scored by the serving network: a snap of the training network alone left the serving one's
    layers off the grid (scripts/compare_diagnosis_losses.py scored its pool that way)."""
    from edgeskin.training import model as model_lib, phases
    from edgeskin.training.options import TrainOptions

    options = TrainOptions.for_smoke_test(train_image_size=32)
    nets = phases.build_nets(options)
    assert nets.serving is not nets.net
    moved = nets.snap_below("block_3_expand")
    assert moved > 0
    for backbone in (nets.backbone, model_lib.backbone_of(nets.serving)):
        grid = list(quantaware.convolutions(backbone, "block_3_expand"))
        assert len(grid) == moved
        assert all(_on_grid(layer.get_weights()[0], fold, depthwise) for layer, fold, depthwise in grid)
