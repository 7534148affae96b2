"""Decode any image file into the RGB pixels the model takes.

This is the single place where files become pixels, for training, export,
evaluation and the runtime alike, so a model never sees an image prepared
one way in training and another way on a phone. It imports only numpy and
Pillow, because the runtime imports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# A decompression bomb is a corrupt input as far as we are concerned.
Image.MAX_IMAGE_PIXELS = 100_000_000


class ImageError(ValueError):
    """An image file that cannot be turned into pixels."""


def open_rgb(source) -> Image.Image:
    """Open a path or file object as an upright RGB image.

    EXIF orientation is applied first: phone cameras store pixels sideways and
    rely on the tag, and a lesion seen sideways is still the same lesion, but
    a crop taken from the wrong axis is not.
    """
    name = getattr(source, "name", source)
    try:
        with Image.open(source) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # Transparent pixels have no colour of their own; put them on
                # white, the way a viewer shows them, not on black.
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                # 16-bit and float greyscale: convert("RGB") would clip at 255
                # and give a white picture; scale the real range to 8 bits.
                a = np.asarray(im, dtype=np.float64)
                lo, hi = float(a.min()), float(a.max())
                a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
                im = Image.fromarray(a.round().astype(np.uint8), "L")
            return im.convert("RGB")
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{name}: is a folder, not an image") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image file Pillow can read") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from exc


def center_square(im: Image.Image) -> Image.Image:
    """Crop the largest centred square.

    Dermoscopes centre the lesion, and squashing a 4:3 photo into a square
    would stretch the lesion's outline, which is itself a diagnostic cue.
    """
    w, h = im.size
    if w == h:
        return im
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


def to_model_input(im: Image.Image, size: int) -> np.ndarray:
    """Centre-crop and resize an RGB image to a (size, size, 3) uint8 array."""
    im = center_square(im)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def load_rgb(source, size: int) -> np.ndarray:
    """Read a file into the (size, size, 3) uint8 array the model takes."""
    return to_model_input(open_rgb(source), size)


def is_image(path: Path) -> bool:
    """Whether Pillow recognises the file's content as an image, whatever its name says.

    Only the header is read: a JPEG saved without an extension counts, a
    notes.txt named scan.jpg does not.
    """
    try:
        with Image.open(path):
            return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def scan_images(paths) -> tuple[list[Path], list[Path]]:
    """(images, skipped): files and folders (recursively) expanded into a sorted list of images, by content.

    A file named explicitly is kept whatever it holds, so that a bad file gets
    its own error; in a folder, files that are not images are skipped and
    returned, so that the caller can say how many.
    """
    found: list[Path] = []
    skipped: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            found.append(p)
            continue
        for q in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")):
            (found if q.suffix.lower() in IMAGE_SUFFIXES or is_image(q) else skipped).append(q)
    return found, skipped


def find_images(paths) -> list[Path]:
    """The images scan_images finds."""
    return scan_images(paths)[0]
