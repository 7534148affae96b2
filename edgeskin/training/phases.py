"""The three training phases: the heads on cached frozen features, fine-tuning, the diagnosis head refitted."""

from __future__ import annotations

import time

import numpy as np

from edgeskin.data import augment
from edgeskin.runtime import calibration
from edgeskin.training import model as model_lib
from edgeskin.training.arrays import Arrays, augmented_batches
from edgeskin.training.options import TrainOptions
from edgeskin.training.report import auc, diagnosis_report


def _validation_callback(keras, predict, arrays: "Arrays", keep_model, patience, start_best=-np.inf,
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
            logs["val_auc"] = auc(z, y_val)
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


class History(list):
    def add(self, phase: str, h) -> None:
        self.extend({"phase": phase, "epoch": i + 1, **{k: float(v[i]) for k, v in h.history.items()}}
                    for i in range(len(h.epoch)))


def train_head(keras, net, head, arrays: Arrays, options: TrainOptions, history: History, log):
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


def fine_tune(keras, net, backbone, arrays: Arrays, options: TrainOptions, history: History, watch, log,
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
    batches = augmented_batches(keras, arrays, options)
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


def refit_diagnosis(keras, net, head, arrays: Arrays, options: TrainOptions, history: History, log) -> None:
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
