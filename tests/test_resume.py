"""A long run survives being stopped: a checkpoint after every fine-tuning epoch, and `train --resume`.

The tiny run is killed for real (SIGKILL, from outside, mid-way through
fine-tuning), then resumed with the command a user would type, and compared
with the same run left alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_class_folders
from test_quantaware import frozen_layers_on_grid
from edgeskin.cli import main

EPOCHS = 3  # killed after epoch 2, so one epoch runs after the resume


def _train_cmd(data: Path, out: Path, weights: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "edgeskin.cli", "train", str(data), "--out", str(out), "--seed", "3",
            "--weights", str(weights), "--image-size", "64", "--alpha", "0.35", "--batch-size", "8",
            "--head-epochs", "2", "--fine-tune-epochs", str(EPOCHS), "--fine-tune-from", "block_16_expand",
            "--patience", str(EPOCHS), "--val-fraction", "0.3", "--head-copies", "1", "--int8-grid", *more]


def _env() -> dict:
    # Deterministic kernels, so that the killed-and-resumed run can be held to the same result.
    return {**os.environ, "TF_DETERMINISTIC_OPS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _kill_after_epoch(cmd, state: Path, epoch: int, timeout: float = 300) -> None:
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if state.is_file() and json.loads(state.read_text()).get("epoch", 0) >= epoch:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    pytest.fail(f"the run ended or timed out before fine-tuning epoch {epoch} was checkpointed")


@pytest.mark.slow
def test_a_killed_run_is_not_finished_and_resumes_to_the_same_result(tmp_path, tiny_weights):
    data = write_class_folders(tmp_path / "data", 70, seed=5)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _kill_after_epoch(_train_cmd(data, killed, tiny_weights), killed / "checkpoint" / "state.json", 2)

    # A stopped run is never mistaken for a finished one.
    for args in (["export", str(killed), "--int8"], ["evaluate", str(killed), str(data)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and "did not finish" in r.output and "--resume" in r.output, r.output
    r = CliRunner().invoke(main, ["train", str(data), "--out", str(killed)])
    assert r.exit_code != 0 and "--resume" in r.output, r.output

    subprocess.run([sys.executable, "-m", "edgeskin.cli", "train", "--resume", str(killed)], env=_env(), check=True,
                   capture_output=True)
    done = subprocess.run(_train_cmd(data, whole, tiny_weights), env=_env(), check=True, capture_output=True, text=True)
    # --int8-grid: the layers that never train go on the grid before phase 1, and a resume keeps them there.
    assert done.stdout.index("int8 grid") < done.stdout.index("phase 1"), done.stdout
    for run in (killed, whole):
        on, total = frozen_layers_on_grid(run)
        assert total > 30 and on == total, (run, on, total)

    a, b = (json.loads((d / "config.json").read_text()) for d in (killed, whole))
    assert a["finished"] and b["finished"] and not (killed / "checkpoint").exists()
    history = [line.split(",")[:2] for line in (killed / "history.csv").read_text().splitlines()[1:]]
    assert [e for p, e in history if p == "fine_tune"] == [str(i) for i in range(1, EPOCHS + 1)]
    ca, cb = (json.loads((d / "calibration.json").read_text()) for d in (killed, whole))
    # Same seed, same batches, same optimizer state from the checkpoint: the same model, up to float
    # round-off (dropout's random state is not part of the checkpoint, so masks after the resume differ).
    assert abs(ca["val_auc"] - cb["val_auc"]) <= 0.02, (ca["val_auc"], cb["val_auc"])


@pytest.mark.slow
def test_a_killed_ema_run_resumes_with_its_saved_average(tmp_path, tiny_weights):
    data = write_class_folders(tmp_path / "data", 70, seed=5)
    killed = tmp_path / "killed"
    _kill_after_epoch(_train_cmd(data, killed, tiny_weights, "--ema", "0.5"), killed / "checkpoint" / "state.json", 2)
    # The checkpoint keeps the average beside the weights as trained: one array for each trained variable (BatchNorm's
    # statistics do not train), none equal to the weights it averages (momentum 0.5 over two epochs' steps).
    from edgeskin.training.checkpoint import Checkpoint

    saved = Checkpoint(killed)
    ema, last = saved.weights("ema"), saved.weights("last")
    assert 0 < len(ema) < len(last), (len(ema), len(last))
    assert not any(any(w.shape == e.shape and np.array_equal(w, e) for w in last) for e in ema)

    done = subprocess.run([sys.executable, "-m", "edgeskin.cli", "train", "--resume", str(killed)], env=_env(),
                          check=True, capture_output=True, text=True)
    assert "is scored and kept" in done.stdout and "holds no weight average" not in done.stdout, done.stdout
    config = json.loads((killed / "config.json").read_text())
    assert config["finished"] and config["options"]["ema_momentum"] == 0.5
    history = [line.split(",")[:2] for line in (killed / "history.csv").read_text().splitlines()[1:]]
    assert [e for p, e in history if p == "fine_tune"] == [str(i) for i in range(1, EPOCHS + 1)]


def test_resume_needs_a_stopped_run(tmp_path):
    r = CliRunner().invoke(main, ["train", "--resume", str(tmp_path)])
    assert r.exit_code != 0 and "not a run folder" in r.output
    r = CliRunner().invoke(main, ["train"])
    assert r.exit_code != 0 and "--resume" in r.output


def test_checkpoint_round_trip(tmp_path):
    from edgeskin.training.checkpoint import Checkpoint

    ck = Checkpoint(tmp_path)
    assert ck.state() is None
    weights = [np.arange(6.0).reshape(2, 3), np.ones(4, np.float32)]
    ck.save({"phase": "fine_tune", "epoch": 2, "best": 0.9}, weights, [np.zeros(3)], best_weights=weights)
    assert ck.state()["epoch"] == 2
    assert all(np.array_equal(x, y) for x, y in zip(ck.weights("last"), weights))
    assert all(np.array_equal(x, y) for x, y in zip(ck.weights("best"), weights))
    assert not list(tmp_path.rglob("*.tmp*"))  # written by rename: nothing half-written is left
    ck.clear()
    assert ck.state() is None
