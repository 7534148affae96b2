"""Say "cannot judge" instead of guessing: an input-quality and out-of-domain gate.

A screening aid must not answer a portrait, a page of text or a blurred
smudge with "benign": false reassurance is the worst failure it can have. The
gate checks each image before its malignant_probability is trusted:

  quality   too small, extreme aspect ratio, nearly uniform, over- or
            under-exposed, too blurred; each limit is a quantile of the
            training images' own statistics (stored and re-encoded at the
            deployment JPEG qualities), never a number chosen by eye;
  domain    a Mahalanobis distance, in a small space of colour and texture
            statistics (per ring from the centre outwards, where a
            dermoscope's lesion, skin and vignette sit), to the training
            images; its threshold lets at least 99% of the calibration pool
            through.

numpy only, so the runtime runs it on the device; its parameters travel in
the model's metadata ("gate") and need no change to the model graph, so
MediaPipe reads the model exactly as before. Fitting it is training's job
(edgeskin/training/gate.py).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

QUALITY_REASONS = ("too_small", "extreme_aspect", "nearly_uniform", "overexposed", "underexposed", "too_blurred")
OUT_OF_DOMAIN = "out_of_domain"
REASON_TEXT = {
    "too_small": "the image is too small",
    "extreme_aspect": "the image is far from square",
    "nearly_uniform": "the image shows almost no structure",
    "overexposed": "the image is overexposed",
    "underexposed": "the image is underexposed",
    "too_blurred": "the image is too blurred",
    OUT_OF_DOMAIN: "the image does not look like a dermoscopic photo of a skin lesion",
}
# Share of in-domain images each quality limit may set aside, and the pass
# rate the out-of-domain threshold must give on the calibration pool.
QUALITY_TAIL = 0.001
DOMAIN_PASS = 0.995
SHRINK = 0.1  # covariance shrinkage towards its diagonal, for a stable inverse


def _luma(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(pixels, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


def _laplacian(luma: np.ndarray) -> np.ndarray:
    return luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]


def quality_stats(pixels: np.ndarray) -> dict:
    """Exposure, structure and sharpness of one (size, size, 3) uint8 model input, at half resolution:
    a quarter of the work, and the limits are fitted at the same resolution."""
    luma = _luma(np.asarray(pixels)[::2, ::2])
    return {"contrast": float(luma.std()), "overexposed": float((luma >= 250).mean()),
            "underexposed": float((luma <= 5).mean()), "sharpness": float(_laplacian(luma).var())}


@functools.lru_cache(maxsize=8)
def _rings(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ring number (0 centre, 1 middle, 2 border) of every pixel, flattened, and the pixel count of each ring."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2) / (size / 2)
    ring = np.digitize(r, [0.35, 0.7]).ravel()
    return ring, np.bincount(ring, minlength=3).astype(np.float64)


def domain_features(pixels: np.ndarray) -> np.ndarray:
    """A 28-value description of colour and texture: what separates dermoscopy from everything else."""
    a = np.asarray(pixels)[::2, ::2].astype(np.float64) / 255.0  # half resolution is plenty and 4x cheaper
    ring, count = _rings(a.shape[0])
    flat = a.reshape(-1, 3)
    out = []
    # Per ring (centre, middle, border): channel means and log standard
    # deviations, from sums so that no pixel is copied.
    sums = np.stack([np.bincount(ring, weights=flat[:, c], minlength=3) for c in range(3)], axis=1)
    squares = np.stack([np.bincount(ring, weights=flat[:, c] ** 2, minlength=3) for c in range(3)], axis=1)
    means = sums / count[:, None]
    stds = np.sqrt(np.maximum(squares / count[:, None] - means**2, 0.0))
    for k in range(3):
        out += list(means[k]) + list(np.log(stds[k] + 1e-3))
    luma = (flat @ np.array([0.299, 0.587, 0.114])).reshape(a.shape[:2])
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)  # max(axis=2) is 8x slower
    sat = (mx - mn) / (mx + 1e-3)
    # |dx| + |dy| rather than the Euclidean norm: the same texture cue at a third of the cost.
    grad = (np.abs(np.diff(luma, axis=0)[:, :-1]) + np.abs(np.diff(luma, axis=1)[:-1, :])).ravel()
    k = int(0.9 * (grad.size - 1))
    n = count.sum()
    mr, mb = sums[:, 0].sum() / n, sums[:, 2].sum() / n
    sr = np.sqrt(max(squares[:, 0].sum() / n - mr**2, 0.0))
    sb = np.sqrt(max(squares[:, 2].sum() / n - mb**2, 0.0))
    corr = (float(flat[:, 0] @ flat[:, 2]) / n - mr * mb) / (sr * sb) if sr > 1e-6 and sb > 1e-6 else 0.0
    out += [sat.mean(), np.log(sat.std() + 1e-3), np.log(grad.mean() + 1e-4), np.log(_laplacian(luma).std() + 1e-4),
            np.log(np.partition(grad, k)[k] + 1e-4) - np.log(grad.mean() + 1e-4), (luma < 0.1).mean() - (luma > 0.9).mean(),
            corr, mr - mb,
            # Skin and lesions are redder than they are blue or green: sky,
            # foliage and most objects are not.
            np.log(((b - r) > 0.05).mean() + 1e-3), np.log(((g - r) > 0.05).mean() + 1e-3)]
    return np.array(out, dtype=np.float64)


@dataclass(frozen=True)
class Gate:
    min_short_side: float
    max_aspect: float
    min_contrast: float
    max_overexposed: float
    max_underexposed: float
    min_sharpness: float
    mean: tuple[float, ...]
    precision: tuple[float, ...]  # the inverse covariance, row by row
    max_distance: float

    def __post_init__(self):
        n = len(self.mean)
        if n == 0 or len(self.precision) != n * n or not np.all(np.isfinite(self.precision)):
            raise ValueError("gate: the domain model needs a mean and an n x n finite precision matrix")
        if not (self.max_distance > 0 and self.min_short_side >= 1 and self.max_aspect >= 1):
            raise ValueError("gate: limits out of range")

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.mean)
        return np.asarray(self.mean), np.asarray(self.precision).reshape(n, n)

    def distance(self, pixels: np.ndarray) -> float:
        """Mahalanobis distance of an image's colour-and-texture features from the training images."""
        mean, precision = self._arrays
        d = domain_features(pixels) - mean
        return float(np.sqrt(max(d @ precision @ d, 0.0)))

    def reasons(self, original_size: tuple[int, int], pixels: np.ndarray, domain: bool = True) -> list[str]:
        """Why this image cannot be judged; [] when it can. original_size is (width, height) before the crop.

        domain=False leaves out the colour-and-texture distance: a model with
        its own usable head judges the domain from what the network sees.
        """
        w, h = original_size
        if min(w, h) < self.min_short_side:
            return ["too_small"]  # nothing else about a few pixels means anything
        out = []
        if max(w, h) / min(w, h) > self.max_aspect:
            out.append("extreme_aspect")
        s = quality_stats(pixels)
        if s["contrast"] < self.min_contrast:
            out.append("nearly_uniform")
        if s["overexposed"] > self.max_overexposed:
            out.append("overexposed")
        if s["underexposed"] > self.max_underexposed:
            out.append("underexposed")
        if s["sharpness"] < self.min_sharpness and "nearly_uniform" not in out:
            out.append("too_blurred")
        if domain and not out and self.distance(pixels) > self.max_distance:
            out.append(OUT_OF_DOMAIN)
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "precision": list(self.precision)}

    @classmethod
    def from_dict(cls, d: dict) -> "Gate":
        from dataclasses import fields

        try:
            known = {f.name: d[f.name] for f in fields(cls)}
            return cls(**{**known, "mean": tuple(map(float, d["mean"])), "precision": tuple(map(float, d["precision"]))})
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"gate: unreadable parameters ({exc})") from exc
