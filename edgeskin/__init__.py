"""edgeskin: a calibrated benign / malignant dermoscopy classifier for phones.

A screening aid, not a diagnosis.

The few names a Python user needs, loaded on first use so that `import
edgeskin` stays light (training and evaluation load TensorFlow, the
classifier only numpy, Pillow and LiteRT):

    >>> import edgeskin
    >>> result = edgeskin.Classifier().classify("data/samples/malignant_1.jpg")   # the shipped model
    >>> result.label, round(result.malignant_probability, 2), result.usable, result.diagnosis[0][0]

    edgeskin.train(["../shared/data/ham10000"], "runs/ham")          # edgeskin.training.train.train
    edgeskin.export("runs/ham", "runs/ham/edgeskin_int8.tflite")     # edgeskin.training.export.export
    edgeskin.evaluate("runs/ham/edgeskin_int8.tflite", "../shared/data/ham10000", "runs/ham/eval")
"""

__version__ = "0.1.0"

_PUBLIC = {
    "Classifier": ("edgeskin.runtime.classifier", "Classifier"),
    "train": ("edgeskin.training.train", "train"),
    "export": ("edgeskin.training.export", "export"),
    "evaluate": ("edgeskin.reporting.evaluate", "evaluate"),
}
__all__ = ["Classifier", "train", "export", "evaluate", "__version__"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'edgeskin' has no attribute {name!r}")
    import importlib

    module, attr = _PUBLIC[name]
    return getattr(importlib.import_module(module), attr)
