"""`edgeskin train`: audit, the three training phases, calibration and the gate, into one run folder.

The phases live in phases.py, the arrays they read in arrays.py, calibration
and the validation report in report.py, and the folder itself in run.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from edgeskin import __version__
from edgeskin.data import sets
from edgeskin.training import model as model_lib
from edgeskin.training.arrays import load_arrays
from edgeskin.training.options import RunResult, TrainOptions
from edgeskin.training.phases import History, fine_tune, refit_diagnosis, train_head
from edgeskin.training.report import calibrate, write_evaluation
from edgeskin.training.run import AUDIT_DIR, GATE_FILE, check_run_dir, clear_run_dir, save_keras, write_history, write_json


def _start_run(source, run_dir: Path, dataset: sets.Dataset, options: TrainOptions, command, log) -> dict:
    """Clear the folder, write the splits, the audit and the config; return the config."""
    clear_run_dir(run_dir)
    sets.write_manifest(run_dir / "splits.csv", {"train": dataset.train, "val": dataset.val})
    flags = _audit_training_data(dataset, run_dir / AUDIT_DIR, options, log)
    config = {
        "edgeskin_version": __version__,
        "command": command,
        "cpus": os.cpu_count(),
        "data": " + ".join(str(Path(s).resolve()) for s in source),
        "counts": dataset.counts(),
        "sources": {name: sets.source_counts(dataset.split(name)) for name in ("train", "val")},
        "notes": list(dataset.notes),
        "audit_flags": flags,
        "options": asdict(options),
    }
    write_json(run_dir / "config.json", config)
    return config


def _audit_training_data(dataset: sets.Dataset, out: Path, options: TrainOptions, log) -> list[str]:
    """Shortcut audit of the training images (train and val), kept in the run folder."""
    from edgeskin.data import audit

    report = audit.audit(dataset.train + dataset.val, out, seed=options.seed, n_boot=200,
                         max_distance=options.max_duplicate_distance,
                         splits={"train": dataset.train, "val": dataset.val})
    flags = [row["property"] for row in report["properties"] if row["flagged"]]
    log(f"audit: {len(flags)} propert{'y' if len(flags) == 1 else 'ies'} predict the label on their own"
        + (f": {', '.join(flags)}" if flags else "") + f" (report in {out})")
    return flags


def _fit_gate(dataset: sets.Dataset, run_dir: Path, options: TrainOptions, log) -> None:
    """The input-quality and domain gate, fitted on this run's images and saved with it (see gate.py)."""
    from edgeskin.training import gate as gate_fit

    gate, rates = gate_fit.fit_on_splits(dataset.train, dataset.val, options.model.image_size)
    log(f"gate: {rates['calibration_pass_rate']:.1%} of the calibration pool passes")
    write_json(run_dir / GATE_FILE, {**gate.to_dict(), "checks": {**rates, "fitted": "at training time"}})


def _timed(log, started: float):
    """log with the minutes since the run started, so a run's log shows where its time went."""
    return lambda message: log(f"[{(time.time() - started) / 60:5.1f} min] {message}")


def _dataset(sources, options: TrainOptions, log) -> tuple[sets.Dataset, TrainOptions]:
    """The data, split; and the options with the diagnosis head switched on when the data names diagnoses."""
    dataset = sets.split_validation(sets.discover_many(sources), options.val_fraction, options.seed,
                                    options.max_duplicate_distance)
    for note in dataset.notes:
        log(note)
    log(f"train: {dataset.counts()['train']}  val: {dataset.counts()['val']}  (test splits are never read by train)")
    for name, counts in sets.source_counts(dataset.val).items():
        log(f"  val from {name}: {counts}")
    if any(s.dx for s in dataset.train) and not options.model.diagnoses:
        options = replace(options, model=replace(options.model, diagnoses=sets.DIAGNOSES))
        log(f"diagnosis head: {len(sets.DIAGNOSES)} diagnoses, trained on the "
            f"{sum(1 for s in dataset.train if s.dx)} training images that have one")
    return dataset, options


def train(source, run_dir, options: TrainOptions = TrainOptions(), overwrite: bool = False, log=print,
          command: str | None = None) -> RunResult:
    """Audit, train, select, calibrate and save one model into run_dir.

    source is one data set or a list of them, trained on as one (sets.discover_many).
    """
    started = time.time()
    log = _timed(log, started)
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    dataset, options = _dataset(sources, options, log)
    arrays = load_arrays(dataset, options)
    sets.check_classes(dataset.val, "calibration (validation) split", sets.MIN_PER_CLASS)
    config = _start_run(sources, run_dir, dataset, options, command, log)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(options.seed)
    net, backbone, head = model_lib.build(options.model)
    history = History()
    watch = train_head(keras, net, head, arrays, options, history, log)
    if options.fine_tune_epochs > 0 and options.fine_tune_from is not None:
        fine_tune(keras, net, backbone, arrays, options, history, watch, log, started)
        if options.model.diagnoses:
            refit_diagnosis(keras, net, head, arrays, options, history, log)
    write_history(run_dir / "history.csv", history)
    save_keras(net, run_dir / "best.keras")
    temperature, points, p_cal, val_auc = calibrate(net, arrays, run_dir, options)
    write_evaluation(run_dir, arrays.y_cal, p_cal, points, temperature)
    _fit_gate(dataset, run_dir, options, log)
    seconds = time.time() - started
    write_json(run_dir / "config.json", {**config, "seconds": round(seconds, 1)})
    return RunResult(run_dir, config["counts"], dataset.notes, temperature, val_auc, points, seconds)
