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
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeskin import __version__
from edgeskin.data import augment
from edgeskin.runtime import calibration
from edgeskin.data import dedup, perturb, sets
from edgeskin.training import model as model_lib

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
    # The diagnosis head's share of the loss: below the primary decision's,
    # so that naming the diagnosis never costs the benign/malignant ranking.
    diagnosis_loss_weight: float = 0.5
    # How each diagnosis is weighted: "inverse" frequency, its "sqrt", or "none".
    diagnosis_weighting: str = "inverse"
    clipnorm: float | None = None  # gradient-norm clipping while fine-tuning
    # Stop fine-tuning before the epoch that would end past this many minutes
    # from the start of the run (None: no limit). The epochs run are recorded.
    time_budget_minutes: float | None = None
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
        if self.diagnosis_weighting not in ("inverse", "sqrt", "none"):
            raise ValueError(f"diagnosis_weighting must be inverse, sqrt or none; got {self.diagnosis_weighting!r}")
        if self.clipnorm is not None and not self.clipnorm > 0:
            raise ValueError(f"clipnorm must be positive, got {self.clipnorm}")
        if not self.diagnosis_loss_weight >= 0:
            raise ValueError(f"diagnosis_loss_weight must be >= 0, got {self.diagnosis_loss_weight}")
        if self.time_budget_minutes is not None and not self.time_budget_minutes > 0:
            raise ValueError(f"time_budget_minutes must be positive, got {self.time_budget_minutes}")
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


def _validation_callback(keras, predict, arrays: "_Arrays", keep_model, patience, start_best=-np.inf,
                         start_weights=None, deadline: float | None = None):
    """Early stopping and best-weights selection on validation ROC AUC.

    AUC, not accuracy: accuracy rewards a threshold that the calibration step
    will replace anyway, while AUC measures the ranking it keeps. The
    diagnosis head's balanced accuracy is logged, but never chooses the epoch:
    the benign/malignant decision is the primary one. With a deadline (a
    time.time() value), training stops before an epoch that would end past it.
    """
    y_val = arrays.y_cal

    class ValidationAUC(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = start_best
            self.best_weights = start_weights
            self.wait = 0
            self.started = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            outputs = predict()
            z = model_lib.malignant_logits(outputs)
            logs["val_auc"] = _auc(z, y_val)
            logs["val_loss"] = calibration.nll(z, y_val)
            if isinstance(outputs, (list, tuple)) and len(outputs) > 1:
                logs["val_dx_balanced_accuracy"] = diagnosis_report(outputs[1], arrays.dx_cal)["balanced_accuracy"]
            if deadline is not None and time.time() + (time.time() - self.started) > deadline:
                self.model.stop_training = True
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


def sample_weights(samples, on: bool) -> np.ndarray:
    """One loss weight per training image, mean 1.

    Within each source the two classes weigh the same, so a source's own
    prevalence (HAM10000 is 82% benign, isic-binary 55%) can never become a
    cue for the label; across sources, each source's total weight grows with
    the square root of its size, so the largest set leads without drowning
    the others. One source alone: plain class balancing.
    """
    if not on:
        return np.ones(len(samples), dtype=np.float32)
    cells = Counter((s.source, s.label) for s in samples)
    per_source = Counter(s.source for s in samples)
    total = sum(np.sqrt(n) for n in per_source.values())
    w = np.array([np.sqrt(per_source[s.source]) / total / sum(1 for k in range(2) if cells[(s.source, k)])
                  / cells[(s.source, s.label)] for s in samples])
    return (w * len(samples) / w.sum()).astype(np.float32)


def diagnosis_targets(samples, diagnoses: tuple[str, ...], weighting: str = "inverse") -> np.ndarray:
    """Class-weighted one-hot diagnosis targets; all zeros for an image with no diagnosis.

    A zero row gives zero cross-entropy, so images without a diagnosis train
    only the benign/malignant head. Each diagnosis is weighted by its inverse
    frequency, so the rare ones (dermatofibroma: about 1% of HAM10000) count
    as much as naevi in total: balanced accuracy is the metric that matters.
    """
    y = np.zeros((len(samples), len(diagnoses)), dtype=np.float32)
    if not diagnoses:
        return y
    index = [diagnoses.index(s.dx) if s.dx else -1 for s in samples]
    counts = Counter(i for i in index if i >= 0)
    power = {"inverse": 1.0, "sqrt": 0.5, "none": 0.0}[weighting]
    scale = {i: (1.0 / n) ** power for i, n in counts.items()}
    mean = sum(scale[i] * n for i, n in counts.items()) / sum(counts.values())
    for row, i in enumerate(index):
        if i >= 0:
            y[row, i] = scale[i] / mean
    return y


def diagnosis_report(probabilities, dx_index) -> dict:
    """Balanced accuracy, top-3 accuracy and per-class recall on the images that have a diagnosis (index >= 0)."""
    dx_index = np.asarray(dx_index)
    known = dx_index >= 0
    if not known.any():
        return {"images": 0, "balanced_accuracy": float("nan"), "top3_accuracy": float("nan")}
    from edgeskin.reporting import metrics

    p, d = np.asarray(probabilities)[known], dx_index[known]
    pred = p.argmax(axis=1)
    recalls = {int(k): float(np.mean(pred[d == k] == k)) for k in np.unique(d)}
    return {"images": int(known.sum()), "balanced_accuracy": metrics.balanced_accuracy(d, pred),
            "top3_accuracy": float(np.mean(metrics.top_k_hits(p, d, 3))), "recall": recalls}


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
    w_train: np.ndarray  # loss weight per training image (sample_weights)
    d_train: np.ndarray  # class-weighted one-hot diagnosis targets (zeros: no diagnosis)
    x_cal: np.ndarray  # every validation image at each deployment quality
    y_cal: np.ndarray
    dx_cal: np.ndarray  # diagnosis index per pool image, -1 where none
    source_cal: np.ndarray  # source name per pool image

    def targets(self, idx=slice(None), copies: int = 1):
        """The training targets and loss weights for the model's outputs (one or two)."""
        y = np.tile(self.y_train[idx], copies).astype(np.float32)
        w = np.tile(self.w_train[idx], copies)
        if not self.d_train.shape[1]:
            return y, w
        return (y, np.tile(self.d_train[idx], (copies, 1))), (w, np.ones_like(w))


def calibration_pool(samples, size: int, qualities=perturb.DEPLOYMENT_QUALITIES) -> tuple[np.ndarray, np.ndarray]:
    """The validation images as deployed images are compressed, with their labels.

    Shared with export, so the int8 model's operating points are re-derived
    on exactly the images the float model's were chosen on.
    """
    x = sets.load_images(samples, size)
    y = np.array([s.label for s in samples], dtype=np.int64)
    return perturb.deployment_pool(x, qualities), np.tile(y, len(qualities))


def _load_arrays(dataset: sets.Dataset, options: TrainOptions) -> _Arrays:
    size, diagnoses, copies = options.model.image_size, options.model.diagnoses, len(options.calibration_qualities)
    x_train = augment.harmonize(sets.load_images(dataset.train, size), options.augmentation)
    y_train = np.array([s.label for s in dataset.train], dtype=np.int64)
    x_cal, y_cal = calibration_pool(dataset.val, size, options.calibration_qualities)
    dx_cal = np.array([diagnoses.index(s.dx) if s.dx and diagnoses else -1 for s in dataset.val] * copies, dtype=np.int64)
    return _Arrays(x_train, y_train, sample_weights(dataset.train, options.class_weights),
                   diagnosis_targets(dataset.train, diagnoses, options.diagnosis_weighting), x_cal, y_cal, dx_cal,
                   np.array([s.source for s in dataset.val] * copies))


def _start_run(source, run_dir: Path, dataset: sets.Dataset, options: TrainOptions, command, log) -> dict:
    """Clear the folder, write the splits, the audit and the config; return the config."""
    _clear_run_dir(run_dir)
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
    _write_json(run_dir / "config.json", config)
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
    y_train, w_train = arrays.targets(copies=options.head_copies)
    f_cal = extractor.predict(arrays.x_cal, batch_size=64, verbose=0)
    _compile(keras, head, options.head_learning_rate, options)
    watch = _validation_callback(
        keras, lambda: head.predict(f_cal, batch_size=256, verbose=0), arrays, head, options.patience
    )
    h = head.fit(f_train, y_train, sample_weight=w_train, batch_size=options.batch_size, epochs=options.head_epochs,
                 callbacks=[watch], verbose=2, shuffle=True)
    history.add("head", h)
    head.set_weights(watch.best_weights)
    return watch


def _compile(keras, model, learning_rate, options: TrainOptions, weights=None) -> None:
    """Compile for one or both outputs; weights are the two losses' weights (default: 1 and diagnosis_loss_weight)."""
    losses = [_loss(keras, options)]
    weights = list(weights or (1.0, options.diagnosis_loss_weight))[:1 + bool(options.model.diagnoses)]
    if options.model.diagnoses:
        # from_logits with class-weighted one-hot targets: a weighted cross-entropy (see diagnosis_targets).
        losses.append(keras.losses.CategoricalCrossentropy(from_logits=True))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=options.clipnorm), loss=losses if len(losses) > 1 else losses[0],
                  loss_weights=weights if len(weights) > 1 else None)


def _batches(keras, arrays: _Arrays, options: TrainOptions):
    """Freshly augmented training batches for every epoch, built on worker threads."""

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
            y, w = arrays.targets(idx)
            return x.astype(np.float32), y, w

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng((options.seed, self.epoch)).permutation(len(arrays.y_train))

    return Batches()


def _fine_tune(keras, net, backbone, arrays: _Arrays, options: TrainOptions, history: _History, watch, log,
               started: float) -> None:
    """Phase 2: fine-tune the top blocks at a low learning rate, for the benign/malignant decision only.

    It starts from the trained head, so the first gradients are not random
    noise, and keeps the head's best weights unless an epoch beats them on
    the calibration pool. The learning rate warms up over the first epoch:
    Adam's first steps move every weight by the full learning rate whatever
    its gradient: without the warm-up the pooled features' mean fell from
    0.49 to 0.09 within ten steps at 1e-4. The diagnosis
    loss is switched off here: let through the backbone, its rare, heavily
    weighted classes drove the features to saturation (pooled mean 0.5 -> 5
    in five SGD steps) and the validation AUC from 0.87 to 0.68 in two epochs;
    the diagnosis head is refitted on the fine-tuned features instead (phase 3).
    """
    trained = model_lib.set_fine_tuning(backbone, options.fine_tune_from)
    log(f"phase 2: fine-tuning {trained} backbone layers from {options.fine_tune_from}")
    batches = _batches(keras, arrays, options)
    schedule = keras.optimizers.schedules.CosineDecay(
        options.fine_tune_learning_rate / 100, len(batches) * options.fine_tune_epochs, alpha=0.05,
        warmup_target=options.fine_tune_learning_rate, warmup_steps=len(batches))
    _compile(keras, net, schedule, options, weights=(1.0, 0.0))
    deadline = started + 60 * options.time_budget_minutes if options.time_budget_minutes else None
    watch = _validation_callback(
        keras, lambda: net.predict(arrays.x_cal, batch_size=64, verbose=0), arrays, net,
        options.patience, start_best=watch.best, start_weights=net.get_weights(), deadline=deadline,
    )
    h = net.fit(batches, epochs=options.fine_tune_epochs, callbacks=[watch], verbose=2)
    history.add("fine_tune", h)
    net.set_weights(watch.best_weights)


def _refit_diagnosis(keras, net, head, arrays: _Arrays, options: TrainOptions, history: _History, log) -> None:
    """Phase 3: the diagnosis head again, on cached features of the fine-tuned backbone.

    Fine-tuning moved the features under the head trained in phase 1, so it
    is refitted (the benign/malignant layer frozen) on one augmented copy of
    the training set, keeping the epoch with the best balanced accuracy on
    the calibration pool's images that have a diagnosis.
    """
    log("phase 3: diagnosis head on the fine-tuned features")
    extractor = model_lib.feature_extractor(net)
    rng = np.random.default_rng((options.seed, 3))
    f_train = extractor.predict(augment.augment_batch(arrays.x_train, rng, options.augmentation), batch_size=64, verbose=0)
    f_cal = extractor.predict(arrays.x_cal, batch_size=64, verbose=0)
    head.get_layer("logit").trainable = False
    _compile(keras, head, options.head_learning_rate, options, weights=(0.0, 1.0))
    y, w = arrays.targets()
    watch = _diagnosis_callback(keras, lambda: head.predict(f_cal, batch_size=256, verbose=0)[1], arrays.dx_cal, head,
                                options.patience)
    h = head.fit(f_train, y, sample_weight=w, batch_size=options.batch_size, epochs=options.head_epochs,
                 callbacks=[watch], verbose=2, shuffle=True)
    history.add("diagnosis_head", h)
    head.set_weights(watch.best_weights)
    head.get_layer("logit").trainable = True


def _diagnosis_callback(keras, predict, dx_cal, keep_model, patience):
    """Early stopping and best-weights selection on the diagnosis head's balanced accuracy."""

    class DiagnosisBalancedAccuracy(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.best_weights, self.wait = -np.inf, keep_model.get_weights(), 0

        def on_epoch_end(self, epoch, logs=None):
            logs["val_dx_balanced_accuracy"] = diagnosis_report(predict(), dx_cal)["balanced_accuracy"]
            if logs["val_dx_balanced_accuracy"] > self.best:
                self.best, self.best_weights, self.wait = logs["val_dx_balanced_accuracy"], keep_model.get_weights(), 0
            else:
                self.wait += 1
                self.model.stop_training = self.wait >= patience

    return DiagnosisBalancedAccuracy()


def _calibrate(net, arrays: _Arrays, run_dir: Path, options: TrainOptions) -> tuple[float, dict, np.ndarray, float]:
    """Temperature, then thresholds on the calibrated probabilities they will be applied to.

    Both are chosen on the calibration pool, the validation split re-encoded
    the way phones save images, so they hold on a phone's JPEG.
    """
    outputs = net.predict(arrays.x_cal, batch_size=64, verbose=0)
    z = model_lib.malignant_logits(outputs).astype(np.float64)
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
        "per_source": _per_source(p, y, arrays, points, outputs, options.model.diagnoses),
        **({"diagnoses": list(options.model.diagnoses),
            "diagnosis": _json_keys(diagnosis_report(outputs[1], arrays.dx_cal), options.model.diagnoses)} if options.model.diagnoses else {}),
    })
    return temperature, points, p, val_auc


def _json_keys(report: dict, diagnoses=sets.DIAGNOSES) -> dict:
    """The report with diagnosis names, not indices, as recall keys."""
    return {**report, "recall": {diagnoses[k]: v for k, v in report.get("recall", {}).items()}}


def _per_source(p, y, arrays: _Arrays, points, outputs, diagnoses=sets.DIAGNOSES) -> dict:
    """Validation figures of each source on its own, so that a large source cannot hide a poor one."""
    screening = points[calibration.DEFAULT_OPERATING_POINT].threshold
    out = {}
    for source in sorted(set(arrays.source_cal)):
        m = arrays.source_cal == source
        row = {"images": int(m.sum()), "malignant": int(y[m].sum())}
        if 0 < y[m].sum() < m.sum():
            sens, spec = calibration.rates(p[m], y[m], screening)
            row.update(auc=_auc(p[m], y[m]), screening_sensitivity=sens, screening_specificity=spec,
                       ece=calibration.expected_calibration_error(p[m], y[m]))
        if isinstance(outputs, (list, tuple)) and len(outputs) > 1 and (arrays.dx_cal[m] >= 0).any():
            row["diagnosis"] = _json_keys(diagnosis_report(np.asarray(outputs[1])[m], arrays.dx_cal[m]), diagnoses)
        out[source] = row
    return out


def _write_evaluation(run_dir: Path, y, p, points, temperature) -> None:
    """The same evaluation that `edgeskin evaluate` writes, on the calibration
    pool, so every run can be judged without touching a test set."""
    from edgeskin.reporting.evaluate import report_files
    from edgeskin.reporting.metrics import json_safe

    report = report_files(y, p, {k: v.threshold for k, v in points.items()}, run_dir / "evaluation",
                          temperature, history=run_dir / "history.csv")
    _write_json(run_dir / "evaluation" / "metrics.json",
                json_safe({"data": {"split": "validation (calibration pool)"}, "metrics": report}))


def _fit_gate(dataset: sets.Dataset, run_dir: Path, options: TrainOptions, log) -> None:
    """The input-quality and domain gate, fitted on this run's images and saved with it (see gate.py)."""
    from edgeskin.runtime import gate as gate_lib

    gate, rates = gate_lib.fit_on_splits(dataset.train, dataset.val, options.model.image_size)
    log(f"gate: {rates['calibration_pass_rate']:.1%} of the calibration pool passes")
    _write_json(run_dir / GATE_FILE, {**gate.to_dict(), "checks": {**rates, "fitted": "at training time"}})


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
    _check_run_dir(run_dir, overwrite)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    dataset, options = _dataset(sources, options, log)
    arrays = _load_arrays(dataset, options)
    sets.check_classes(dataset.val, "calibration (validation) split", sets.MIN_PER_CLASS)
    config = _start_run(sources, run_dir, dataset, options, command, log)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(options.seed)
    net, backbone, head = model_lib.build(options.model)
    history = _History()
    watch = _train_head(keras, net, head, arrays, options, history, log)
    if options.fine_tune_epochs > 0 and options.fine_tune_from is not None:
        _fine_tune(keras, net, backbone, arrays, options, history, watch, log, started)
        if options.model.diagnoses:
            _refit_diagnosis(keras, net, head, arrays, options, history, log)
    _write_history(run_dir / "history.csv", history)
    _save_keras(net, run_dir / "best.keras")
    temperature, points, p_cal, val_auc = _calibrate(net, arrays, run_dir, options)
    _write_evaluation(run_dir, arrays.y_cal, p_cal, points, temperature)
    _fit_gate(dataset, run_dir, options, log)
    seconds = time.time() - started
    _write_json(run_dir / "config.json", {**config, "seconds": round(seconds, 1)})
    return RunResult(run_dir, config["counts"], dataset.notes, temperature, val_auc, points, seconds)

def _write_history(path: Path, rows: list[dict]) -> None:
    columns = ["phase", "epoch", "loss", "val_loss", "val_auc", "val_dx_balanced_accuracy"]
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
