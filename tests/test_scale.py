"""Streaming input and tf.distribute (issue #19): the same pixels from disk as from memory, and
training on two replicas and on two worker processes.

The distributed runs start fresh Python processes (tests/distributed_worker.py): logical CPU
devices and MultiWorkerMirroredStrategy must both be set up before TensorFlow initialises,
which in this process it already has.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_DIAGNOSES, TINY_TRAIN_PER_CLASS, write_class_folders, write_multisource_manifest
from edgeskin.data import augment, sets, splits
from edgeskin.training import distribute, streaming
from edgeskin.training.arrays import augmented_batches, load_arrays
from edgeskin.training.options import TrainOptions

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _arrays(folder, options):
    dataset = splits.split_validation(sets.discover_many([folder]), options.val_fraction, options.seed,
                                      options.max_duplicate_distance)
    return load_arrays(dataset, options)


@pytest.fixture(params=["class folders", "manifest with diagnoses"])
def both_paths(request, tmp_path):
    # The manifest's diagnoses give the batches their second target and weight. A harmonizing
    # re-encode and a training size below the files' own exercise every step of the per-image
    # preprocessing; batch 6 leaves a short last batch.
    options = TrainOptions.for_smoke_test(batch_size=6, train_image_size=48,
                                          augmentation=augment.AugmentOptions(harmonize_quality=90))
    data = (write_class_folders(tmp_path / "set", 12) if request.param == "class folders"
            else write_multisource_manifest(tmp_path / "set", 84))
    if request.param != "class folders":
        options = replace(options, model=replace(options.model, diagnoses=TINY_DIAGNOSES))
    return (options, _arrays(data, replace(options, input="memory")), _arrays(data, replace(options, input="stream")))


def _same_batch(a, b):
    import keras

    a, b = keras.tree.flatten(a), keras.tree.flatten(b)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_streamed_batches_are_the_in_memory_batches(both_paths):
    import keras

    options, memory, disk = both_paths
    assert isinstance(memory.x_train, np.ndarray) and isinstance(disk.x_train, streaming.DiskImages)
    assert disk.x_train.shape == memory.x_train.shape
    in_memory = augmented_batches(keras, memory, options)
    streamed = streaming.StreamBatches(disk, options)
    assert len(streamed) == len(in_memory) and len(in_memory) * options.batch_size > len(memory.y_train)
    for epoch in (0, 1):  # the second epoch as a resumed run starts it
        in_memory.start_at(epoch)
        streamed.start_at(epoch)
        batches = list(streamed.dataset(epoch + 1).as_numpy_iterator())
        assert len(batches) == len(in_memory)
        for i, (x, y, w) in enumerate(batches):
            expected = in_memory[i]
            assert x.dtype == expected[0].dtype == np.float32
            _same_batch((x, y, w), expected)


def test_streamed_features_are_the_in_memory_features(both_paths, monkeypatch):
    options, memory, disk = both_paths
    monkeypatch.setattr(streaming, "FEATURE_CHUNK", 7)  # several chunks, the last one short

    def features(x):
        return x.reshape(len(x), -1)[:, ::97].astype(np.float32)

    a = streaming.augmented_features(features, memory.x_train, np.random.default_rng(3), options.augmentation, 2)
    b = streaming.augmented_features(features, disk.x_train, np.random.default_rng(3), options.augmentation, 2)
    assert isinstance(b, np.memmap) and b.shape == a.shape == (2 * len(memory.y_train), a.shape[1])
    np.testing.assert_array_equal(a, b)


def test_auto_input_streams_only_sets_too_large_for_memory():
    options = TrainOptions(train_image_size=160)
    per_image = 160 * 160 * 3
    assert streaming.input_mode(options, 13_000) == "memory"  # the shipped multi-source run: 1.0 GB
    assert streaming.input_mode(options, 80_000) == "stream"  # the archive: 6.1 GB
    assert streaming.input_mode(options, streaming.AUTO_MEMORY_BYTES // per_image + 1) == "stream"
    assert streaming.input_mode(replace(options, input="memory"), 80_000) == "memory"
    with pytest.raises(ValueError, match="input must be"):
        TrainOptions(input="disk")
    with pytest.raises(ValueError, match="multi-worker"):
        TrainOptions(distribute="multi-worker", time_budget_minutes=10)


def test_the_chief_is_named_by_tf_config(tmp_path, monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert distribute.task_of(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))[2]
    assert not distribute.task_of(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))[2]
    with_chief = {**cluster, "chief": ["127.0.0.1:3"]}
    assert not distribute.task_of(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))[2]
    for bad in (None, "{", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}})):
        with pytest.raises(distribute.DistributeError):
            distribute.task_of(bad)
    # A non-chief worker writes into a temporary folder, with a copy of what a resume reads.
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    for name in ("config.json", "checkpoint/state.json"):
        (run / name).write_text("{}")
    (run / "splits.csv").write_text("path,label,dx,group,split,source\r\n../data/a.jpg,benign,,a,train,x\r\n")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    with distribute.writable_folder(run, "multi-worker", resume=True) as folder:
        assert folder != run and (folder / "checkpoint" / "state.json").is_file()
        # The copied manifest still names the same images, from its new folder.
        path = (folder / "splits.csv").read_text().splitlines()[1].split(",")[0]
        assert Path(os.path.abspath(folder / path)) == tmp_path / "data" / "a.jpg"
    assert not folder.exists()
    with distribute.writable_folder(run, "mirrored", resume=False) as folder:
        assert folder == run


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("scale") / "data", TINY_TRAIN_PER_CLASS, seed=1)


def _worker(args, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(procs, timeout=400):
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _fingerprint(log: str) -> str:
    return [line for line in log.splitlines() if "final weights fingerprint" in line][-1].split()[-1]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_mirrored_training_on_two_logical_cpus(tiny_data, tiny_weights, tmp_path):
    log = _finish([_worker(["mirrored", tiny_data, tmp_path / "run", tiny_weights, "--logical-cpus", 2])])[0]
    assert "mirrored: 2 replicas, global batch 8" in log
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["finished"] and config["options"]["distribute"] == "mirrored"
    assert (tmp_path / "run" / "model.keras").is_file()


def test_a_streamed_set_fits_the_gate_on_a_fixed_sample(monkeypatch):
    samples = tuple(range(50))  # gate_samples only picks; any items do
    monkeypatch.setattr(streaming, "GATE_SAMPLE", 20)
    options = TrainOptions(input="stream")
    picked = streaming.gate_samples(samples, options)
    assert len(picked) == 20 and list(picked) == sorted(set(picked)) and picked == streaming.gate_samples(samples, options)
    assert streaming.gate_samples(samples, replace(options, input="memory")) == samples


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_workers_resume_a_stopped_run_as_one_network_and_the_chief_alone_writes(tiny_data, tiny_weights, tmp_path):
    # One test for both: two-worker training costs minutes on two cores, and a resume is a full training.
    run, other = tmp_path / "run", tmp_path / "other"
    stopped = _worker(["none", tiny_data, run, tiny_weights, "--die-after-epoch", 1])
    assert stopped.wait(timeout=400) == 3, stopped.communicate()[0][-3000:]
    assert json.loads((run / "checkpoint" / "state.json").read_text())["epoch"] == 1
    # The second worker reads its own copy of the stopped run, as from a cluster's shared storage: it must
    # read the checkpoint there and write nothing back.
    shutil.copytree(run, other)
    before = _snapshot(other)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    logs = _finish([_worker(["multi-worker", tiny_data, folder, tiny_weights, "--resume"],
                            {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": k}})})
                    for k, folder in enumerate((run, other))])
    assert all("multi-worker: 2 replicas, global batch 8" in log for log in logs)
    assert all("resuming fine-tuning after epoch 1" in log for log in logs)
    assert _fingerprint(logs[0]) == _fingerprint(logs[1])  # one network, trained together
    config = json.loads((run / "config.json").read_text())
    assert config["finished"] and config["options"]["distribute"] == "none"  # as started; resumed distributed
    assert (run / "model.keras").is_file() and (run / "calibration.json").is_file()
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[:2] for line in history if line.startswith("fine_tune")] == [["fine_tune", "1"], ["fine_tune", "2"]]
    assert not (run / "checkpoint").exists()
    assert _snapshot(other) == before  # the non-chief wrote nothing


def test_a_single_process_in_memory_run_keeps_its_keras_batches(both_paths):
    """The shipped path is untouched: same PyDataset as before (its results were compared bit for bit, see docs/scale.md)."""
    import keras

    from edgeskin.training import phases

    options, memory, disk = both_paths
    batches = phases.fine_tuning_batches(keras, memory, options)
    assert isinstance(batches, keras.utils.PyDataset)
    assert type(batches).__qualname__ == type(augmented_batches(keras, memory, options)).__qualname__
    assert isinstance(phases.fine_tuning_batches(keras, disk, options), streaming.StreamBatches)
    assert streaming.input_mode(TrainOptions.for_multisource(), 13_000) == "memory"


def test_multi_worker_without_tf_config_is_a_one_line_error(class_folders, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgeskin.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["train", str(class_folders), "--out", str(tmp_path / "run"),
                                       "--distribute", "multi-worker"])
    assert result.exit_code != 0
    assert "needs TF_CONFIG" in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()


def test_a_global_batch_must_divide_among_the_replicas(both_paths):
    from types import SimpleNamespace

    options, memory, _ = both_paths
    with pytest.raises(ValueError, match="must divide among 4 replicas"):
        streaming.StreamBatches(memory, options, SimpleNamespace(num_replicas_in_sync=4))  # batch 6
    assert len(streaming.StreamBatches(memory, options, SimpleNamespace(num_replicas_in_sync=3))) == len(memory.y_train) // 6
