"""Training: a head on frozen features, then fine-tuning, then calibration.

A run folder holds everything a run produced:
  config.json       the options, the data source and its counts
  splits.csv        every image with its split (train / val), as a manifest
  history.csv       per-epoch loss and validation AUC for both phases
  best.keras        the best training model (one logit out)
  model.keras       the calibrated serving model ([benign, malignant] out)
  calibration.json  temperature, operating points and validation figures
  gate.json         the input-quality and domain gate fitted on the run's images
  audit/            the shortcut audit of the training images
  evaluation/       metrics and figures on the calibration pool
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeskin import __version__, augment, calibration, data, dedup, perturb
from edgeskin import model as model_lib

RUN_FILES = ("config.json", "splits.csv", "history.csv", "best.keras", "model.keras", "calibration.json", "gate.json")
AUDIT_DIR = "audit"
GATE_FILE = "gate.json"


@dataclass(frozen=True)
class TrainOptions:
    model: model_lib.ModelOptions = field(default_factory=model_lib.ModelOptions)
    seed: int = 42
    val_fraction: float = 0.2
    batch_size: int = 32
    head_epochs: int = 40
    head_learning_rate: float = 1e-3
    fine_tune_epochs: int = 25
    fine_tune_learning_rate: float = 1e-4
    # The top six inverted-residual blocks and the last 1x1 conv: the layers
    # whose features are most ImageNet-specific. On isic-binary, unfreezing
    # from block 13 (20 epochs) reached validation AUC 0.940 against 0.951
    # from block 11 (25 epochs), for about 15% less time (see README).
    fine_tune_from: str | None = "block_11_expand"
    patience: int = 5
    loss: str = "bce"  # "bce" or "focal"
    class_weights: bool = True
    augmentation: augment.AugmentOptions = field(default_factory=augment.AugmentOptions)
    head_copies: int = 4  # augmented copies of the training set whose frozen features the head trains on
    calibration_qualities: tuple[int, ...] = perturb.DEPLOYMENT_QUALITIES
    max_duplicate_distance: int = dedup.DEFAULT_MAX_DISTANCE

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.head_epochs < 1 or self.fine_tune_epochs < 0:
            raise ValueError("head_epochs must be >= 1 and fine_tune_epochs >= 0")
        if not (self.head_learning_rate > 0 and self.fine_tune_learning_rate > 0):
            raise ValueError("learning rates must be positive")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.loss not in ("bce", "focal"):
            raise ValueError(f"loss must be 'bce' or 'focal', got {self.loss!r}")
        if self.fine_tune_from is not None and self.fine_tune_from not in model_lib.FINE_TUNE_STARTS:
            raise ValueError(f"fine_tune_from must be one of {', '.join(model_lib.FINE_TUNE_STARTS)}")
        if self.head_copies < 1:
            raise ValueError(f"head_copies must be at least 1, got {self.head_copies}")
        if not self.calibration_qualities or not all(1 <= q <= 100 for q in self.calibration_qualities):
            raise ValueError(f"calibration_qualities must be JPEG qualities in [1, 100], got {self.calibration_qualities}")
        if not 0 <= self.max_duplicate_distance < dedup.HASH_SIZE**2:
            raise ValueError(f"max_duplicate_distance must lie in [0, {dedup.HASH_SIZE ** 2})")

    @classmethod
    def for_smoke_test(cls, **overrides) -> "TrainOptions":
        """A tiny, fast configuration for tests: alpha 0.35, 64 px, random init, one epoch each."""
        base = cls(
            model=model_lib.ModelOptions(image_size=64, alpha=0.35, weights="none"),
            batch_size=8,
            head_epochs=1,
            fine_tune_epochs=1,
            fine_tune_from="block_16_expand",
            patience=1,
        )
        return replace(base, **overrides)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    counts: dict
    notes: tuple[str, ...]
    temperature: float
    val_auc: float
    operating_points: dict
    seconds: float


class RunError(ValueError):
    """A run folder that cannot be written or read."""


def _auc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _validation_callback(keras, predict, y_val, keep_model, patience, start_best=-np.inf, start_weights=None):
    """Early stopping and best-weights selection on validation ROC AUC.

    AUC, not accuracy: accuracy rewards a threshold that the calibration step
    will replace anyway, while AUC measures the ranking it keeps.
    """

    class ValidationAUC(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = start_best
            self.best_weights = start_weights
            self.wait = 0

        def on_epoch_end(self, epoch, logs=None):
            z = predict()
            logs["val_auc"] = _auc(z, y_val)
            logs["val_loss"] = calibration.nll(z, y_val)
            if logs["val_auc"] > self.best:
                self.best, self.best_weights, self.wait = logs["val_auc"], keep_model.get_weights(), 0
            else:
                self.wait += 1
                if self.wait >= patience:
                    self.model.stop_training = True

    return ValidationAUC()


def _loss(keras, options: TrainOptions):
    if options.loss == "focal":
        # Focal loss down-weights easy cases, so the hard, ambiguous lesions
        # that decide the screening threshold get more of the gradient.
        return keras.losses.BinaryFocalCrossentropy(from_logits=True, gamma=2.0)
    return keras.losses.BinaryCrossentropy(from_logits=True)


def _class_weight(labels, on: bool):
    if not on:
        return None
    counts = np.bincount(labels, minlength=2)
    return {k: float(len(labels) / (2.0 * counts[k])) for k in range(2)}


def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise RunError(f"{run_dir} already holds a run ({', '.join(existing)}); choose another folder or pass --overwrite")


def _clear_run_dir(run_dir: Path) -> None:
    """Remove an old run's files before the new one writes any, so that a run
    that fails half-way never leaves new splits beside an old model."""
    import shutil

    run_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "evaluation", ignore_errors=True)
    shutil.rmtree(run_dir / AUDIT_DIR, ignore_errors=True)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _save_keras(model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    model.save(tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class _Arrays:
    """The decoded images of one run: harmonized training images and the calibration pool."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_cal: np.ndarray  # every validation image at each deployment quality
    y_cal: np.ndarray


def calibration_pool(samples, size: int, qualities=perturb.DEPLOYMENT_QUALITIES) -> tuple[np.ndarray, np.ndarray]:
    """The validation images as deployed images are compressed, with their labels.

    Shared with export, so the int8 model's operating points are re-derived
    on exactly the images the float model's were chosen on.
    """
    x = data.load_images(samples, size)
    y = np.array([s.label for s in samples], dtype=np.int64)
    return perturb.deployment_pool(x, qualities), np.tile(y, len(qualities))


def _load_arrays(dataset: data.Dataset, options: TrainOptions) -> _Arrays:
    size = options.model.image_size
    x_train = augment.harmonize(data.load_images(dataset.train, size), options.augmentation)
    y_train = np.array([s.label for s in dataset.train], dtype=np.int64)
    x_cal, y_cal = calibration_pool(dataset.val, size, options.calibration_qualities)
    return _Arrays(x_train, y_train, x_cal, y_cal)


def _start_run(source, run_dir: Path, dataset: data.Dataset, options: TrainOptions, command, log) -> dict:
    """Clear the folder, write the splits, the audit and the config; return the config."""
    _clear_run_dir(run_dir)
    data.write_manifest(run_dir / "splits.csv", {"train": dataset.train, "val": dataset.val})
    flags = _audit_training_data(dataset, run_dir / AUDIT_DIR, options, log)
    config = {
        "edgeskin_version": __version__,
        "command": command,
        "cpus": os.cpu_count(),
        "data": str(Path(source).resolve()),
        "counts": dataset.counts(),
        "notes": list(dataset.notes),
        "audit_flags": flags,
        "options": asdict(options),
    }
    _write_json(run_dir / "config.json", config)
    return config


def _audit_training_data(dataset: data.Dataset, out: Path, options: TrainOptions, log) -> list[str]:
    """Shortcut audit of the training images (train and val), kept in the run folder."""
    from edgeskin import audit

    report = audit.audit(dataset.train + dataset.val, out, seed=options.seed, n_boot=200,
                         max_distance=options.max_duplicate_distance,
                         splits={"train": dataset.train, "val": dataset.val})
    flags = [row["property"] for row in report["properties"] if row["flagged"]]
    log(f"audit: {len(flags)} propert{'y' if len(flags) == 1 else 'ies'} predict the label on their own"
        + (f": {', '.join(flags)}" if flags else "") + f" (report in {out})")
    return flags


class _History(list):
    def add(self, phase: str, h) -> None:
        self.extend({"phase": phase, "epoch": i + 1, **{k: float(v[i]) for k, v in h.history.items()}}
                    for i in range(len(h.epoch)))


def _train_head(keras, net, head, arrays: _Arrays, options: TrainOptions, history: _History, log):
    """Phase 1: the head on frozen features of several augmented copies of the training set.

    The backbone is frozen, so its features of a given image never change:
    computing them once per augmented copy lets the head train in seconds,
    and several copies keep it from learning any one copy's compression.
    """
    log(f"phase 1: head on frozen features ({options.head_copies} augmented copies of the training set)")
    extractor = model_lib.feature_extractor(net)
    rng = np.random.default_rng(options.seed)
    f_train = np.concatenate([
        extractor.predict(augment.augment_batch(arrays.x_train, rng, options.augmentation), batch_size=64, verbose=0)
        for _ in range(options.head_copies)
    ])
    y_train = np.tile(arrays.y_train, options.head_copies)
    f_cal = extractor.predict(arrays.x_cal, batch_size=64, verbose=0)
    head.compile(optimizer=keras.optimizers.Adam(options.head_learning_rate), loss=_loss(keras, options))
    watch = _validation_callback(
        keras, lambda: head.predict(f_cal, batch_size=256, verbose=0)[:, 0], arrays.y_cal, head, options.patience
    )
    h = head.fit(f_train, y_train, batch_size=options.batch_size, epochs=options.head_epochs,
                 class_weight=_class_weight(y_train, options.class_weights), callbacks=[watch], verbose=2, shuffle=True)
    history.add("head", h)
    head.set_weights(watch.best_weights)
    return watch


def _batches(keras, arrays: _Arrays, options: TrainOptions):
    """Freshly augmented training batches for every epoch, built on worker threads."""
    weights = _class_weight(arrays.y_train, options.class_weights) or {0: 1.0, 1: 1.0}
    sample_weight = np.array([weights[int(k)] for k in arrays.y_train], dtype=np.float32)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            # Pillow releases the GIL while it encodes and decodes JPEGs, so
            # threads overlap augmentation with the network's own work.
            super().__init__(workers=2, use_multiprocessing=False)
            self.epoch = 0
            self.order = np.random.default_rng((options.seed, 0)).permutation(len(arrays.y_train))

        def __len__(self):
            return int(np.ceil(len(arrays.y_train) / options.batch_size))

        def __getitem__(self, i):
            idx = self.order[i * options.batch_size:(i + 1) * options.batch_size]
            rng = np.random.default_rng((options.seed, self.epoch, i))
            x = augment.augment_batch(arrays.x_train[idx], rng, options.augmentation)
            return x.astype(np.float32), arrays.y_train[idx].astype(np.float32), sample_weight[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng((options.seed, self.epoch)).permutation(len(arrays.y_train))

    return Batches()


def _fine_tune(keras, net, backbone, arrays: _Arrays, options: TrainOptions, history: _History, watch, log) -> None:
    """Phase 2: fine-tune the top blocks at a low learning rate.

    It starts from the trained head, so the first gradients are not random
    noise, and keeps the head's best weights unless an epoch beats them on
    the calibration pool.
    """
    trained = model_lib.set_fine_tuning(backbone, options.fine_tune_from)
    log(f"phase 2: fine-tuning {trained} backbone layers from {options.fine_tune_from}")
    batches = _batches(keras, arrays, options)
    schedule = keras.optimizers.schedules.CosineDecay(
        options.fine_tune_learning_rate, len(batches) * options.fine_tune_epochs, alpha=0.05)
    net.compile(optimizer=keras.optimizers.Adam(schedule), loss=_loss(keras, options))
    watch = _validation_callback(
        keras, lambda: net.predict(arrays.x_cal, batch_size=64, verbose=0)[:, 0], arrays.y_cal, net,
        options.patience, start_best=watch.best, start_weights=net.get_weights(),
    )
    h = net.fit(batches, epochs=options.fine_tune_epochs, callbacks=[watch], verbose=2)
    history.add("fine_tune", h)
    net.set_weights(watch.best_weights)


def _calibrate(net, arrays: _Arrays, run_dir: Path, options: TrainOptions) -> tuple[float, dict, np.ndarray, float]:
    """Temperature, then thresholds on the calibrated probabilities they will be applied to.

    Both are chosen on the calibration pool, the validation split re-encoded
    the way phones save images, so they hold on a phone's JPEG.
    """
    z = net.predict(arrays.x_cal, batch_size=64, verbose=0)[:, 0].astype(np.float64)
    y = arrays.y_cal
    temperature = calibration.fit_temperature(z, y)
    p = calibration.sigmoid(z / temperature)
    points = calibration.choose_operating_points(p, y)
    _save_keras(model_lib.calibrated(net, temperature), run_dir / "model.keras")
    val_auc = _auc(z, y)
    _write_json(run_dir / "calibration.json", {
        "temperature": temperature,
        "operating_points": {k: v.to_dict() for k, v in points.items()},
        "default_operating_point": calibration.DEFAULT_OPERATING_POINT,
        "chosen_on": (f"validation split ({len(y) // len(options.calibration_qualities)} images) re-encoded at JPEG quality "
                      f"{', '.join(map(str, options.calibration_qualities))} with 4:2:0 chroma ({len(y)} images)"),
        "calibration_qualities": list(options.calibration_qualities),
        "val_auc": val_auc,
        "val_nll_before": calibration.nll(z, y),
        "val_nll_after": calibration.nll(z, y, temperature),
        "val_ece_before": calibration.expected_calibration_error(calibration.sigmoid(z), y),
        "val_ece_after": calibration.expected_calibration_error(p, y),
    })
    return temperature, points, p, val_auc


def _write_evaluation(run_dir: Path, y, p, points, temperature) -> None:
    """The same evaluation that `edgeskin evaluate` writes, on the calibration
    pool, so every run can be judged without touching a test set."""
    from edgeskin.evaluate import report_files
    from edgeskin.metrics import json_safe

    report = report_files(y, p, {k: v.threshold for k, v in points.items()}, run_dir / "evaluation",
                          temperature, history=run_dir / "history.csv")
    _write_json(run_dir / "evaluation" / "metrics.json",
                json_safe({"data": {"split": "validation (calibration pool)"}, "metrics": report}))


def _fit_gate(dataset: data.Dataset, run_dir: Path, options: TrainOptions, log) -> None:
    """The input-quality and domain gate, fitted on this run's images and saved with it (see gate.py)."""
    from edgeskin import gate as gate_lib

    gate, rates = gate_lib.fit_on_splits(dataset.train, dataset.val, options.model.image_size)
    log(f"gate: {rates['calibration_pass_rate']:.1%} of the calibration pool passes")
    _write_json(run_dir / GATE_FILE, {**gate.to_dict(), "checks": {**rates, "fitted": "at training time"}})


def train(source, run_dir, options: TrainOptions = TrainOptions(), overwrite: bool = False, log=print,
          command: str | None = None) -> RunResult:
    """Audit, train, select, calibrate and save one model into run_dir."""
    started = time.time()
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, overwrite)
    dataset = data.split_validation(data.discover(source), options.val_fraction, options.seed, options.max_duplicate_distance)
    for note in dataset.notes:
        log(note)
    log(f"train: {dataset.counts()['train']}  val: {dataset.counts()['val']}  (test/ is never read by train)")
    arrays = _load_arrays(dataset, options)
    data.check_classes(dataset.val, "calibration (validation) split", data.MIN_PER_CLASS)
    config = _start_run(source, run_dir, dataset, options, command, log)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(options.seed)
    net, backbone, head = model_lib.build(options.model)
    history = _History()
    watch = _train_head(keras, net, head, arrays, options, history, log)
    if options.fine_tune_epochs > 0 and options.fine_tune_from is not None:
        _fine_tune(keras, net, backbone, arrays, options, history, watch, log)
    _write_history(run_dir / "history.csv", history)
    _save_keras(net, run_dir / "best.keras")
    temperature, points, p_cal, val_auc = _calibrate(net, arrays, run_dir, options)
    _write_evaluation(run_dir, arrays.y_cal, p_cal, points, temperature)
    _fit_gate(dataset, run_dir, options, log)
    seconds = time.time() - started
    _write_json(run_dir / "config.json", {**config, "seconds": round(seconds, 1)})
    return RunResult(run_dir, config["counts"], dataset.notes, temperature, val_auc, points, seconds)

def _write_history(path: Path, rows: list[dict]) -> None:
    columns = ["phase", "epoch", "loss", "val_loss", "val_auc"]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def load_run(run_dir) -> dict:
    """The calibration and config of a run folder, with a clear error if it is not one."""
    run_dir = Path(run_dir)
    missing = [n for n in ("config.json", "splits.csv", "model.keras", "calibration.json") if not (run_dir / n).is_file()]
    if missing:
        raise RunError(f"{run_dir}: not a finished run folder (missing {', '.join(missing)})")
    try:
        return {
            "config": json.loads((run_dir / "config.json").read_text()),
            "calibration": json.loads((run_dir / "calibration.json").read_text()),
        }
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{run_dir}: unreadable run files ({exc})") from exc
