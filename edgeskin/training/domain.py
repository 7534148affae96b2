"""The in-model gate: a third output that says whether the network can read the image at all.

The pixel gate (runtime/gate.py) judges colour and texture statistics; this
judges what the network itself sees. On the pooled backbone features of the
run's own training images it fits a mean, a whitened principal subspace and
the overall spread, and scores an image by

    s = mean of its squared whitened coordinates (a Mahalanobis distance in the subspace)
      + its squared distance from the mean over the average one (every direction, the
        residual ones included),

both about 1 for a training image. The threshold lets DOMAIN_PASS of the
calibration pool (validation images the fit never saw, at phone JPEG
qualities) through. In the graph, s becomes a logit (s - threshold) * gain
and a two-way softmax, [usable, out_of_domain], so that MediaPipe, a web
page or an app reads the verdict like any other head, with no code ported.

Everything is a sum of squares of a centred or projected vector, never a
difference of large sums, so the int8 model keeps the score's precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOMAIN_FILE = "domain.npz"
USABLE_LABELS = ("usable", "out_of_domain")
COMPONENTS = 128
DOMAIN_PASS = 0.995
# The logit moves by 10 across one threshold's width: wide enough that a site
# can move its threshold on the out_of_domain probability (calibrate
# --refit-gate) between about 0.5x and 1.5x the fitted score.
GAIN_WIDTHS = 10.0


@dataclass(frozen=True)
class DomainHead:
    mean: np.ndarray  # (d,) pooled-feature mean of the training images
    whiten: np.ndarray  # (d, k) principal directions over the square root of their variances
    spread: float  # mean squared distance of a training image from the mean
    threshold: float  # on the score s
    gain: float

    def score(self, features: np.ndarray) -> np.ndarray:
        c = np.asarray(features, dtype=np.float64) - self.mean
        z = c @ self.whiten
        return (z**2).mean(axis=1) + (c**2).sum(axis=1) / self.spread

    def out_of_domain_probability(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.score(features) - self.threshold) * self.gain))

    def save(self, path: Path) -> None:
        tmp = Path(path).with_name(Path(path).stem + ".tmp.npz")
        np.savez(tmp, mean=self.mean, whiten=self.whiten, spread=self.spread, threshold=self.threshold, gain=self.gain)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "DomainHead":
        with np.load(path) as f:
            return cls(f["mean"], f["whiten"], float(f["spread"]), float(f["threshold"]), float(f["gain"]))


def fit(train_features: np.ndarray, pool_features: np.ndarray, components: int = COMPONENTS,
        pass_rate: float = DOMAIN_PASS) -> tuple[DomainHead, dict]:
    """Fit on the training images' pooled features; set the threshold on the calibration pool's."""
    f = np.asarray(train_features, dtype=np.float64)
    k = min(components, f.shape[0] - 1, f.shape[1])
    mean = f.mean(axis=0)
    c = f - mean
    variances, vectors = np.linalg.eigh(c.T @ c / (len(f) - 1))
    top = np.argsort(variances)[::-1][:k]
    # A floor on the variances: a direction the training images hardly use
    # must not make a tiny deviation look enormous.
    floor = 1e-3 * variances[top[0]]
    whiten = vectors[:, top] / np.sqrt(np.maximum(variances[top], floor))
    spread = float((c**2).sum(axis=1).mean())
    partial = DomainHead(mean, whiten, spread, 0.0, 1.0)
    threshold = float(np.quantile(partial.score(pool_features), pass_rate))
    head = DomainHead(mean, whiten, spread, threshold, GAIN_WIDTHS / threshold)
    rates = {"components": int(k), "threshold": threshold,
             "training_pass_rate": float(np.mean(head.score(f) < threshold)),
             "calibration_pass_rate": float(np.mean(head.score(pool_features) < threshold)),
             "training_images": int(len(f)), "calibration_images": int(len(pool_features))}
    return head, rates


def attach(serving, head: DomainHead):
    """The serving model with a third output, "usable": softmax([0, (s - threshold) * gain]) = [usable, out_of_domain]."""
    import keras

    pooled = serving.get_layer("pool").output
    d, k = head.whiten.shape
    centred = keras.layers.Rescaling(1.0, offset=(-head.mean).astype("float32"), name="domain_centre")(pooled)
    project = keras.layers.Dense(k, use_bias=False, name="domain_project")
    z = project(centred)
    squares = keras.layers.Concatenate(name="domain_squares")([
        keras.layers.Multiply(name="domain_z2")([z, z]), keras.layers.Multiply(name="domain_c2")([centred, centred])])
    logit_layer = keras.layers.Dense(1, name="domain_logit")
    logit = logit_layer(squares)
    verdict = keras.layers.Dense(len(USABLE_LABELS), activation="softmax", name="usable")
    usable = verdict(logit)
    project.set_weights([head.whiten.astype("float32")])
    weights = np.concatenate([np.full(k, 1.0 / k), np.full(d, 1.0 / head.spread)]) * head.gain
    logit_layer.set_weights([weights[:, None].astype("float32"), np.array([-head.threshold * head.gain], "float32")])
    verdict.set_weights([np.array([[0.0, 1.0]], "float32"), np.zeros(2, "float32")])
    outputs = serving.outputs if isinstance(serving.outputs, list) else [serving.outputs]
    return keras.Model(serving.input, [*outputs, usable], name=serving.name)


def features(serving, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Pooled backbone features of a batch of (n, size, size, 3) uint8 images."""
    import keras

    extractor = keras.Model(serving.input, serving.get_layer("pool").output)
    return extractor.predict(images, batch_size=batch_size, verbose=0)


def fit_on_images(serving, train_samples, pool_images: np.ndarray, limit: int = 3000, seed: int = 0):
    """fit() on the pooled features of (up to limit of) a run's training images and of its calibration pool.

    A few thousand images pin down the mean and the first principal
    directions; all 11,000 would only triple the cost.
    """
    from edgeskin.data import sets

    size = int(serving.input_shape[1])
    pick = np.random.default_rng(seed).permutation(len(train_samples))[:limit]
    images = sets.load_images([train_samples[i] for i in sorted(pick)], size)
    return fit(features(serving, images), features(serving, pool_images))
