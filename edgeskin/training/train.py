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
from edgeskin.data import sets, splits
from edgeskin.training import distribute, streaming
from edgeskin.training.arrays import load_arrays
from edgeskin.training.options import RunResult, TrainOptions
from edgeskin.training.checkpoint import Checkpoint
from edgeskin.training.phases import History, build_nets, fine_tune, refit_diagnosis, score_on_pool, train_head
from edgeskin.training.report import calibrate, write_evaluation
from edgeskin.training.run import (AUDIT_DIR, GATE_FILE, RunError, check_run_dir, clear_run_dir, read_config,
                                   save_keras, write_history, write_json)


def _start_run(source, run_dir: Path, dataset: sets.Dataset, options: TrainOptions, command, log,
               start_from: Path | None = None) -> dict:
    """Clear the folder, write the splits, the audit and the config; return the config."""
    clear_run_dir(run_dir)
    sets.write_manifest(run_dir / "splits.csv", {"train": dataset.train, "val": dataset.val})
    flags = _audit_training_data(dataset, run_dir / AUDIT_DIR, options, log)
    config = {
        "edgeskin_version": __version__,
        "command": command,
        "cpus": os.cpu_count(),
        "data": " + ".join(str(Path(s).resolve()) for s in source),
        "data_paths": [str(Path(s).resolve()) for s in source],
        "counts": dataset.counts(),
        "sources": {name: sets.source_counts(dataset.split(name)) for name in ("train", "val")},
        "notes": list(dataset.notes),
        "audit_flags": flags,
        "options": asdict(options),
        **({"started_from": _provenance(start_from)} if start_from else {}),
    }
    write_json(run_dir / "config.json", config)
    return config


def _provenance(start_from: Path) -> dict:
    """What a run that starts from another records of it: the card gives both commands and both times."""
    before = read_config(start_from)
    return {"run": str(start_from), "command": before.get("command"), "seconds": before.get("seconds"),
            "started_from": before.get("started_from")}


def _same_splits(folder: Path, dataset: sets.Dataset) -> bool:
    """Whether folder's splits.csv holds exactly the splits just drawn."""
    # Written beside the original, because the manifest's paths are relative to its own folder.
    again = folder / "splits.csv.again"
    try:
        sets.write_manifest(again, {"train": dataset.train, "val": dataset.val})
        return again.read_bytes() == (folder / "splits.csv").read_bytes()
    finally:
        again.unlink(missing_ok=True)


def _resumed_run(run_dir: Path, dataset: sets.Dataset) -> dict:
    """The config of the stopped run, once its splits are shown to be the ones just drawn again."""
    if not _same_splits(run_dir, dataset):
        raise RunError(f"{run_dir}: the data no longer splits as it did when the run started; start it again")
    return read_config(run_dir)


def _check_start(start_from: Path, run_dir: Path, dataset: sets.Dataset) -> None:
    """A run to start from must be another folder, finished, and split exactly as this one: its validation
    images must stay unseen by training, or the checks that select and calibrate this run would be judged
    on training data."""
    if start_from.resolve() == run_dir.resolve():
        raise RunError(f"{start_from}: a run cannot start from itself; give --out another folder")
    if not read_config(start_from).get("finished"):
        raise RunError(f"{start_from}: this run did not finish; resume it first (--resume)")
    if not _same_splits(start_from, dataset):
        raise RunError(f"{start_from}: that run split the data differently (other data, seed or --val-fraction)")


def _start_weights(nets, start_from: Path, arrays, options: TrainOptions, log) -> float:
    """Load a finished run's network (its best.keras), put it on the int8 grid if asked; returns its score."""
    try:
        nets.load(start_from / "best.keras")
    except ValueError as exc:
        raise RunError(f"{start_from}: its network does not match these options ({exc})") from exc
    _snap(nets, options, log)
    score = score_on_pool(nets, arrays, options)
    log(f"started from {start_from}: its network scores {score:.4f} on the calibration pool")
    return score


def _snap(nets, options: TrainOptions, log) -> None:
    """The layers that never train, on the int8 grid (options.int8_grid, quantaware.py)."""
    if not options.int8_grid:
        return
    moved = nets.snap_below(options.fine_tune_from if options.fine_tune_epochs else None)
    log(f"int8 grid: the {moved} convolutions that never train are put on the int8 file's own grid")


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

    train_samples = streaming.gate_samples(dataset.train, options)  # all, unless the set is streamed
    gate, rates = gate_fit.fit_on_splits(train_samples, dataset.val, options.model.image_size)
    log(f"gate: {rates['calibration_pass_rate']:.1%} of the calibration pool passes")
    write_json(run_dir / GATE_FILE, {**gate.to_dict(), "checks": {**rates, "fitted": "at training time"}})


def _fit_domain_head(serving, dataset: sets.Dataset, arrays, run_dir: Path, log) -> None:
    """The in-model gate (training/domain.py), fitted on the final network's features and saved with the run."""
    from edgeskin.training import domain

    head, rates = domain.fit_on_images(serving, dataset.train, arrays.x_cal)
    head.save(run_dir / domain.DOMAIN_FILE)
    log(f"in-model gate: {rates['calibration_pass_rate']:.1%} of the calibration pool and "
        f"{rates['training_pass_rate']:.1%} of {rates['training_images']} training images pass")


class _Clock:
    """Minutes since the run started, across a resume: the log and the time budget both count them."""

    def __init__(self, log, elapsed_before: float = 0.0):
        self.started = time.time() - elapsed_before
        self._log = log

    def elapsed(self) -> float:
        return round(time.time() - self.started, 1)

    def log(self, message: str) -> None:
        self._log(f"[{self.elapsed() / 60:5.1f} min] {message}")


def prepare_dataset(sources, options: TrainOptions, log) -> tuple[sets.Dataset, TrainOptions]:
    """The data, split; and the options with the diagnosis head switched on when the data names diagnoses."""
    dataset = splits.split_validation(sets.discover_many(sources), options.val_fraction, options.validation_seed,
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
          command: str | None = None, resume: bool = False, start_from=None) -> RunResult:
    """Audit, train, select, calibrate and save one model into run_dir.

    source is one data set or a list of them, trained on as one (sets.discover_many).
    With resume, run_dir holds a stopped run of these sources and options
    (see resume()), which goes on from its checkpoint.

    With start_from, a finished run of the same data and split, phase 1 is
    skipped and fine-tuning starts from that run's network (with
    options.int8_grid: a float run made ready for int8, quantaware.py).

    With options.distribute, every worker calls this with the same arguments
    and only the chief writes run_dir (distribute.py).

    Example: train(["../shared/data/ham10000"], "runs/ham", TrainOptions.for_multisource())
    """
    strategy = distribute.make_strategy(options.distribute)  # before TensorFlow runs anything (multi-worker)
    with distribute.writable_folder(Path(run_dir), options.distribute, resume) as folder:
        result = _train(source, folder, options, overwrite, log, command, resume, strategy,
                        Path(start_from) if start_from else None)
    return replace(result, run_dir=Path(run_dir))


def _train(source, run_dir: Path, options: TrainOptions, overwrite: bool, log, command, resume: bool,
           strategy, start_from: Path | None = None) -> RunResult:
    checkpoint = Checkpoint(run_dir)
    clock = _Clock(log, (checkpoint.state() or {}).get("elapsed_seconds", 0.0) if resume else 0.0)
    log = clock.log
    if not resume:
        check_run_dir(run_dir, overwrite)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    dataset, options = prepare_dataset(sources, options, log)
    if start_from and not resume:
        _check_start(start_from, run_dir, dataset)
    arrays = load_arrays(dataset, options)
    sets.check_classes(dataset.val, "calibration (validation) split", sets.MIN_PER_CLASS)
    config = (_resumed_run(run_dir, dataset) if resume
              else _start_run(sources, run_dir, dataset, options, command, log, start_from))

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(options.seed)
    nets = build_nets(options, strategy)
    if strategy is not None:
        log(f"{options.distribute}: {strategy.num_replicas_in_sync} replicas, global batch {options.batch_size}")
    with distribute.scope(strategy):
        history, serving = _phases(keras, nets, arrays, options, log, clock, checkpoint, start_from)
    if strategy is not None:
        log(f"final weights fingerprint {distribute.fingerprint(serving)}")  # the same on every worker
    write_history(run_dir / "history.csv", history)
    save_keras(serving, run_dir / "best.keras")
    temperature, points, p_cal, val_auc = calibrate(serving, arrays, run_dir, options)
    write_evaluation(run_dir, arrays.y_cal, p_cal, points, temperature)
    _fit_gate(dataset, run_dir, options, log)
    _fit_domain_head(serving, dataset, arrays, run_dir, log)
    seconds = clock.elapsed()
    # Written last: a run folder is finished exactly when its config says so (run.load_run).
    write_json(run_dir / "config.json", {**config, "seconds": seconds, "finished": True})
    checkpoint.clear()
    return RunResult(run_dir, config["counts"], dataset.notes, temperature, val_auc, points, seconds)


def _phases(keras, nets, arrays, options: TrainOptions, log, clock, checkpoint: Checkpoint, start_from=None):
    """Phases 1 to 3 (phase 1 is skipped when resuming fine-tuning or starting from a run); returns the
    history and the serving net."""
    state = checkpoint.state()
    history = History(state["history"] if state else [])
    if state is None:
        if start_from:
            head_best = _start_weights(nets, start_from, arrays, options, log)
        else:
            _snap(nets, options, log)
            head_best = train_head(keras, nets, arrays, options, history, log)
        checkpoint.save({"phase": "head", "best": head_best, "history": list(history),
                         "elapsed_seconds": clock.elapsed()}, nets.net.get_weights())
    else:
        nets.net.set_weights(checkpoint.weights("last"))
        head_best = state["best"]
        log(f"resuming from the checkpoint after phase {state['phase']!r}")
    if options.fine_tune_epochs > 0 and options.fine_tune_from is not None:
        fine_tune(keras, nets, arrays, options, history, head_best, log, clock, checkpoint)
        if options.model.diagnoses and not options.diagnosis_in_fine_tuning:
            refit_diagnosis(keras, nets, arrays, options, history, log)
    return history, nets.synced()


def resume(run_dir, log=print, fine_tune_epochs: int | None = None, time_budget_minutes: float | None = None,
           distribute_as: str | None = None) -> RunResult:
    """Continue a stopped run from its last finished epoch, with the data and options it was started with.

    fine_tune_epochs and time_budget_minutes, when given, replace the run's own:
    a run that is slower than planned can be given a schedule that ends in
    its time (the cosine decay then spans the new number of epochs from the
    step it had reached). The change is recorded in the run's config.
    distribute_as, when given, replaces the run's own options.distribute
    (a run started on one machine may go on across several, and back).

    Example: resume("runs/multi")
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if config.get("finished"):
        raise RunError(f"{run_dir}: this run finished; there is nothing to resume")
    if Checkpoint(run_dir).state() is None:
        raise RunError(f"{run_dir}: no checkpoint to resume from (the run stopped before its first phase ended); "
                       "start it again")
    changes = {k: v for k, v in (("fine_tune_epochs", fine_tune_epochs), ("time_budget_minutes", time_budget_minutes))
               if v is not None and v != config["options"][k]}
    options = replace(TrainOptions.from_dict(config["options"]), **changes)
    if changes:
        log("resuming with " + ", ".join(f"{k} {config['options'][k]} -> {v}" for k, v in changes.items()))
        if distribute.is_chief(distribute_as or options.distribute):  # only the chief writes the run folder
            write_json(run_dir / "config.json", {**config, "options": asdict(options),
                                                 "resumed_with": [*config.get("resumed_with", []), changes]})
    options = replace(options, distribute=distribute_as) if distribute_as else options
    return train(config["data_paths"], run_dir, options, log=log, command=config.get("command"), resume=True)
