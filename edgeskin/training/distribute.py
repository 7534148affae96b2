"""Training on several GPUs or machines with tf.distribute (docs/scale.md).

"mirrored" copies the network onto every local GPU (MirroredStrategy; with
no GPU, onto every logical CPU device, which is how the tests run it);
"multi-worker" onto every replica of the machines that TF_CONFIG names
(MultiWorkerMirroredStrategy). Every worker runs the whole of `train`:
building, compiling and fitting happen inside strategy.scope(), fine-tuning
reads per-worker shards (streaming.StreamBatches), and each worker validates
on the whole calibration pool itself, so that all of them take the same
early-stopping decisions. Only the chief writes the run folder; the others
write into a temporary folder that is deleted at the end.

options.batch_size stays the global batch (per-replica batch x replicas)
and the learning rates stay as given: a distributed run takes the same
optimisation steps as a single-process one with that batch size.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeskin.training.checkpoint import CHECKPOINT_DIR


class DistributeError(ValueError):
    """A distributed run that cannot start as configured."""


def make_strategy(name: str):
    """The tf.distribute strategy for options.distribute, or None for "none".

    Call it before TensorFlow runs anything: MultiWorkerMirroredStrategy must
    be created before the runtime starts.
    """
    if name == "none":
        return None
    if name == "multi-worker":
        task_of(os.environ.get("TF_CONFIG"))  # a clear error before TensorFlow's
    import tensorflow as tf

    if name == "multi-worker":
        _mean_scalars_across_workers()
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    return tf.distribute.MirroredStrategy(devices or [d.name for d in tf.config.list_logical_devices("CPU")])


def task_of(tf_config: str | None) -> tuple[str, int, bool]:
    """(task type, index, is chief) from a TF_CONFIG value.

    The chief is the task of type "chief", or worker 0 when the cluster has none
    (TensorFlow's own rule).
    """
    if not tf_config:
        raise DistributeError("--distribute multi-worker needs TF_CONFIG set on every worker (see docs/scale.md)")
    try:
        config = json.loads(tf_config)
        cluster, kind, index = config["cluster"], config["task"]["type"], int(config["task"].get("index", 0))
    except (ValueError, KeyError, TypeError) as exc:
        raise DistributeError(f"TF_CONFIG is not a cluster and task description ({exc})") from exc
    if kind not in cluster or not 0 <= index < len(cluster[kind]):
        raise DistributeError(f"TF_CONFIG's task {kind}:{index} is not in its cluster")
    return kind, index, kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


def is_chief(name: str) -> bool:
    """Whether this process writes the run folder: always, unless it is a non-chief multi-worker task."""
    return name != "multi-worker" or task_of(os.environ.get("TF_CONFIG"))[2]


@contextlib.contextmanager
def writable_folder(run_dir: Path, distribute: str, resume: bool):
    """The folder this process writes: run_dir on the chief, a temporary one elsewhere.

    A non-chief worker that resumes needs the stopped run's checkpoint, so
    run_dir must be readable on every worker (shared storage or a copy):
    its config, splits and checkpoint are copied into the temporary folder.
    """
    if is_chief(distribute):
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix="edgeskin-worker-") as tmp:
        tmp = Path(tmp)
        if resume:
            shutil.copy2(run_dir / "config.json", tmp / "config.json")
            _copy_manifest(run_dir / "splits.csv", tmp / "splits.csv")
            shutil.copytree(run_dir / CHECKPOINT_DIR, tmp / CHECKPOINT_DIR)
        yield tmp


def _copy_manifest(source: Path, target: Path) -> None:
    """Copy a manifest into another folder, its image paths made relative to the new one (as sets.write_manifest does)."""
    import csv

    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for row in rows[1:]:
        row[0] = os.path.relpath(os.path.abspath(os.path.join(source.parent, row[0])), os.path.abspath(target.parent))
    with open(target, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def scope(strategy):
    """strategy.scope(), or nothing without a strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def predict(model, x, batch_size: int, distribute: str):
    """model.predict(x), on this worker alone and on all of x.

    Under MultiWorkerMirroredStrategy, predict() would split x among the
    workers and return each only its share; validation and cached features
    need every image on every worker, so the model is called batch by batch
    here instead (its replicas hold the same weights).
    """
    if distribute != "multi-worker":
        return model.predict(x, batch_size=batch_size, verbose=0)
    import keras

    parts = [model(np.asarray(x[i:i + batch_size], dtype=np.float32), training=False) for i in range(0, len(x), batch_size)]
    if isinstance(parts[0], (list, tuple)):
        return [np.concatenate([keras.ops.convert_to_numpy(p[j]) for p in parts]) for j in range(len(parts[0]))]
    return np.concatenate([keras.ops.convert_to_numpy(p) for p in parts])


def fingerprint(model) -> str:
    """A short hash of a model's weights: workers that end with the same one hold the same network."""
    import hashlib

    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()[:16]


def build_for_fit(model, targets, distribute_as: str) -> None:
    """Build a just-compiled model for fit() here, under multi-worker; elsewhere leave it to fit().

    Keras 3.15's fit() first reduces one whole (x, y, weights) batch across
    the replicas to learn its shapes, and MultiWorkerMirroredStrategy cannot
    reduce a nest ("Attempt to convert a value (PerReplica...) to a Tensor").
    So the model, its metrics, losses and optimizer are built here from one
    local example, and fit() takes the strategy from the enclosing scope
    instead of the model's own record of it, which skips that reduction.
    """
    if distribute_as != "multi-worker":
        return
    y, w = targets  # arrays.targets(): the structure fit() will see, for one image
    x = np.zeros((1,) + tuple(model.input.shape[1:]), dtype=np.float32)
    model._symbolic_build(data_batch=(x, y, w))
    model._distribute_strategy = None


def _mean_scalars_across_workers() -> None:
    """Let Keras 3.15's fit() report its losses under MultiWorkerMirroredStrategy.

    fit() averages each step's logs over the replicas with
    strategy.reduce("MEAN", value, axis=0), which fails on the scalar losses
    ("Invalid reduction dimension 0 for input with 0 dimensions";
    tensorflow/tensorflow#72388). Scalars are averaged over the replicas
    (axis=None) here instead; everything else goes to Keras as before.
    """
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "edgeskin_scalars", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not trainer._collective_all_reduce_multi_worker(strategy):
            return original(values, strategy, reduction)
        import keras

        def mean(v):
            scalar = all(t.shape.rank == 0 for t in strategy.experimental_local_results(v))
            return strategy.reduce("MEAN", v, axis=None) if scalar else original(v, strategy, reduction)

        return keras.tree.map_structure(mean, values)

    reduce_per_replica.edgeskin_scalars = True
    trainer.reduce_per_replica = reduce_per_replica
