"""OMNIGLOT as the LVAE and IWAE papers used it: Burda et al.'s `chardata.mat`
(https://github.com/yburda/iwae/tree/master/datasets/OMNIGLOT).

`data` (784, 24345) and `testdata` (784, 8070) hold 28x28 images in [0, 1], one per column, each
image flattened in MATLAB's column-major order; `target`/`testtarget` are one-hot alphabets (50).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dgm_dist.data.checks import check_images_labels
from dgm_dist.data.matfile import load_mat
from dgm_dist.errors import DataError

NUM_ALPHABETS = 50


def _images(columns: np.ndarray, name: str) -> np.ndarray:
    if columns.ndim != 2 or columns.shape[0] != 784:
        raise DataError(f"{name}: unexpected shape {columns.shape}; expected (784, N)")
    # Column-major 28x28 per column (Burda's loader: reshape, then reshape in Fortran order).
    return np.ascontiguousarray(columns.T.reshape(-1, 28, 28).transpose(0, 2, 1)).astype(np.float32)


def _alphabets(onehot: np.ndarray, name: str) -> np.ndarray:
    if onehot.ndim != 2 or onehot.shape[0] != NUM_ALPHABETS:
        raise DataError(f"{name}: unexpected shape {onehot.shape}; expected ({NUM_ALPHABETS}, N)")
    return onehot.argmax(axis=0).astype(np.int64)


def read_omniglot(path: Path) -> dict[str, np.ndarray]:
    """train_x/test_x (N, 28, 28) float32 in [0, 1]; train_y/test_y the alphabet index."""
    mat = load_mat(path, ("data", "target", "testdata", "testtarget"))
    out = {
        "train_x": _images(mat["data"], f"{path} (data)"),
        "train_y": _alphabets(mat["target"], f"{path} (target)"),
        "test_x": _images(mat["testdata"], f"{path} (testdata)"),
        "test_y": _alphabets(mat["testtarget"], f"{path} (testtarget)"),
    }
    for split in ("train", "test"):
        x = out[f"{split}_x"]
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DataError(f"{path}: {split} pixel values outside [0, 1]")
        check_images_labels(x, out[f"{split}_y"], NUM_ALPHABETS, f"{path} ({split} images)",
                            f"{path} ({split} targets)")
    return out
