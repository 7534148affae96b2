"""The network: MobileNetV2 with preprocessing inside, a one-logit head and,
when the training data names diagnoses, a diagnosis head beside it.

The model takes raw RGB values 0-255. Halving the chroma resolution and
scaling to MobileNetV2's [-1, 1] are layers of the graph, so the Keras
model, the exported TFLite file and the runtime can never disagree about
preprocessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeskin.data.sets import LABELS

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# Layer names of MobileNetV2 from which fine-tuning may start.
FINE_TUNE_STARTS = tuple(f"block_{n}_expand" for n in range(1, 17)) + ("Conv_1",)


class ModelError(ValueError):
    """A model that cannot be built or loaded."""


@dataclass(frozen=True)
class ModelOptions:
    image_size: int = 224
    alpha: float = 1.0
    weights: str = "imagenet"  # "imagenet", "none", or a path to an .h5 file
    dropout: float = 0.2
    # Halve the chroma resolution inside the graph (see _preprocess).
    chroma_subsampling: bool = True
    # Names of the diagnosis head's outputs; () for a model with no such head.
    diagnoses: tuple[str, ...] = ()
    diagnosis_l2: float = 1e-3

    def __post_init__(self):
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"image_size must lie in [32, 1024], got {self.image_size}")
        if self.chroma_subsampling and self.image_size % 2:
            raise ValueError(f"in-graph chroma subsampling needs an even image_size, got {self.image_size}")
        if self.alpha not in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
            raise ValueError(f"alpha must be one of MobileNetV2's 0.35, 0.5, 0.75, 1.0, 1.3, 1.4; got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not self.diagnosis_l2 >= 0:
            raise ValueError(f"diagnosis_l2 must be >= 0, got {self.diagnosis_l2}")
        if len(set(self.diagnoses)) != len(self.diagnoses) or len(self.diagnoses) == 1:
            raise ValueError(f"diagnoses must be distinct names, at least two of them; got {self.diagnoses}")
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise ValueError(f"weights must be 'imagenet', 'none' or an existing .h5 file; got {self.weights!r}")


def _keras():
    import keras  # deferred: the runtime never needs it

    return keras


def _backbone(options: ModelOptions):
    keras = _keras()
    weights = None if options.weights == "none" else options.weights
    try:
        return keras.applications.MobileNetV2(
            input_shape=(options.image_size, options.image_size, 3),
            alpha=options.alpha,
            include_top=False,
            weights=weights,
        )
    except Exception as exc:  # Keras raises plain Exceptions for download failures
        if weights == "imagenet":
            cache = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
            raise ModelError(
                f"ImageNet weights are not in Keras's cache and could not be downloaded ({exc}); "
                f"copy {WEIGHTS_FILE} into {cache / 'models'} or pass --weights PATH"
            ) from exc
        raise ModelError(f"cannot build MobileNetV2 with weights {weights!r}: {exc}") from exc


# JPEG's RGB -> YCbCr matrix (ITU-R BT.601, full range). KEEP takes an
# image's luma and drops its chroma, TAKE the reverse, both back in RGB:
# KEEP + TAKE is the identity, and the 128 offsets of Cb and Cr cancel.
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
CHROMA_KEEP = np.linalg.inv(_YCC) @ np.diag([1.0, 0.0, 0.0]) @ _YCC
CHROMA_TAKE = np.linalg.inv(_YCC) @ np.diag([0.0, 1.0, 1.0]) @ _YCC


def _preprocess(size: int, chroma_subsampling: bool):
    """Raw RGB 0-255 in, MobileNetV2's [-1, 1] out, as one frozen sub-model.

    With chroma_subsampling, the image's chroma is averaged over 2x2 blocks
    and bilinearly upsampled while its luma is kept: what a 4:2:0 JPEG does.
    Every image then reaches the network with the same chroma resolution,
    whether its file was saved 4:4:4, 4:2:2 or 4:2:0, so no model can learn
    how its training files were saved (in isic-binary, benign files are
    4:4:4 and half the malignant ones 4:2:0). Doing it in the graph means
    training, export, the runtime and MediaPipe all do it identically.
    """
    keras = _keras()
    inputs = keras.Input((size, size, 3), name="rgb")
    x = inputs
    if chroma_subsampling:
        keep = keras.layers.Conv2D(3, 1, use_bias=False, name="luma")
        take = keras.layers.Conv2D(3, 1, use_bias=False, name="chroma")
        blurred = keras.layers.UpSampling2D(2, interpolation="bilinear", name="chroma_up")(
            keras.layers.AveragePooling2D(2, name="chroma_down")(x))
        x = keras.layers.Add(name="chroma_420")([keep(x), take(blurred)])
        # A 1x1 conv computes x @ kernel, so the kernel is the matrix transposed.
        keep.set_weights([CHROMA_KEEP.T[None, None].astype("float32")])
        take.set_weights([CHROMA_TAKE.T[None, None].astype("float32")])
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(x)
    pre = keras.Model(inputs, x, name="preprocess")
    pre.trainable = False
    return pre


def build(options: ModelOptions = ModelOptions()):
    """The training model: raw pixels in, one malignant logit out (and, with
    options.diagnoses, the diagnosis logits as a second output).

    Returns (model, backbone, head): the head is a small model of its own so
    that it can be trained on cached backbone features and then dropped in.
    """
    keras = _keras()
    size = options.image_size
    inputs = keras.Input((size, size, 3), name="image")
    x = _preprocess(size, options.chroma_subsampling)(inputs)
    backbone = _backbone(options)
    # training=False keeps every BatchNorm in inference mode for good, even
    # once its layer is unfrozen: a few hundred dermoscopy images per batch
    # would otherwise overwrite statistics learnt on a million ImageNet photos.
    features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(x, training=False))
    head = _head(keras, features.shape[1:], options)
    model = keras.Model(inputs, head(features), name="edgeskin_train")
    return model, backbone, head


def _head(keras, feature_shape, options: ModelOptions):
    """Dropout and one linear layer per output, on the shared pooled features.

    Both heads read the same 1,280 features: the diagnosis task asks the
    backbone for the finer distinctions (a naevus from a keratosis) that the
    benign/malignant logit alone would never pay for.
    """
    features = keras.Input(feature_shape)
    x = keras.layers.Dropout(options.dropout)(features)
    outputs = keras.layers.Dense(1, name="logit")(x)
    if options.diagnoses:
        # L2 on the diagnosis weights: with 1,280 features, a rare diagnosis
        # (about 100 dermatofibromas) is linearly separable from the rest, and
        # unregularised cross-entropy then grows its weights without bound.
        # Such a head is so sharp that the first fine-tuning steps, which
        # move the features a little, blew its loss up from 0.7 to 10.
        dx = keras.layers.Dense(len(options.diagnoses), name="dx_logits",
                                kernel_regularizer=keras.regularizers.L2(options.diagnosis_l2))
        outputs = [outputs, dx(x)]
    return keras.Model(features, outputs, name="head")


def has_diagnosis(model) -> bool:
    return isinstance(model.output, (list, tuple)) and len(model.output) > 1


def malignant_logits(outputs) -> np.ndarray:
    """The malignant logit column of a training model's predict() output."""
    return np.asarray(outputs[0] if isinstance(outputs, (list, tuple)) else outputs)[:, 0]


def feature_extractor(model):
    """The part of a training model that ends at the pooled features."""
    keras = _keras()
    return keras.Model(model.input, model.get_layer("pool").output, name="features")


def set_fine_tuning(backbone, start: str | None) -> int:
    """Unfreeze the backbone from layer `start` upwards; None freezes it all.

    BatchNorm layers stay frozen (see build). Returns how many layers train.
    """
    keras = _keras()
    names = [layer.name for layer in backbone.layers]
    if start is not None and start not in names:
        raise ModelError(f"no layer {start!r} in the backbone; try one of {', '.join(FINE_TUNE_STARTS)}")
    first = names.index(start) if start is not None else len(names)
    backbone.trainable = True
    trainable = 0
    for i, layer in enumerate(backbone.layers):
        on = i >= first and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = on
        trainable += bool(on and layer.weights)
    return trainable


def calibrated(model, temperature: float):
    """The serving model: raw pixels in, [benign, malignant] probabilities out.

    sigmoid(z / T) equals softmax([-z / 2T, z / 2T])[1], so folding the
    temperature into a two-unit softmax layer gives calibrated probabilities
    for both labels from standard layers alone: the file loads anywhere with
    no custom objects, and a two-category output is what the label file and
    mobile classifiers expect.
    """
    keras = _keras()
    if not temperature > 0:
        raise ModelError(f"temperature must be positive, got {temperature}")
    head = model.get_layer("head")
    w, b = (np.asarray(v) for v in head.get_layer("logit").get_weights())
    scale = np.array([-1.0, 1.0]) / (2.0 * temperature)
    features = model.get_layer("pool").output
    out = keras.layers.Dense(len(LABELS), activation="softmax", name="probabilities")
    outputs = out(features)
    out.set_weights([(w * scale).astype("float32"), (b * scale).astype("float32")])
    if has_diagnosis(model):
        # The diagnosis probabilities ride along as a second output; the
        # benign/malignant pair stays first, the decision an app acts on.
        dx = keras.layers.Dense(head.get_layer("dx_logits").units, activation="softmax", name="diagnosis")
        outputs = [outputs, dx(features)]
        dx.set_weights(head.get_layer("dx_logits").get_weights())
    return centre_diagnosis_logits(keras.Model(model.input, outputs, name="edgeskin"))


def centre_diagnosis_logits(model):
    """Remove from the diagnosis layer what every diagnosis shares; returns the model.

    Softmax ignores a term added to every logit, so subtracting each input
    feature's mean weight across the diagnoses (and the biases' mean)
    changes no probability. It matters for int8: trained with Adam, the
    shared part grew until the logits sat near -160 while they differed by a
    few units, and an int8 step over that range erased the differences
    (the exported head named the float model's top diagnosis on 37% of the
    calibration pool).
    """
    if "diagnosis" not in [layer.name for layer in model.layers]:
        return model
    layer = model.get_layer("diagnosis")
    w, b = (np.asarray(v) for v in layer.get_weights())
    layer.set_weights([w - w.mean(axis=1, keepdims=True), b - b.mean()])
    return model


def backbone_of(serving):
    """The MobileNetV2 inside a serving (or training) model: the nested model that is not the preprocessing."""
    keras = _keras()
    return next(layer for layer in serving.layers if isinstance(layer, keras.Model) and layer.name != "preprocess")


def shift_diagnosis_logits(model, shift: np.ndarray):
    """Add a constant vector to the serving model's diagnosis logits (its bias); returns the model."""
    layer = model.get_layer("diagnosis")
    w, b = (np.asarray(v) for v in layer.get_weights())
    layer.set_weights([w, (b + shift).astype(b.dtype)])
    return model


def load(path):
    """Load a Keras model file, with a one-line error for anything unreadable."""
    keras = _keras()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file
        raise ModelError(f"{path}: not a readable Keras model ({type(exc).__name__}: {exc})") from exc
