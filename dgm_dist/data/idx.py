"""IDX files (MNIST, Fashion-MNIST): http://yann.lecun.com/exdb/mnist/ "FILE FORMATS".

Header: two zero bytes, a type code, the number of dimensions; then one big-endian uint32 per
dimension; then the data, big-endian, row-major.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dgm_dist.data.files import read_bytes
from dgm_dist.errors import DataError

IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array in native byte order."""
    if len(data) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DataError(
            f"{name}: not an IDX file (magic number 0x{data[:4].hex()}; expected 0x0000 followed by a "
            f"type code in {sorted(hex(t) for t in IDX_TYPES)} and the number of dimensions)")
    dtype, ndim = IDX_TYPES[data[2]], data[3]
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize          # Python ints: no overflow on a huge header
    actual = len(data) - header
    if actual < expected:
        raise DataError(
            f"{name}: truncated IDX data: shape {shape} needs {expected} bytes, the file has {actual}")
    if actual > expected:
        raise DataError(
            f"{name}: IDX size mismatch: shape {shape} needs {expected} bytes, the file has {actual} "
            "(wrong dimensions in the header?)")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def declared_size(head: bytes) -> int:
    """The whole file's size as its header declares it; no valid header: the bytes seen so far (the
    parser then says what is wrong with them)."""
    if len(head) < 4 or head[0] or head[1] or head[2] not in IDX_TYPES or len(head) < 4 + 4 * head[3]:
        return len(head)
    dims = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(head[3])]
    return 4 + 4 * len(dims) + math.prod(dims) * IDX_TYPES[head[2]].itemsize


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, plain or gzipped (inflated no further than its header declares)."""
    return parse_idx(read_bytes(path, declared_size), str(path))

