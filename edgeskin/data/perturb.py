"""Named image perturbations: how the same lesion looks after another camera or app.

One place for every way the project changes an image on purpose: the
robustness table of `evaluate`, the deployment-like calibration pool of
`train` and the random training augmentation all call these, so a figure
measured on "JPEG q75 4:2:0" means the same bytes everywhere. Pillow and
numpy only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

# Pillow's `subsampling` codes.
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def reencode(im: Image.Image, quality: int, subsampling: str = "4:2:0") -> Image.Image:
    """Save as a baseline JPEG and read it back, as a phone or clinic app would."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must lie in [1, 100], got {quality}")
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=int(quality), subsampling=SUBSAMPLING[subsampling])
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def scale_rgb(im: Image.Image, gains) -> Image.Image:
    """Multiply the R, G and B channels by gains, clipping to 0-255."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32) * np.asarray(gains, dtype=np.float32)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def gamma(im: Image.Image, g: float) -> Image.Image:
    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return Image.fromarray(np.clip(255.0 * a**g + 0.5, 0, 255).astype(np.uint8))


def colour_temperature(im: Image.Image, shift: float) -> Image.Image:
    """A white-balance change: shift > 0 warms (more red, less blue), < 0 cools."""
    return scale_rgb(im, (1.0 + shift, 1.0, 1.0 - shift))


def half_and_back(im: Image.Image) -> Image.Image:
    """Downscale to half size and back: the detail a lower-resolution camera loses."""
    w, h = im.size
    small = im.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR)
    return small.resize((w, h), Image.BILINEAR)


@dataclass(frozen=True)
class Perturbation:
    name: str
    description: str
    apply: Callable[[Image.Image], Image.Image]


# The robustness table of `evaluate`, one pass over the evaluated set each.
ROBUSTNESS = (
    Perturbation("jpeg_q95", "JPEG re-encode, quality 95, 4:2:0", lambda im: reencode(im, 95)),
    Perturbation("jpeg_q75", "JPEG re-encode, quality 75, 4:2:0", lambda im: reencode(im, 75)),
    Perturbation("jpeg_q50", "JPEG re-encode, quality 50, 4:2:0", lambda im: reencode(im, 50)),
    Perturbation("half_scale", "downscale to half and back (bilinear)", half_and_back),
    Perturbation("brighter_15", "brightness +15%", lambda im: scale_rgb(im, (1.15,) * 3)),
    Perturbation("darker_15", "brightness -15%", lambda im: scale_rgb(im, (0.85,) * 3)),
    Perturbation("gamma_0.8", "gamma 0.8 (lighter mid-tones)", lambda im: gamma(im, 0.8)),
    Perturbation("gamma_1.25", "gamma 1.25 (darker mid-tones)", lambda im: gamma(im, 1.25)),
    Perturbation("warmer", "colour temperature: red x1.10, blue x0.90", lambda im: colour_temperature(im, 0.10)),
    Perturbation("rotate_90", "rotation by 90 degrees", lambda im: im.transpose(Image.Transpose.ROTATE_90)),
    Perturbation("flip", "horizontal flip", ImageOps.mirror),
)
BY_NAME = {p.name: p for p in ROBUSTNESS}

# How deployed images are compressed: the calibration split is pooled at
# these qualities (4:2:0, as phones write them) so that temperature and
# thresholds hold on a phone's JPEG and not only on quality-100 files.
DEPLOYMENT_QUALITIES = (95, 75, 50)


def deployment_pool(images: np.ndarray, qualities=DEPLOYMENT_QUALITIES) -> np.ndarray:
    """Each (n, h, w, 3) uint8 image re-encoded at every quality, stacked quality by quality."""
    out = [np.stack([np.asarray(reencode(Image.fromarray(x), q)) for x in images]) for q in qualities]
    return np.concatenate(out) if out else images[:0]
