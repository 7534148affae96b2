"""Int8-aware fine-tuning: the frozen layers put on int8's grid before the layers above them train.

The int8 file rounds every convolution's weights (batch norm folded in) to
127 steps per output channel. Measured on the v3 run's calibration pool,
rounding the weights of blocks 0-5 alone took the float model's AUC from
0.900 to 0.868, as much as the whole int8 conversion lost; rounding every
activation to its int8 step cost 0.001 and the fine-tuned blocks' weights
0.0002 (docs/recipe.md, "Why int8 lost"). Those blocks keep their ImageNet weights
for good, so their rounding error is fixed, not noise: the layers that
fine-tune can learn to read it. Here the frozen layers' weights are moved
onto the very grid the converter will use, which the converter then
reproduces exactly, and fine-tuning adapts everything above them.
"""

from __future__ import annotations

import numpy as np

from edgeskin.training import model as model_lib

INT8_STEPS = 127  # TFLite's per-channel weights: symmetric, [-127, 127]


def convolutions(backbone, start: str | None = None):
    """(layer, fold, depthwise) for each convolution before layer `start` (all for None) that a batch norm follows;
    fold is the factor the converter folds into its output channels, the batch norm's gamma / sigma."""
    keras = model_lib._keras()
    layers = list(backbone.layers)
    names = [layer.name for layer in layers]
    end = names.index(start) if start in names else len(layers)
    for i, layer in enumerate(layers[:end]):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            continue
        bn = next((x for x in layers[i + 1:i + 3] if isinstance(x, keras.layers.BatchNormalization)), None)
        if bn is not None:
            gamma, _, _, var = bn.get_weights()
            yield layer, gamma / np.sqrt(var + bn.epsilon), isinstance(layer, keras.layers.DepthwiseConv2D)


def on_int8_grid(kernel: np.ndarray, fold: np.ndarray, depthwise: bool) -> np.ndarray:
    """The kernel whose batch-norm-folded weights sit exactly on their per-channel int8 steps."""
    shape = (1, 1, -1, 1) if depthwise else (1, 1, 1, -1)
    axes = (0, 1, 3) if depthwise else (0, 1, 2)
    folded = kernel * fold.reshape(shape)
    step = np.abs(folded).max(axis=axes, keepdims=True) / INT8_STEPS
    snapped = np.round(folded / np.where(step > 0, step, 1.0)) * step
    return (snapped / np.where(fold == 0, 1.0, fold).reshape(shape)).astype(kernel.dtype)


def snap_below(backbone, start: str | None) -> int:
    """Put every convolution of the backbone before layer `start` (all of them for None), the layers that never
    train, on the int8 grid; returns how many moved. Doing it twice changes nothing."""
    moved = 0
    for layer, fold, depthwise in convolutions(backbone, start):
        weights = layer.get_weights()
        layer.set_weights([on_int8_grid(weights[0], fold, depthwise), *weights[1:]])
        moved += 1
    return moved
