"""The phone side: what `edgeskin predict` and `edgeskin calibrate` run.

numpy, Pillow and a TFLite runtime only, and nothing from edgeskin's data,
training or reporting packages (tests/test_architecture.py proves it): this
is the part of edgeskin that a device, an edge box or an app port carries.
"""

from edgeskin.runtime.classifier import Classifier, Failure, Prediction, RuntimeModelError, default_model

__all__ = ["Classifier", "Failure", "Prediction", "RuntimeModelError", "default_model"]
