"""The decoded images of a run, their targets and loss weights, and the augmented batches of fine-tuning."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from edgeskin.data import augment, perturb, sets
from edgeskin.training import streaming
from edgeskin.training.options import TrainOptions


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


@dataclass(frozen=True)
class Arrays:
    """The decoded images of one run: harmonized training images and the calibration pool."""

    x_train: np.ndarray  # or streaming.DiskImages, which decode when indexed
    y_train: np.ndarray
    w_train: np.ndarray  # loss weight per training image (sample_weights)
    d_train: np.ndarray  # class-weighted one-hot diagnosis targets (zeros: no diagnosis)
    x_cal: np.ndarray  # every validation image at each deployment quality
    y_cal: np.ndarray
    dx_cal: np.ndarray  # diagnosis index per pool image, -1 where none
    source_cal: np.ndarray  # source name per pool image

    def epoch_view(self, quality: int = 75, qualities=perturb.DEPLOYMENT_QUALITIES) -> slice:
        """The pool's images at one quality: what each epoch is judged on.

        The pool holds every validation image once per deployment quality;
        one copy ranks epochs as well as all three, at a third of the cost
        of a pass over the pool at full size after every epoch.
        """
        n = len(self.y_cal) // len(qualities)
        i = qualities.index(quality) if quality in qualities else 0
        return slice(i * n, (i + 1) * n) if len(qualities) > 1 else slice(None)

    def log_prior(self) -> np.ndarray:
        """log of each diagnosis's share of the training images that have one (balanced softmax).

        A diagnosis no training image has gets 0, as if it were certain: the
        loss then pushes its raw logit down like any wrong class's, where a
        very negative prior would leave it untouched and, at inference
        (raw logits, no prior), the most probable diagnosis of every image.
        """
        counts = (self.d_train > 0).sum(axis=0).astype(np.float64)
        share = counts / max(counts.sum(), 1.0)
        return np.where(counts > 0, np.log(np.maximum(share, 1e-12)), 0.0).astype(np.float32)

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


def load_arrays(dataset: sets.Dataset, options: TrainOptions) -> Arrays:
    size, diagnoses, copies = options.model.image_size, options.model.diagnoses, len(options.calibration_qualities)
    x_train = streaming.training_images(dataset.train, options)  # an array, or DiskImages that decode when indexed
    # The balanced softmax takes the prior into its logits, so its targets stay unweighted.
    weighting = options.diagnosis_weighting if options.diagnosis_loss == "weighted" else "none"
    y_train = np.array([s.label for s in dataset.train], dtype=np.int64)
    x_cal, y_cal = calibration_pool(dataset.val, size, options.calibration_qualities)
    dx_cal = np.array([diagnoses.index(s.dx) if s.dx and diagnoses else -1 for s in dataset.val] * copies, dtype=np.int64)
    return Arrays(x_train, y_train, sample_weights(dataset.train, options.class_weights),
                   diagnosis_targets(dataset.train, diagnoses, weighting), x_cal, y_cal, dx_cal,
                   np.array([s.source for s in dataset.val] * copies))


def augmented_batches(keras, arrays: Arrays, options: TrainOptions):
    """Freshly augmented training batches for every epoch, built on worker threads."""

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            # Pillow releases the GIL while it encodes and decodes JPEGs, so
            # threads overlap augmentation with the network's own work.
            super().__init__(workers=2, use_multiprocessing=False)
            self.start_at(0)

        def start_at(self, epoch: int) -> None:
            """Each epoch's order and augmentation depend only on (seed, epoch): a resumed run draws the same."""
            self.epoch = epoch
            self.order = np.random.default_rng((options.seed, epoch)).permutation(len(arrays.y_train))

        def __len__(self):
            return int(np.ceil(len(arrays.y_train) / options.batch_size))

        def __getitem__(self, i):
            idx = self.order[i * options.batch_size:(i + 1) * options.batch_size]
            rng = np.random.default_rng((options.seed, self.epoch, i))
            x = augment.augment_batch(arrays.x_train[idx], rng, options.augmentation)
            y, w = arrays.targets(idx)
            return x.astype(np.float32), y, w

        def on_epoch_end(self):
            self.start_at(self.epoch + 1)

    return Batches()
