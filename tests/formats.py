"""Writers of small files in the real public formats, for tests (independent of the readers)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import scipy.io

IDX_CODES = {np.dtype(np.uint8): (0x08, ">u1"), np.dtype(np.int32): (0x0C, ">i4"),
             np.dtype(np.float32): (0x0D, ">f4")}
NORB_CODES = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype(np.int32): 0x1E3D4C54}


def _write(path: Path, data: bytes, gz: bool) -> Path:
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    code, big = IDX_CODES[array.dtype]
    return (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(big).tobytes())


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    return _write(path, idx_bytes(array), gz)


def norb_bytes(array: np.ndarray) -> bytes:
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    return struct.pack(f"<ii{len(dims)}i", NORB_CODES[array.dtype], array.ndim, *dims) + array.astype(
        array.dtype.newbyteorder("<")).tobytes()


def write_norb(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    return _write(path, norb_bytes(array), gz)


def fake_digits(n: int, seed: int = 0, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 'digits' whose class is readable from the pixels: a filled square whose value
    is 20 * (class + 1), so tests can check which class sits where."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % num_classes).astype(np.uint8)
    rng.shuffle(y)
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    x[:, 4:24, 4:24] = (20 * (y.astype(np.int64) + 1))[:, None, None].astype(np.uint8)
    return x, y


def write_mnist_dir(directory: Path, n_train: int = 200, n_test: int = 50, gz: bool = True,
                    seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        x, y = fake_digits(n, s)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", y, gz)
    return directory


def write_svhn_mat(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)   # 10 stands for the digit 0
    scipy.io.savemat(str(path), {"X": x, "y": y})
    return path


def write_chardata(path: Path, images_train: np.ndarray, images_test: np.ndarray) -> Path:
    """Burda's chardata.mat layout: one column-major flattened 28x28 image per column."""
    def columns(imgs):
        return imgs.transpose(0, 2, 1).reshape(len(imgs), 784).T.astype(np.float64)

    def onehot(n):
        t = np.zeros((50, n))
        t[np.arange(n) % 50, np.arange(n)] = 1
        return t
    scipy.io.savemat(str(path), {"data": columns(images_train), "target": onehot(len(images_train)),
                                 "testdata": columns(images_test), "testtarget": onehot(len(images_test))})
    return path


def _png_filter(kind: int, row: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
    """PNG's row filters (the spec's section 9), applied here to encode; the reader must undo them."""
    r, p = row.astype(np.int32), previous.astype(np.int32)
    left = np.concatenate([np.zeros(bpp, np.int32), r[:-bpp]])
    up_left = np.concatenate([np.zeros(bpp, np.int32), p[:-bpp]])
    if kind == 0:
        pred = np.zeros_like(r)
    elif kind == 1:
        pred = left
    elif kind == 2:
        pred = p
    elif kind == 3:
        pred = (left + p) // 2
    else:
        est = left + p - up_left
        pa, pb, pc = abs(est - left), abs(est - p), abs(est - up_left)
        pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, p, up_left))
    return ((r - pred) & 0xFF).astype(np.uint8)


def write_png(path: Path, image: np.ndarray, filters=(0, 1, 2, 3, 4)) -> Path:
    """An 8-bit grey (H, W) or RGB/RGBA (H, W, 3|4) PNG, row i filtered with filters[i % len]."""
    import zlib

    colour = {2: 0, 3: {3: 2, 4: 6, 2: 4}.get(image.shape[-1])}[image.ndim] if image.ndim == 3 else 0
    bpp = 1 if image.ndim == 2 else image.shape[-1]
    h, w = image.shape[:2]
    rows = image.reshape(h, -1)
    raw, previous = b"", np.zeros(rows.shape[1], np.uint8)
    for i, row in enumerate(rows):
        kind = filters[i % len(filters)]
        raw += bytes([kind]) + _png_filter(kind, row, previous, bpp).tobytes()
        previous = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                           + chunk(b"IEND", b""))
    return Path(path)
