"""Small NORB (https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/) in its binary matrix format.

Header (little-endian int32): a magic number giving the element type, the number of dimensions,
then max(3, ndim) dimension sizes (unused ones are 1). `*-dat.mat` is (24300, 2, 96, 96) uint8,
a stereo pair per object; `*-cat.mat` is (24300,) int32 with categories 0..4.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from dgm_dist.data.checks import check_images_labels
from dgm_dist.data.files import read_bytes
from dgm_dist.errors import DataError

NORB_TYPES = {
    0x1E3D4C51: np.dtype("<f4"),
    0x1E3D4C53: np.dtype("<f8"),
    0x1E3D4C54: np.dtype("<i4"),
    0x1E3D4C55: np.dtype(np.uint8),
    0x1E3D4C56: np.dtype("<i2"),
}
CLASSES = ("animal", "human", "airplane", "truck", "car")


def parse_norb(data: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(data) < 8:
        raise DataError(f"{name}: not a NORB binary matrix (only {len(data)} bytes)")
    magic, ndim = (int(v) for v in np.frombuffer(data, dtype="<i4", count=2))
    if magic not in NORB_TYPES:
        raise DataError(f"{name}: not a NORB binary matrix (magic number 0x{magic & 0xFFFFFFFF:08X}; "
                        f"expected one of {[f'0x{m:08X}' for m in NORB_TYPES]})")
    if not 1 <= ndim <= 8:
        raise DataError(f"{name}: NORB header declares {ndim} dimensions")
    header = 8 + 4 * max(3, ndim)
    if len(data) < header:
        raise DataError(f"{name}: truncated NORB header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype="<i4", count=ndim, offset=8))
    if any(d < 0 for d in shape):
        raise DataError(f"{name}: negative dimension in NORB header {shape}")
    dtype = NORB_TYPES[magic]
    expected = math.prod(shape) * dtype.itemsize          # Python ints: no overflow on a huge header
    actual = len(data) - header
    if actual != expected:
        kind = "truncated NORB data" if actual < expected else "NORB size mismatch"
        raise DataError(f"{name}: {kind}: shape {shape} needs {expected} bytes, the file has {actual}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_norb(path: Path) -> np.ndarray:
    return parse_norb(read_bytes(path), str(path))


def resize(images: np.ndarray, size: int, method: str) -> np.ndarray:
    """Resize (..., H, W) uint8 images to size x size. `nearest` is what the ADGM code did
    (scipy.misc.imresize, i.e. PIL nearest); `bicubic` is the LVAE code's 32x32 files."""
    resample = {"nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}[method]
    flat = images.reshape(-1, *images.shape[-2:])
    out = np.empty((len(flat), size, size), dtype=np.uint8)
    for i, img in enumerate(flat):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), resample))
    return out.reshape(*images.shape[:-2], size, size)


def load_split(dat_path: Path, cat_path: Path, stereo: str, size: int | None, method: str):
    """Images (N, C, H, W) uint8 and labels (N,) int64.

    stereo="both": both cameras as 2 channels (the ADGM paper, 2 x 1024 features at 32x32).
    stereo="left_duplicated": the LVAE code's quirk (docs/data.md): only the left image, each
    example twice (2N rows, 1 channel).
    """
    images, labels = read_norb(dat_path), read_norb(cat_path).astype(np.int64).reshape(-1)
    if images.ndim != 4 or images.shape[1] != 2:
        raise DataError(f"{dat_path}: unexpected shape {images.shape}; expected (N, 2, H, W) stereo pairs")
    if images.dtype != np.uint8:
        raise DataError(f"{dat_path}: element type {images.dtype}; expected bytes (uint8)")
    check_images_labels(images, labels, len(CLASSES), str(dat_path), str(cat_path))
    if size is not None and size != images.shape[-1]:
        images = resize(images, size, method)
    if stereo == "left_duplicated":
        images = np.concatenate([images[:, :1], images[:, :1]])
        labels = np.concatenate([labels, labels])
    return np.ascontiguousarray(images), labels
