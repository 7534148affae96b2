"""What the runtime answers for one image (a Prediction, or a Failure for a file it cannot read), and the
thread pool that decodes a folder ahead of the interpreter."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edgeskin.runtime import gate as gate_lib
from edgeskin.runtime.imageio import ImageError, open_rgb, to_model_input

MALIGNANT, BENIGN, UNUSABLE = "malignant", "benign", "unusable"


@dataclass(frozen=True)
class Prediction:
    path: str
    malignant_probability: float
    threshold: float
    reasons: tuple[str, ...] = ()  # why the gate could not judge the image; () when it could
    # The most probable diagnoses, most probable first, as (dx, probability);
    # None when they were not asked for.
    diagnosis: tuple[tuple[str, float], ...] | None = None

    @property
    def usable(self) -> bool:
        return not self.reasons

    @property
    def label(self) -> str:
        if self.reasons:
            return UNUSABLE
        return MALIGNANT if self.malignant_probability >= self.threshold else BENIGN

    def readable(self) -> str:
        """One line for a person. An image the model cannot judge gets no probability and no diagnosis:
        a number the tool does not stand behind (a screenshot scored 0.986) only alarms; the JSON keeps it."""
        if not self.usable:
            why = "; ".join(gate_lib.REASON_TEXT.get(r, r) for r in self.reasons)
            return f"{self.path}: cannot judge this image ({why}): retake it"
        line = f"{self.path}: {self.label} (malignant_probability {self.malignant_probability:.3f}, threshold {self.threshold:.3f})"
        if self.diagnosis:
            line += "; diagnosis " + ", ".join(f"{dx} {p:.2f}" for dx, p in self.diagnosis)
        return line

    def to_dict(self) -> dict:
        out = {"path": self.path, "malignant_probability": round(self.malignant_probability, 6),
               "threshold": self.threshold, "label": self.label, "usable": self.usable, "reasons": list(self.reasons)}
        if self.diagnosis is not None:
            out["diagnosis"] = [{"dx": dx, "probability": round(p, 6)} for dx, p in self.diagnosis]
        return out


@dataclass(frozen=True)
class Failure:
    path: str
    error: str

    def readable(self) -> str:
        # The error names the file itself; say the path once.
        error = self.error[len(self.path) + 2:] if self.error.startswith(self.path + ": ") else self.error
        return f"{self.path}: error: {error}"

    def to_dict(self) -> dict:
        return {"path": self.path, "error": self.error}


def _decode(path: str, size: int):
    try:
        im = open_rgb(path)
        return im.size, to_model_input(im, size)
    except ImageError as exc:
        return exc


def decode_ahead(paths, size: int, workers: int):
    """(path, (original size, pixels) or the ImageError), in order, decoded on a thread pool.

    A bounded look-ahead: decoding stays ahead of inference without holding a
    whole folder of pixels in memory.
    """
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        todo = iter(paths)
        for path in todo:
            pending.append((path, pool.submit(_decode, path, size)))
            if len(pending) > 2 * workers:
                break
        while pending:
            path, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_decode, nxt, size)))
            yield path, future.result()


def as_rgb(image):
    """A PIL image or an (h, w, 3) uint8 array as an RGB PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (height, width, 3) uint8 RGB array, got {a.dtype} {a.shape}")
    return Image.fromarray(a, "RGB")
