"""Training images read from disk batch by batch, for sets too large to decode into memory at once.

The in-memory path decodes every training image once into one array
(arrays.load_arrays). The streamed path keeps only the file list
(DiskImages) and decodes, harmonizes, augments and batches each batch when
it is needed, in a tf.data pipeline with a bounded prefetch (StreamBatches),
so memory does not grow with the set. Both paths call the same functions
(sets.load_images, augment.harmonize, augment.augment_batch) with the same
seeds per (seed, epoch, batch), so they feed the network the same pixels.

The cached-feature phases (1 and 3) stream too: augmented_features pushes the
images through the frozen backbone a chunk at a time and writes the features
into a memory-mapped file.

What stays in memory: the calibration pool (validation at three JPEG
qualities, arrays.calibration_pool) and the frozen features while the heads
fit on them (1,280 floats, 5 KB, per image and copy; 77 KB of pixels at 160 px).
"""

from __future__ import annotations

import tempfile

import numpy as np

from edgeskin.data import augment, sets
from edgeskin.training.options import TrainOptions

# input="auto" streams when the decoded training images would take more than
# this. Below it, memory is faster (every epoch would otherwise decode every
# file again; scripts/bench_streaming.py measures by how much) and the
# shipped runs (13,000 images at 160 px: 1.0 GB) keep their in-memory path.
# 4 GiB leaves room for TensorFlow, the calibration pool and the gate on a
# 16 GB machine; above it (the 80,000-image archive at 160 px: 6.1 GB) the
# set would not fit beside them.
AUTO_MEMORY_BYTES = 4 * 2**30
GATE_SAMPLE = 4000  # training images the gate is fitted on when the set is streamed (gate_samples)
FEATURE_CHUNK = 512  # images per backbone pass in augmented_features: a multiple of its batch size 64


class DiskImages:
    """The harmonized training images, decoded from their files when indexed.

    Behaves as the in-memory array does where training reads it: len(x),
    x.shape, and x[indices] -> a (k, size, size, 3) uint8 array.
    """

    def __init__(self, samples, size: int, augmentation: augment.AugmentOptions, workers: int = 2):
        self.samples, self.size, self.augmentation, self.workers = tuple(samples), size, augmentation, workers

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.samples), self.size, self.size, 3)

    def __getitem__(self, idx) -> np.ndarray:
        chosen = np.arange(len(self.samples))[idx]
        if np.ndim(chosen) == 0:
            return self[[int(chosen)]][0]
        x = sets.load_images([self.samples[i] for i in chosen], self.size, workers=self.workers)
        return augment.harmonize(x, self.augmentation)


def input_mode(options: TrainOptions, n_train: int) -> str:
    """"memory" or "stream": options.input, or for "auto" the decoded set's size against AUTO_MEMORY_BYTES."""
    if options.input != "auto":
        return options.input
    return "stream" if n_train * options.fit_size ** 2 * 3 > AUTO_MEMORY_BYTES else "memory"


def training_images(samples, options: TrainOptions):
    """The training images as fine-tuning reads them: one decoded array, or DiskImages."""
    if input_mode(options, len(samples)) == "stream":
        return DiskImages(samples, options.fit_size, options.augmentation)
    return augment.harmonize(sets.load_images(samples, options.fit_size), options.augmentation)


def gate_samples(samples, options: TrainOptions) -> tuple:
    """The training images the input gate is fitted on: all of them, or a seeded GATE_SAMPLE of a streamed set.

    The gate (training/gate.py) decodes its images at once, twice (as stored
    and at q75); its quantiles, and the mean and covariance of its 28 colour
    and texture features, are estimated closely from a few thousand images.
    """
    samples = tuple(samples)
    if input_mode(options, len(samples)) == "memory" or len(samples) <= GATE_SAMPLE:
        return samples
    keep = np.sort(np.random.default_rng((options.seed, 17)).choice(len(samples), GATE_SAMPLE, replace=False))
    return tuple(samples[i] for i in keep)


def augmented_features(features, images, rng: np.random.Generator, augmentation, copies: int) -> np.ndarray:
    """features(augmented images) of `copies` augmented copies of images, stacked copy after copy.

    An in-memory array is augmented whole, as it always was. DiskImages go a
    chunk at a time into a memory-mapped temporary file (deleted when the
    array is dropped). augment_batch draws from rng image after image, and
    chunks are multiples of the backbone's batch, so both give the same values.
    """
    if isinstance(images, np.ndarray):
        return np.concatenate([features(augment.augment_batch(images, rng, augmentation)) for _ in range(copies)])
    n, out = len(images), None
    for c in range(copies):
        for start in range(0, n, FEATURE_CHUNK):
            f = features(augment.augment_batch(images[start:start + FEATURE_CHUNK], rng, augmentation))
            if out is None:
                out = np.memmap(tempfile.TemporaryFile(), dtype=f.dtype, mode="w+", shape=(copies * n,) + f.shape[1:])
            out[c * n + start:c * n + start + len(f)] = f
    return out


def batch(arrays, options: TrainOptions, epoch: int, i: int, shard: tuple[int, int] = (0, 1)):
    """Batch i of an epoch, augmented: (x, y, w) exactly as arrays.augmented_batches builds it.

    The order and the augmentation depend only on (seed, epoch, i). With
    shard (k, n) of n > 1 workers, worker k takes the k-th of n equal slices
    of the global batch and draws its own augmentation, seeded (seed, epoch, i, k).
    """
    order = np.random.default_rng((options.seed, epoch)).permutation(len(arrays.y_train))
    idx = order[i * options.batch_size:(i + 1) * options.batch_size]
    k, n = shard
    seed = (options.seed, epoch, i)
    if n > 1:
        idx, seed = np.array_split(idx, n)[k], seed + (k,)
    x = augment.augment_batch(arrays.x_train[idx], np.random.default_rng(seed), options.augmentation)
    y, w = arrays.targets(idx)
    return x.astype(np.float32), y, w


class StreamBatches:
    """Fine-tuning's batches as a tf.data pipeline: decode and augment on two threads, two batches ahead.

    Without a strategy the batches are the in-memory path's, the last short
    one included. With one, options.batch_size is the global batch: each
    worker decodes only its slice, split into per-replica batches, and the
    short last batch is dropped so that every replica steps together.
    """

    def __init__(self, arrays, options: TrainOptions, strategy=None):
        self.arrays, self.options, self.strategy, self.epoch = arrays, options, strategy, 0
        n, b = len(arrays.y_train), options.batch_size
        if strategy is not None and b % strategy.num_replicas_in_sync:
            raise ValueError(f"the batch size {b} is the global batch: it must divide among "
                             f"{strategy.num_replicas_in_sync} replicas")
        self.steps = n // b if strategy is not None else -(-n // b)
        if self.steps < 1:
            raise ValueError(f"{n} training images make no full batch of {b}")

    def __len__(self) -> int:
        return self.steps

    def start_at(self, epoch: int) -> None:
        self.epoch = epoch

    def fit_arguments(self, epochs: int) -> dict:
        """What model.fit takes: the batches of epochs self.epoch .. epochs - 1, one iterator across them."""
        if self.strategy is None:
            return {"x": self.dataset(epochs), "steps_per_epoch": self.steps}
        return {"x": self.strategy.distribute_datasets_from_function(lambda ctx: self._worker(ctx, epochs)),
                "steps_per_epoch": self.steps}

    def _worker(self, ctx, epochs: int):
        per_replica = ctx.get_per_replica_batch_size(self.options.batch_size)  # raises unless it divides
        data = self.dataset(epochs, (ctx.input_pipeline_id, ctx.num_input_pipelines))
        return data.unbatch().batch(per_replica, drop_remainder=True)

    def dataset(self, epochs: int, shard: tuple[int, int] = (0, 1)):
        import tensorflow as tf

        d = self.arrays.d_train.shape[1]

        def load(k):
            x, y, w = batch(self.arrays, self.options, *divmod(int(k), self.steps), shard)
            return (x, y, w) if not d else (x, *y, *w)

        size = self.options.fit_size
        shapes = [(None, size, size, 3), (None,), (None,)]  # x, y, w; or x, y, dx, w, dx's w
        shapes = shapes if not d else shapes[:2] + [(None, d), (None,), (None,)]

        def loaded(k):
            out = tf.numpy_function(load, [k], [tf.float32] * len(shapes), stateful=False)
            for t, s in zip(out, shapes):
                t.set_shape(s)
            return tuple(out) if not d else (out[0], (out[1], out[2]), (out[3], out[4]))

        data = tf.data.Dataset.range(self.epoch * self.steps, epochs * self.steps)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded above
        return data.map(loaded, num_parallel_calls=2, deterministic=True).prefetch(2).with_options(options)
