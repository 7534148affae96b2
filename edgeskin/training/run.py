"""The run folder: one reader and writer that train, export and evaluate share.

A run folder holds everything a run produced:
  config.json       the options, the data source and its counts
  splits.csv        every image with its split (train / val), as a manifest
  history.csv       per-epoch loss and validation AUC for every phase
  best.keras        the best training model (one logit out)
  model.keras       the calibrated serving model ([benign, malignant] out)
  calibration.json  temperature, operating points and validation figures
  gate.json         the input-quality and domain gate fitted on the run's images
  domain.npz        the in-model gate (a third output at export) fitted on the network's features
  audit/            the shortcut audit of the training images
  evaluation/       metrics and figures on the calibration pool

Every file is written to a temporary name and moved into place, so a run
that is stopped half-way never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from edgeskin.training.checkpoint import CHECKPOINT_DIR


RUN_FILES = ("config.json", "splits.csv", "history.csv", "best.keras", "model.keras", "calibration.json", "gate.json",
             "domain.npz")


AUDIT_DIR = "audit"


GATE_FILE = "gate.json"


class RunError(ValueError):
    """A run folder that cannot be written or read."""


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    existing = [name for name in RUN_FILES + (CHECKPOINT_DIR,) if (run_dir / name).exists()]
    if existing and not overwrite:
        resume = " or --resume it" if (run_dir / CHECKPOINT_DIR).exists() else ""
        raise RunError(f"{run_dir} already holds a run ({', '.join(existing)}); choose another folder, pass --overwrite{resume}")


def clear_run_dir(run_dir: Path) -> None:
    """Remove an old run's files before the new one writes any, so that a run
    that fails half-way never leaves new splits beside an old model."""
    import shutil

    run_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "evaluation", ignore_errors=True)
    shutil.rmtree(run_dir / AUDIT_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def save_keras(model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    model.save(tmp)
    os.replace(tmp, path)


def write_history(path: Path, rows: list[dict]) -> None:
    columns = ["phase", "epoch", "loss", "val_loss", "val_auc", "val_dx_balanced_accuracy"]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path.parent}: unreadable run file {path.name} ({exc})") from exc


def read_config(run_dir) -> dict:
    """config.json of a run folder, finished or not."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run folder (no config.json)")
    return _read_json(path)


def is_finished(config: dict) -> bool:
    """A run is finished when its last write, the config with the run's duration, has happened.

    Runs from before "finished" existed wrote "seconds" at the same moment.
    """
    return bool(config.get("finished") or "seconds" in config)


def load_run(run_dir) -> dict:
    """The calibration and config of a finished run folder, with a clear error if it is not one."""
    run_dir = Path(run_dir)
    if (run_dir / "config.json").is_file() and not is_finished(read_config(run_dir)):
        raise RunError(f"{run_dir}: this run did not finish (stopped or still running); "
                       f"continue it with: edgeskin train --resume {run_dir}")
    missing = [n for n in ("config.json", "splits.csv", "model.keras", "calibration.json") if not (run_dir / n).is_file()]
    if missing:
        raise RunError(f"{run_dir}: not a finished run folder (missing {', '.join(missing)})")
    config = read_config(run_dir)
    return {"config": config, "calibration": _read_json(run_dir / "calibration.json")}


def load_model(path):
    """A run's Keras model (model.keras, best.keras, or one copied out of a run), for scoring and explaining."""
    from edgeskin.training import model as model_lib

    return model_lib.load(path)
