import gzip
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from formats import idx_bytes, write_idx

from dgm_dist.data.idx import parse_idx, read_idx
from dgm_dist.errors import DataError


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_roundtrip(tmp_path, gz, dtype):
    a = (np.arange(2 * 3 * 4).reshape(2, 3, 4) - 5).astype(dtype) if dtype != np.uint8 else \
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a-idx3-ubyte", a, gz)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)


def test_gzip_detected_by_content_not_name(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    p = tmp_path / "plain-name"
    p.write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(p), a)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x01\x02" + b[2:], "not an IDX file"),
    (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),
    (lambda b: b[:2], "not an IDX file"),
    (lambda b: b[:9], "truncated IDX header"),
    (lambda b: b[:-5], "truncated IDX data"),
    (lambda b: b + b"\x00" * 3, "size mismatch"),
    (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
])
def test_corrupt_idx_names_file_and_problem(tmp_path, mutate, message):
    data = idx_bytes(np.zeros((4, 5, 6), dtype=np.uint8))
    p = tmp_path / "bad-idx"
    p.write_bytes(mutate(data))
    with pytest.raises(DataError, match=message) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_truncated_gzip(tmp_path):
    p = tmp_path / "x.gz"
    noise = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    full = gzip.compress(idx_bytes(noise))
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="corrupt gzip") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope")


def test_parse_big_endian_values():
    a = np.array([1, 256, -2], dtype=np.int32)
    assert parse_idx(idx_bytes(a)).tolist() == [1, 256, -2]


def _gzip_bomb(path, header: bytes, zeros_mb: int):
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)                 # gzip framing
    with open(path, "wb") as f:
        f.write(deflate.compress(header))
        for _ in range(zeros_mb):
            f.write(deflate.compress(bytes(1 << 20)))
        f.write(deflate.flush())
    return path


def test_a_gzipped_bomb_is_inflated_no_further_than_its_header_declares(tmp_path):
    # 10 images of 28x28 declared, 64 MB of zeros in the stream (64 KB on disk)
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 10, 28, 28)
    path = _gzip_bomb(tmp_path / "bomb-idx3-ubyte.gz", header, 64)
    tracemalloc.start()
    with pytest.raises(DataError, match="IDX size mismatch: shape \\(10, 28, 28\\) needs 7840 bytes"):
        read_idx(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated: the stream was inflated past its header"


def test_a_header_declaring_more_than_any_dataset_is_refused_before_inflating(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 10**6, 10**6, 10**6)
    path = _gzip_bomb(tmp_path / "huge-idx3-ubyte.gz", header, 1)
    with pytest.raises(DataError, match=r"declares 1000000000000000016 bytes of data, more than any dataset file"):
        read_idx(path)
