"""edgeskin: a calibrated benign / malignant dermoscopy classifier for phones.

A screening aid, not a diagnosis.
"""

__version__ = "0.1.0"
