"""The training phases: (1) the heads on cached frozen features, (2) fine-tuning, (3) the diagnosis head refitted.

The network trains at options.fit_size and is judged at model.image_size,
the size the device uses: Nets keeps one network of each size and copies the
weights across (MobileNetV2's weights do not depend on the input size).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np

from edgeskin.runtime import calibration
from edgeskin.training import distribute, model as model_lib, quantaware, streaming
from edgeskin.training.averaging import WeightAverage, updating
from edgeskin.training.arrays import Arrays, augmented_batches
from edgeskin.training.checkpoint import Checkpoint
from edgeskin.training.options import TrainOptions
from edgeskin.training.report import auc, diagnosis_report


@dataclass
class Nets:
    net: object  # trains, at options.fit_size
    backbone: object
    head: object
    serving: object  # the same weights at model.image_size: validation and calibration use it

    def synced(self):
        if self.serving is not self.net:
            self.serving.set_weights(self.net.get_weights())
        return self.serving

    def snap_below(self, start: str | None) -> int:
        """The layers below `start` on the int8 grid (quantaware.snap_below), in both networks: the pool is
        scored by the serving one. Returns how many convolutions moved."""
        moved = quantaware.snap_below(self.backbone, start)
        self.synced()
        return moved

    def load(self, path) -> None:
        """Both networks take the weights of a saved serving network (a run's best.keras)."""
        self.serving.set_weights(model_lib.load(path).get_weights())
        if self.net is not self.serving:
            self.net.set_weights(self.serving.get_weights())


def build_nets(options: TrainOptions, strategy=None) -> Nets:
    serving, backbone, head = model_lib.build(options.model)
    if options.fit_size == options.model.image_size and strategy is None:
        return Nets(serving, backbone, head, serving)
    # Keras keeps ImageNet weights per input size and only the 224 px file is
    # here, so the smaller network takes the serving network's weights. With a
    # strategy, only the training network is distributed: the serving one
    # validates and calibrates on this worker alone.
    with distribute.scope(strategy):
        net, backbone, head = model_lib.build(replace(options.model, image_size=options.fit_size, weights="none"))
    net.set_weights(serving.get_weights())
    return Nets(net, backbone, head, serving)


class History(list):
    def add(self, phase: str, h, first_epoch: int = 0) -> None:
        self.extend({"phase": phase, "epoch": first_epoch + i + 1, **{k: float(v[i]) for k, v in h.history.items()}}
                    for i in range(len(h.epoch)))


def _watch(keras, predict, arrays: Arrays, keep_model, options: TrainOptions, start=None, deadline=None, on_epoch=None,
           average: WeightAverage | None = None):
    """Early stopping and best-weights selection on the calibration pool (its q75 copy).

    The benign/malignant ROC AUC, not accuracy: accuracy rewards a threshold
    that calibration replaces anyway, while AUC measures the ranking it keeps.
    With select_on "auc+dx" the diagnosis balanced accuracy is added, so
    neither head can improve at the other's cost unnoticed. With a deadline
    (a time.time() value), training stops before an epoch that would end
    past it. start: (best score, best weights, epochs without improvement).
    With an average, the average is what is scored and kept.
    """
    view = arrays.epoch_view()
    y_val, dx_val = arrays.y_cal[view], arrays.dx_cal[view]
    best, best_weights, wait = start or (-np.inf, None, 0)

    class Watch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.best_weights, self.wait, self.improved = best, best_weights, wait, False
            self.started = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            with average.applied() if average else nullcontext():
                score = validation_figures(predict(view), y_val, dx_val, options.select_on, logs)
                self.improved = score > self.best
                if self.improved:
                    self.best, self.best_weights, self.wait = score, keep_model.get_weights(), 0
            if not self.improved:
                self.wait += 1
            if self.wait >= options.patience or (deadline and time.time() + (time.time() - self.started) > deadline):
                self.model.stop_training = True
            if on_epoch:
                on_epoch(epoch, logs, self)

    return Watch()


def validation_figures(outputs, y_val, dx_val, select_on: str, logs: dict) -> float:
    """Put the validation figures into logs; return the score that selects epochs."""
    z = model_lib.malignant_logits(outputs)
    logs["val_auc"], logs["val_loss"] = auc(z, y_val), calibration.nll(z, y_val)
    if not (isinstance(outputs, (list, tuple)) and len(outputs) > 1):
        return logs["val_auc"]
    logs["val_dx_balanced_accuracy"] = diagnosis_report(outputs[1], dx_val)["balanced_accuracy"]
    return logs["val_auc"] + (logs["val_dx_balanced_accuracy"] if select_on == "auc+dx" else 0.0)


def score_on_pool(nets: Nets, arrays: Arrays, options: TrainOptions, logs: dict | None = None) -> float:
    """The network's score on the calibration pool's view, as epochs are selected on it (_watch); its
    figures (AUC, and the diagnosis balanced accuracy) go into logs when given."""
    view = arrays.epoch_view()
    outputs = distribute.predict(nets.synced(), arrays.x_cal[view], 64, options.distribute)
    return validation_figures(outputs, arrays.y_cal[view], arrays.dx_cal[view], options.select_on,
                              {} if logs is None else logs)


def _balanced_softmax(keras, log_prior: np.ndarray, smoothing: float):
    """Cross-entropy on logits + log(prior) (logit adjustment, Menon et al. 2021), with label smoothing.

    The loss sees the prior, so the logits themselves learn balanced
    posteriors: at inference the softmax of the raw logits ranks a rare
    dermatofibroma as fairly as a naevus, with no per-class weights (which
    reached 58x under inverse frequency). A row of zeros (an image with no
    diagnosis) costs nothing, smoothing included.
    """
    ops = keras.ops
    prior = ops.convert_to_tensor(log_prior[None].astype("float32"))
    k = float(len(log_prior))

    def diagnosis_loss(y_true, logits):
        has = ops.sum(y_true, axis=-1, keepdims=True)
        target = y_true * (1.0 - smoothing) + has * (smoothing / k)
        return -ops.sum(target * ops.log_softmax(logits + prior, axis=-1), axis=-1)

    return diagnosis_loss


def compile_heads(keras, model, learning_rate, options: TrainOptions, arrays: Arrays, weights=None) -> None:
    """Compile for one or both outputs; weights are the two losses' weights (default: 1 and diagnosis_loss_weight)."""
    if options.loss == "focal":
        # Focal loss down-weights easy cases, so the hard, ambiguous lesions
        # that decide the screening threshold get more of the gradient.
        losses = [keras.losses.BinaryFocalCrossentropy(from_logits=True, gamma=2.0)]
    else:
        losses = [keras.losses.BinaryCrossentropy(from_logits=True)]
    weights = list(weights or (1.0, options.diagnosis_loss_weight))[:1 + bool(options.model.diagnoses)]
    if options.model.diagnoses and options.diagnosis_loss == "balanced_softmax":
        losses.append(_balanced_softmax(keras, arrays.log_prior(), options.label_smoothing))
    elif options.model.diagnoses:
        # from_logits with class-weighted one-hot targets: a weighted cross-entropy (see diagnosis_targets).
        losses.append(keras.losses.CategoricalCrossentropy(from_logits=True))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=options.clipnorm),
                  loss=losses if len(losses) > 1 else losses[0], loss_weights=weights if len(weights) > 1 else None)
    distribute.build_for_fit(model, arrays.targets(slice(0, 1)), options.distribute)


def _features(extractor, x, distribute_as: str = "none", batch_size: int = 64) -> np.ndarray:
    return distribute.predict(extractor, x, batch_size, distribute_as)


def head_features(nets: Nets, arrays: Arrays, options: TrainOptions) -> tuple[np.ndarray, np.ndarray]:
    """The frozen backbone's features of options.head_copies augmented copies of the training set, and of the
    pool's epoch view (at the serving size): what phase 1 trains and judges the heads on."""
    extractor = model_lib.feature_extractor(nets.net)
    rng = np.random.default_rng(options.seed)
    f_train = streaming.augmented_features(lambda x: _features(extractor, x, options.distribute), arrays.x_train, rng,
                                           options.augmentation, options.head_copies)
    f_cal = _features(model_lib.feature_extractor(nets.serving), arrays.x_cal[arrays.epoch_view()], options.distribute)
    return f_train, f_cal


def fit_head(keras, nets: Nets, arrays: Arrays, options: TrainOptions, features, history: History) -> float:
    """The heads on cached features (head_features); keeps the best epoch's weights and returns its score."""
    f_train, f_cal = features
    y_train, w_train = arrays.targets(copies=options.head_copies)
    compile_heads(keras, nets.head, options.head_learning_rate, options, arrays)
    watch = _watch(keras, lambda view: distribute.predict(nets.head, f_cal, 256, options.distribute), arrays, nets.head,
                   options)
    h = nets.head.fit(f_train, y_train, sample_weight=w_train, batch_size=options.batch_size,
                      epochs=options.head_epochs, callbacks=[watch], verbose=2, shuffle=True)
    history.add("head", h)
    nets.head.set_weights(watch.best_weights)
    return watch.best


def train_head(keras, nets: Nets, arrays: Arrays, options: TrainOptions, history: History, log):
    """Phase 1: the heads on frozen features of augmented copies of the training set.

    The backbone is frozen, so its features of a given image never change:
    computing them once per augmented copy lets the heads train in seconds,
    and several copies keep them from learning any one copy's compression.
    """
    log(f"phase 1: heads on frozen features ({options.head_copies} augmented copies of the training set)")
    return fit_head(keras, nets, arrays, options, head_features(nets, arrays, options), history)


def fine_tune(keras, nets: Nets, arrays: Arrays, options: TrainOptions, history: History, head_best: float, log,
              clock, checkpoint: Checkpoint) -> None:
    """Phase 2: fine-tune the backbone from options.fine_tune_from, with a checkpoint after every epoch.

    It starts from the trained heads, so the first gradients are not noise,
    and keeps the heads' weights unless an epoch beats them. The learning
    rate warms up over the first epoch: Adam's first steps move every weight
    by the full learning rate whatever its gradient, and without the warm-up
    the pooled features' mean fell from 0.49 to 0.09 within ten steps at
    1e-4. With diagnosis_in_fine_tuning off, the diagnosis loss stays out:
    under inverse-frequency weights it drove the features to saturation.
    """
    trained = model_lib.set_fine_tuning(nets.backbone, options.fine_tune_from)
    log(f"phase 2: fine-tuning {trained} backbone layers from {options.fine_tune_from} at {options.fit_size} px")
    batches = fine_tuning_batches(keras, arrays, options)
    schedule = keras.optimizers.schedules.CosineDecay(
        options.fine_tune_learning_rate / 100, len(batches) * options.fine_tune_epochs, alpha=0.05,
        warmup_target=options.fine_tune_learning_rate, warmup_steps=len(batches))
    dx_weight = options.diagnosis_loss_weight if options.diagnosis_in_fine_tuning else 0.0
    compile_heads(keras, nets.net, schedule, options, arrays, weights=(1.0, dx_weight))
    first, start = _resume_point(nets, checkpoint, head_best, batches, options, log)
    deadline = clock.started + 60 * options.time_budget_minutes if options.time_budget_minutes else None
    average = _average(nets, options, checkpoint, first, log)

    def save(epoch, logs, watch):
        history.append({"phase": "fine_tune", "epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        checkpoint.save({"phase": "fine_tune", "epoch": epoch + 1, "best": watch.best, "wait": watch.wait,
                         "history": list(history), "elapsed_seconds": clock.elapsed()},
                        nets.net.get_weights(), [v.numpy() for v in nets.net.optimizer.variables],
                        watch.best_weights if watch.improved else None, **({"ema": average.values} if average else {}))

    watch = _watch(keras, lambda view: distribute.predict(nets.synced(), arrays.x_cal[view], 64, options.distribute), arrays,
                   nets.net, options, start=start, deadline=deadline, on_epoch=save, average=average)
    if first < options.fine_tune_epochs:
        fit_input = batches.fit_arguments(options.fine_tune_epochs) if hasattr(batches, "fit_arguments") else {"x": batches}
        # The average is updated before the watch scores it at each epoch's end.
        callbacks = [updating(keras, average), watch] if average else [watch]
        nets.net.fit(**fit_input, epochs=options.fine_tune_epochs, initial_epoch=first, callbacks=callbacks, verbose=2)
    nets.net.set_weights(watch.best_weights)


def _average(nets: Nets, options: TrainOptions, checkpoint: Checkpoint, first: int, log) -> WeightAverage | None:
    """The EMA of the fine-tuned weights (options.ema_momentum), or None; a resumed run takes back its own."""
    if options.ema_momentum is None:
        return None
    values = checkpoint.weights("ema") if first and checkpoint.has("ema") else None
    if first and values is None:
        log("the checkpoint holds no weight average: it starts again from the last epoch's weights")
    log(f"the EMA of the fine-tuned weights (momentum {options.ema_momentum}) is scored and kept in their place")
    return WeightAverage(nets.net.trainable_variables, options.ema_momentum, values)


def fine_tuning_batches(keras, arrays: Arrays, options: TrainOptions):
    """Fine-tuning's batches: the in-memory PyDataset of a single process, else the tf.data pipeline."""
    if options.distribute == "none" and isinstance(arrays.x_train, np.ndarray):
        return augmented_batches(keras, arrays, options)
    import tensorflow as tf

    return streaming.StreamBatches(arrays, options, tf.distribute.get_strategy() if options.distribute != "none" else None)


def _resume_point(nets: Nets, checkpoint: Checkpoint, head_best: float, batches, options: TrainOptions, log):
    """The first epoch to run and the early-stopping state: fresh, or from the checkpoint."""
    state = checkpoint.state()
    if not state or state["phase"] != "fine_tune":
        start = nets.net.get_weights()
        # The heads' weights are the best so far until an epoch beats them: saved now, so a resume has them.
        checkpoint.save({**(state or {}), "phase": "head", "best": head_best}, start, (), best_weights=start)
        return 0, (head_best, start, 0)
    nets.net.set_weights(checkpoint.weights("last"))
    checkpoint.restore_optimizer(nets.net.optimizer, nets.net.trainable_variables)
    batches.start_at(state["epoch"])
    if checkpoint.has("best"):
        log(f"resuming fine-tuning after epoch {state['epoch']} (best so far {state['best']:.4f})")
        return state["epoch"], (state["best"], checkpoint.weights("best"), state["wait"])
    # A checkpoint from before the best weights were saved at the start: the best so far cannot be
    # restored, so the last epoch's weights and score stand in for it (said in the log and the history).
    last = state["history"][-1]
    score = last["val_auc"] + (last.get("val_dx_balanced_accuracy", 0.0) if options.select_on == "auc+dx" else 0.0)
    log(f"resuming fine-tuning after epoch {state['epoch']}: the checkpoint holds no best weights (best so far "
        f"{state['best']:.4f}, lost); epoch {state['epoch']} ({score:.4f}) stands in for them")
    return state["epoch"], (score, nets.net.get_weights(), 0)


def refit_diagnosis(keras, nets: Nets, arrays: Arrays, options: TrainOptions, history: History, log) -> None:
    """Phase 3: the diagnosis head again, on cached features of the fine-tuned backbone.

    Fine-tuning moved the features under the head trained in phase 1, so it
    is refitted (the benign/malignant layer frozen) on one augmented copy of
    the training set, keeping the epoch with the best balanced accuracy on
    the calibration pool's images that have a diagnosis.
    """
    log("phase 3: diagnosis head on the fine-tuned features")
    rng = np.random.default_rng((options.seed, 3))
    extractor = model_lib.feature_extractor(nets.net)
    f_train = streaming.augmented_features(lambda x: _features(extractor, x, options.distribute), arrays.x_train, rng,
                                           options.augmentation, 1)
    view = arrays.epoch_view()
    f_cal = _features(model_lib.feature_extractor(nets.synced()), arrays.x_cal[view], options.distribute)
    head = nets.head
    head.get_layer("logit").trainable = False
    compile_heads(keras, head, options.head_learning_rate, options, arrays, weights=(0.0, 1.0))
    y, w = arrays.targets()
    select = replace(options, select_on="auc+dx")  # the AUC term is constant here: the logit layer is frozen
    watch = _watch(keras, lambda v: distribute.predict(head, f_cal, 256, options.distribute), arrays, head, select)
    h = head.fit(f_train, y, sample_weight=w, batch_size=options.batch_size, epochs=options.head_epochs,
                 callbacks=[watch], verbose=2, shuffle=True)
    history.add("diagnosis_head", h)
    head.set_weights(watch.best_weights)
    head.get_layer("logit").trainable = True
