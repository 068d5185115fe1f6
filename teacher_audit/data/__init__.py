"""Evaluation data: Fashion-MNIST (Debian IDX files), a colour 32x32 variant, style-shifted domains,
scikit-learn digits and local torchvision / ImageFolder data. Nothing downloads.

Public API::

    from teacher_audit.data import load_dataset, load_raw, names, DatasetUnavailable
    d = load_dataset("fashion-mnist", "test", spec=teacher.spec, limit=1000)   # d.x float [0,1], d.y int64
"""

from teacher_audit.data.datasets import (
    DATASETS,
    FASHION_MNIST_CLASSES,
    DatasetUnavailable,
    LabeledImages,
    load_dataset,
    load_raw,
    names,
)
from teacher_audit.data.domains import SHIFTS, apply_shift
from teacher_audit.data.geometry import fit

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "DatasetUnavailable", "LabeledImages", "SHIFTS",
           "apply_shift", "fit", "load_dataset", "load_raw", "names"]
