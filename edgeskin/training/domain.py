"""The in-model gate: a third output that says whether the network can read the image at all.

The pixel gate (runtime/gate.py) judges colour and texture statistics; this
judges what the network itself sees, at two depths, each fitted on the run's
own training images:

  early   the mean activation of block 6 (low-level texture and colour): an
          image's distance from the training images' principal subspace
          (the residual off the top components). Text, noise, flat colours,
          logos and photographs of things leave it; dermoscopy stays in it.
  late    the pooled features the heads read: a Mahalanobis distance in
          their whitened principal subspace plus the plain squared distance
          from the mean (every direction, the residual ones included).

Each branch's score is divided by its 99.5th percentile on the calibration
pool (validation images the fit never saw, at phone JPEG qualities), the
image's score is the larger of the two, and the threshold on it lets
DOMAIN_PASS of the pool through. In the graph the score becomes a logit,
(score - threshold) * gain, and a two-way softmax [usable, out_of_domain],
so MediaPipe, a web page or an app reads the verdict like any other head.

Every score is a sum of squares of a centred or projected vector, never a
difference of large sums, so the int8 model keeps its precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeskin.runtime.gate import DOMAIN_PASS
from edgeskin.training import model as model_lib

DOMAIN_FILE = "domain.npz"
USABLE_LABELS = ("usable", "out_of_domain")
EARLY_LAYER = "block_6_project_BN"
EARLY_COMPONENTS = 16
LATE_COMPONENTS = 64
# The logit moves by 10 across one threshold's width: a site can move its
# threshold on the out_of_domain probability (calibrate --refit-gate) over a
# useful range of scores before the probability saturates.
GAIN_WIDTHS = 10.0


@dataclass(frozen=True)
class Branch:
    """score = (mean(((f - mean) @ project)**2) * k_weight + sum((f - mean)**2) * c_weight), over its pool scale."""

    mean: np.ndarray  # (d,)
    project: np.ndarray  # (d, m): the residual projector (m = d) or the whitened top components (m = k)
    z_weight: float  # weight of each squared projected coordinate
    c_weight: float  # weight of each squared centred coordinate

    def raw(self, f: np.ndarray) -> np.ndarray:
        c = np.asarray(f, dtype=np.float64) - self.mean
        return ((c @ self.project) ** 2).sum(axis=1) * self.z_weight + (c**2).sum(axis=1) * self.c_weight


def _principal(f: np.ndarray):
    mean = f.mean(axis=0)
    c = f - mean
    variances, vectors = np.linalg.eigh(c.T @ c / max(len(f) - 1, 1))
    order = np.argsort(variances)[::-1]
    return mean, variances[order], vectors[:, order]


def early_branch(f: np.ndarray, k: int = EARLY_COMPONENTS) -> Branch:
    """The energy off the top-k principal subspace, over its training mean."""
    mean, _, vectors = _principal(f)
    top = vectors[:, : min(k, f.shape[1] - 1)]
    residual = np.eye(f.shape[1]) - top @ top.T
    energy = float((((f - mean) @ residual) ** 2).sum(axis=1).mean())
    return Branch(mean, residual, 1.0 / energy, 0.0)


def late_branch(f: np.ndarray, k: int = LATE_COMPONENTS) -> Branch:
    """Mahalanobis in the whitened top-k subspace (per component) plus the squared distance over its mean."""
    mean, variances, vectors = _principal(f)
    k = min(k, f.shape[1], len(f) - 1)
    # A floor on the variances: a direction the training images hardly use
    # must not make a tiny deviation look enormous.
    whiten = vectors[:, :k] / np.sqrt(np.maximum(variances[:k], 1e-3 * variances[0]))
    spread = float(((f - mean) ** 2).sum(axis=1).mean())
    return Branch(mean, whiten, 1.0 / k, 1.0 / spread)


@dataclass(frozen=True)
class DomainHead:
    early: Branch
    late: Branch
    early_scale: float  # each branch's 99.5th percentile on the calibration pool
    late_scale: float
    threshold: float  # on max(early / early_scale, late / late_scale)
    gain: float

    def score(self, early: np.ndarray, late: np.ndarray) -> np.ndarray:
        return np.maximum(self.early.raw(early) / self.early_scale, self.late.raw(late) / self.late_scale)

    def out_of_domain_probability(self, early: np.ndarray, late: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.score(early, late) - self.threshold) * self.gain))

    def save(self, path: Path) -> None:
        tmp = Path(path).with_name(Path(path).stem + ".tmp.npz")
        arrays = {f"{name}_{field}": getattr(getattr(self, name), field)
                  for name in ("early", "late") for field in ("mean", "project", "z_weight", "c_weight")}
        np.savez(tmp, **arrays, early_scale=self.early_scale, late_scale=self.late_scale,
                 threshold=self.threshold, gain=self.gain)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "DomainHead":
        with np.load(path) as f:
            branch = {name: Branch(f[f"{name}_mean"], f[f"{name}_project"], float(f[f"{name}_z_weight"]),
                                   float(f[f"{name}_c_weight"])) for name in ("early", "late")}
            return cls(branch["early"], branch["late"], float(f["early_scale"]), float(f["late_scale"]),
                       float(f["threshold"]), float(f["gain"]))


def fit(train: tuple[np.ndarray, np.ndarray], pool: tuple[np.ndarray, np.ndarray],
        pass_rate: float = DOMAIN_PASS) -> tuple[DomainHead, dict]:
    """Fit both branches on the training images' (early, late) features; scale and threshold on the pool's."""
    early, late = early_branch(np.asarray(train[0], np.float64)), late_branch(np.asarray(train[1], np.float64))
    scales = [float(np.quantile(b.raw(f), pass_rate)) for b, f in ((early, pool[0]), (late, pool[1]))]
    partial = DomainHead(early, late, *scales, 1.0, 1.0)
    threshold = float(np.quantile(partial.score(*pool), pass_rate))
    head = DomainHead(early, late, *scales, threshold, GAIN_WIDTHS / threshold)
    rates = {"threshold": threshold, "early_layer": EARLY_LAYER, "components": [EARLY_COMPONENTS, LATE_COMPONENTS],
             "training_pass_rate": float(np.mean(head.score(*train) < threshold)),
             "calibration_pass_rate": float(np.mean(head.score(*pool) < threshold)),
             "training_images": int(len(train[1])), "calibration_images": int(len(pool[1]))}
    return head, rates


def with_threshold(head: DomainHead, threshold: float) -> DomainHead:
    """The same head with its limit moved; the gain keeps one threshold's width at GAIN_WIDTHS of logit."""
    return replace(head, threshold=float(threshold), gain=GAIN_WIDTHS / float(threshold))


def scores_of(head: DomainHead, p_out_of_domain: np.ndarray) -> np.ndarray:
    """The score each out_of_domain probability stands for: the inverse of the graph's logistic."""
    p = np.clip(np.asarray(p_out_of_domain, np.float64), 1e-6, 1 - 1e-6)
    return head.threshold + np.log(p / (1 - p)) / head.gain


def threshold_for_file(head: DomainHead, p_out_of_domain: np.ndarray, pass_rate: float = DOMAIN_PASS,
                       tolerance: float = 0.003) -> DomainHead | None:
    """The head with its limit where the exported file itself lets pass_rate of the pool through; None if it does.

    int8 features are noisy (the whitened directions amplify the noise), so
    the file's scores spread wider than the float ones and a float-fitted
    limit sets aside more of the pool than it should. The file's own
    probabilities on the pool map back to scores, and the limit moves to
    their pass_rate quantile.
    """
    p = np.asarray(p_out_of_domain, np.float64)
    if abs(float(np.mean(p < 0.5)) - pass_rate) <= tolerance:
        return None
    return with_threshold(head, float(np.quantile(scores_of(head, p), pass_rate)))


def farthest(p_out_of_domain: np.ndarray, count: int) -> np.ndarray:
    """Indices of the count images the head finds least usable, most first (ties in order)."""
    return np.argsort(-np.asarray(p_out_of_domain), kind="stable")[:count]


def _branch_layers(keras, name: str, f, branch: Branch, scale: float):
    """branch.raw(f) / scale as layers: centre, project, square, one weighted sum."""
    d, m = branch.project.shape
    centred = keras.layers.Rescaling(1.0, offset=(-branch.mean).astype("float32"), name=f"{name}_centre")(f)
    project = keras.layers.Dense(m, use_bias=False, name=f"{name}_project")
    z = project(centred)
    parts = [keras.layers.Multiply(name=f"{name}_z2")([z, z])]
    weights = [np.full(m, branch.z_weight)]
    if branch.c_weight:
        parts.append(keras.layers.Multiply(name=f"{name}_c2")([centred, centred]))
        weights.append(np.full(d, branch.c_weight))
    squares = keras.layers.Concatenate(name=f"{name}_squares")(parts) if len(parts) > 1 else parts[0]
    total = keras.layers.Dense(1, use_bias=False, name=f"{name}_score")
    score = total(squares)
    project.set_weights([branch.project.astype("float32")])
    total.set_weights([(np.concatenate(weights) / scale)[:, None].astype("float32")])
    return score


def attach(serving, head: DomainHead):
    """The serving model with a third output, "usable": softmax([0, (score - threshold) * gain])."""
    import keras

    image = keras.Input(serving.input_shape[1:], name="image")
    backbone = model_lib.backbone_of(serving)
    both = keras.Model(backbone.input, [backbone.get_layer(EARLY_LAYER).output, backbone.output], name=backbone.name)
    early_map, late_map = both(serving.get_layer("preprocess")(image), training=False)
    pooled = serving.get_layer("pool")(late_map)
    early = keras.layers.GlobalAveragePooling2D(name="domain_early_pool")(early_map)
    heads = [serving.get_layer(n)(pooled) for n in ("probabilities", "diagnosis") if n in [x.name for x in serving.layers]]
    score = keras.layers.Maximum(name="domain_score")([_branch_layers(keras, "domain_early", early, head.early, head.early_scale),
                                                        _branch_layers(keras, "domain_late", pooled, head.late, head.late_scale)])
    logit_layer = keras.layers.Dense(1, name="domain_logit")
    verdict = keras.layers.Dense(len(USABLE_LABELS), activation="softmax", name="usable")
    usable = verdict(logit_layer(score))
    logit_layer.set_weights([np.array([[head.gain]], "float32"), np.array([-head.threshold * head.gain], "float32")])
    verdict.set_weights([np.array([[0.0, 1.0]], "float32"), np.zeros(2, "float32")])
    return keras.Model(image, [*heads, usable], name=serving.name)


def features(serving, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(early, late) features of a batch of (n, size, size, 3) uint8 images: block 6's mean activation, pooled."""
    import keras

    backbone = model_lib.backbone_of(serving)
    both = keras.Model(backbone.input, [backbone.get_layer(EARLY_LAYER).output, backbone.output])
    pre = serving.get_layer("preprocess")
    early, late = [], []
    for i in range(0, len(images), batch_size):
        e, t = both(pre(np.asarray(images[i:i + batch_size], np.float32)), training=False)
        early.append(np.asarray(e).mean(axis=(1, 2)))
        late.append(np.asarray(t).mean(axis=(1, 2)))
    return np.concatenate(early), np.concatenate(late)


def fit_on_images(serving, train_samples, pool_images: np.ndarray, limit: int = 3000, seed: int = 0):
    """fit() on the features of (up to limit of) a run's training images and of its calibration pool.

    A few thousand images pin down the means and the first principal
    directions; all 11,000 would only triple the cost.
    """
    from edgeskin.data import sets

    size = int(serving.input_shape[1])
    pick = np.random.default_rng(seed).permutation(len(train_samples))[:limit]
    images = sets.load_images([train_samples[i] for i in sorted(pick)], size)
    return fit(features(serving, images), features(serving, pool_images))
