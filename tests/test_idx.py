import gzip

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
