"""Training augmentation that leaves the model no way to read how a file was saved.

In isic-binary every benign JPEG is quality 100 with full chroma while half
the malignant ones are chroma-subsampled, so a network can score the file
instead of the lesion. The chroma resolution is equalised inside the model
graph (model._preprocess), for training and deployment alike. What is left,
the quantization noise of the original file, is drowned here: every time an
image is drawn it is re-encoded at a random quality and random subsampling,
after random crops (the lesion's size in the frame), flips and rotations (a
lesion has no 'up') and colour changes (another dermoscope's white balance
and light).

An optional harmonizing re-encode of every training image at 4:2:0 is kept
for comparison: on the isic-binary validation split it lowered the AUC on
stored images and moved probabilities more under re-encoding than the
in-graph chroma step (scripts/compare_recipes.py), so it is off by default.

Pillow and numpy only, so the recipe can be tested without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgeskin.data import perturb


@dataclass(frozen=True)
class AugmentOptions:
    harmonize_quality: int | None = None  # e.g. 90: re-encode every training image once at 4:2:0 first
    jpeg_quality: tuple[int, int] = (30, 95)  # inclusive range of the per-draw re-encode
    jpeg_probability: float = 1.0
    subsampling: tuple[str, ...] = ("4:2:0", "4:2:2", "4:4:4")
    crop_scale: tuple[float, float] = (0.55, 1.0)  # share of the image area kept by the random crop
    crop_ratio: tuple[float, float] = (0.8, 1.25)
    temperature: float = 0.10  # red x (1 + t), blue x (1 - t), t uniform in [-temperature, temperature]
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15

    def __post_init__(self):
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg_quality must be a range within [1, 100], got {self.jpeg_quality}")
        if self.harmonize_quality is not None and not 1 <= self.harmonize_quality <= 100:
            raise ValueError(f"harmonize_quality must lie in [1, 100], got {self.harmonize_quality}")
        if not 0.0 <= self.jpeg_probability <= 1.0:
            raise ValueError("jpeg_probability must lie in [0, 1]")
        unknown = set(self.subsampling) - set(perturb.SUBSAMPLING)
        if not self.subsampling or unknown:
            raise ValueError(f"subsampling must be a non-empty choice of {', '.join(perturb.SUBSAMPLING)}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be a range within (0, 1], got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must be a positive range, got {self.crop_ratio}")
        for name in ("temperature", "brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")

    @classmethod
    def off(cls) -> "AugmentOptions":
        """Only the harmonizing re-encode: what --no-augment trains on."""
        return cls(jpeg_probability=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), temperature=0.0,
                   brightness=0.0, contrast=0.0, saturation=0.0)


def harmonize(images: np.ndarray, options: AugmentOptions) -> np.ndarray:
    """Re-encode every (h, w, 3) uint8 image once at 4:2:0 (a new array)."""
    if options.harmonize_quality is None:
        return images.copy()
    q = options.harmonize_quality
    return np.stack([np.asarray(perturb.reencode(Image.fromarray(x), q, "4:2:0")) for x in images]) if len(images) else images.copy()


def _crop(im: Image.Image, rng: np.random.Generator, options: AugmentOptions) -> Image.Image:
    w, h = im.size
    area = w * h * rng.uniform(*options.crop_scale)
    ratio = np.exp(rng.uniform(np.log(options.crop_ratio[0]), np.log(options.crop_ratio[1])))
    cw = int(round(min(w, np.sqrt(area * ratio))))
    ch = int(round(min(h, np.sqrt(area / ratio))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.resize((w, h), Image.BILINEAR, box=(left, top, left + cw, top + ch))


def _colour(a: np.ndarray, rng: np.random.Generator, options: AugmentOptions) -> np.ndarray:
    t = rng.uniform(-options.temperature, options.temperature)
    a = a * np.array([1.0 + t, 1.0, 1.0 - t], dtype=np.float32)
    a = a * (1.0 + rng.uniform(-options.brightness, options.brightness))
    mean = a.mean()
    a = mean + (a - mean) * (1.0 + rng.uniform(-options.contrast, options.contrast))
    grey = a.mean(axis=2, keepdims=True)
    return grey + (a - grey) * (1.0 + rng.uniform(-options.saturation, options.saturation))


def augment(image: np.ndarray, rng: np.random.Generator, options: AugmentOptions = AugmentOptions()) -> np.ndarray:
    """One random draw of a (h, w, 3) uint8 training image; the same shape and dtype back."""
    im = Image.fromarray(image)
    im = _crop(im, rng, options)
    im = im.rotate(90 * int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = _colour(np.asarray(im, dtype=np.float32), rng, options)
    im = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < options.jpeg_probability:
        # Compression comes last, as in a camera: after its colour processing.
        quality = int(rng.integers(options.jpeg_quality[0], options.jpeg_quality[1] + 1))
        im = perturb.reencode(im, quality, options.subsampling[int(rng.integers(0, len(options.subsampling)))])
    return np.asarray(im, dtype=np.uint8)


def augment_batch(images: np.ndarray, rng: np.random.Generator, options: AugmentOptions = AugmentOptions()) -> np.ndarray:
    return np.stack([augment(x, rng, options) for x in images]) if len(images) else images.copy()
