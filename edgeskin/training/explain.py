"""Grad-CAM: where in the image the malignant evidence comes from.

Grad-CAM weights each channel of the last convolutional block by the mean
gradient of the malignant score with respect to it; the positive part of the
weighted sum is a coarse map (7x7 at 224 px) of the regions that pushed the
score up. It needs the float Keras model: gradients do not survive int8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeskin.data.sets import LABELS


@dataclass(frozen=True)
class Explanation:
    path: str
    malignant_probability: float
    heatmap: np.ndarray  # (size, size) float32 in [0, 1]
    overlay: np.ndarray  # (size, size, 3) uint8 RGB


def _parts(model):
    """The serving model's stages: preprocessing, backbone (ends at the last conv block), pooling, head."""
    backbone = next(layer for layer in model.layers if layer.name.startswith("mobilenetv2"))
    head = model.get_layer("probabilities") if "probabilities" in [l.name for l in model.layers] else model.get_layer("head")
    return model.get_layer("preprocess"), backbone, model.get_layer("pool"), head


def gradcam(model, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Grad-CAM map (size, size) in [0, 1] for the malignant output, and the malignant probability."""
    import tensorflow as tf

    preprocess, backbone, pool, head = _parts(model)
    x = tf.convert_to_tensor(pixels[None].astype("float32"))
    with tf.GradientTape() as tape:
        conv = backbone(preprocess(x), training=False)
        tape.watch(conv)
        out = head(pool(conv))
        if out.shape[-1] == len(LABELS):
            m = LABELS.index("malignant")
            # The log-odds rather than the probability: a probability near 0
            # or 1 has a vanishing gradient and would give an empty map.
            score = tf.math.log(out[:, m] + 1e-7) - tf.math.log(out[:, 1 - m] + 1e-7)
            probability = float(out[0, m])
        else:
            score = out[:, 0]
            probability = float(tf.sigmoid(out[0, 0]))
    grads = tape.gradient(score, conv)[0]
    weights = tf.reduce_mean(grads, axis=(0, 1))
    cam = tf.nn.relu(tf.reduce_sum(conv[0] * weights, axis=-1)).numpy()
    size = pixels.shape[0]
    cam = _resize(cam, size)
    top = cam.max()
    return (cam / top if top > 0 else np.zeros_like(cam)).astype(np.float32), probability


def _resize(cam: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC).clip(0, None)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """The heatmap through OpenCV's JET colormap, as RGB."""
    import cv2

    return cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heatmap), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(pixels: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """Blend the coloured heatmap over the image; opacity 0 shows the image alone."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    blend = (1 - opacity) * pixels.astype(np.float32) + opacity * colorize(heatmap).astype(np.float32)
    return blend.clip(0, 255).astype(np.uint8)


def explain(model, path, opacity: float = 0.4) -> Explanation:
    from edgeskin.runtime.imageio import load_rgb

    size = int(model.input_shape[1])
    pixels = load_rgb(path, size)
    heat, p = gradcam(model, pixels)
    return Explanation(str(path), p, heat, overlay(pixels, heat, opacity))


def save(explanation: Explanation, out_dir, stem: str | None = None) -> tuple[Path, Path]:
    """Write <stem>_heatmap.png and <stem>_overlay.png into out_dir (stem: the image's, by default)."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or Path(explanation.path).stem
    heat_path, overlay_path = out_dir / f"{stem}_heatmap.png", out_dir / f"{stem}_overlay.png"
    Image.fromarray(colorize(explanation.heatmap)).save(heat_path)
    Image.fromarray(explanation.overlay).save(overlay_path)
    return heat_path, overlay_path
