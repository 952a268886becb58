"""Consistency checks shared by the readers: each failure names the file and the problem."""

from __future__ import annotations

import numpy as np

from dgm_dist.errors import DataError


def check_images_labels(images: np.ndarray, labels: np.ndarray, num_classes: int,
                        images_name: str, labels_name: str) -> None:
    """Same number of images and labels; every label in [0, num_classes); float pixels finite."""
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise DataError(f"{images_name}: {int((~np.isfinite(images)).sum())} pixels are NaN or infinite; "
                        "the file is damaged or was not written as images")
    if len(images) != len(labels):
        raise DataError(f"{images_name} has {len(images)} images but {labels_name} has {len(labels)} "
                        "labels; the two files do not belong together")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DataError(f"{labels_name}: label {int(bad[0])} out of range (expected 0..{num_classes - 1}; "
                        f"{bad.size} bad labels)")


def check_shape(array: np.ndarray, trailing: tuple[int, ...], name: str) -> None:
    """`array` is (N, *trailing)."""
    if array.ndim != 1 + len(trailing) or tuple(array.shape[1:]) != trailing:
        raise DataError(f"{name}: unexpected shape {tuple(array.shape)}; expected (N, "
                        f"{', '.join(map(str, trailing))})")
