"""SVHN cropped digits (`{train,test,extra}_32x32.mat`, MATLAB v5): http://ufldl.stanford.edu/housenumbers/

`X` is (32, 32, 3, N) uint8 and `y` is (N, 1) with labels 1..10, where 10 stands for the digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dgm_dist.data.checks import check_images_labels
from dgm_dist.data.matfile import load_mat
from dgm_dist.errors import DataError


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 in 0..9."""
    mat = load_mat(path, ("X", "y"))
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X has shape {x.shape}; expected (32, 32, 3, N)")
    images = np.ascontiguousarray(np.moveaxis(x, -1, 0)).astype(np.uint8, copy=False)
    labels = np.where(y == 10, 0, y)
    check_images_labels(images, labels, 10, f"{path} (X)", f"{path} (y)")
    return images, labels


def dequantize_and_scale(x: np.ndarray, rng: np.random.Generator, std: np.ndarray | None = None):
    """The ADGM code's SVHN preprocessing (docs/data.md): add U(0,1) noise to the byte values,
    divide each RGB channel by its standard deviation (no mean subtraction), flatten to 3072.

    Returns the features and the per-channel std, which must be reused for the test set.
    """
    noisy = x.astype(np.float32) + rng.random(x.shape, dtype=np.float32)
    if std is None:
        std = noisy.reshape(-1, 3).std(axis=0)
    return (noisy / std).reshape(len(x), -1), std
