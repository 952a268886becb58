"""The edge predictor's PNG decoder (edge/dgm_predict/png.py): every colour type and bit depth decodes as
Pillow reads it, and bombs and damaged files end in one error before anything large is inflated."""

import io
import struct
import zlib

import numpy as np
import pytest
from formats import write_png
from PIL import Image

from dgm_predict import png


def _pillow(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kw)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width, height, depth=8, colour=0, pixels=b"", crc_ok=True) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(pixels))
    if not crc_ok:
        idat = idat[:-4] + bytes(4)
    return png.SIGNATURE + ihdr + idat + _chunk(b"IEND", b"")


RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (13, 17), dtype=np.uint8)
RGBA8 = RNG.integers(0, 256, (13, 17, 4), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1", "I;16"])
def test_every_colour_type_decodes_as_pillow_reads_it(mode):
    if mode == "I;16":
        source = Image.fromarray(np.minimum(GREY8.astype(np.uint32) * 257 + 3, 65535).astype(np.uint16))
        expected = GREY8                                           # 16-bit -> 8-bit: nearest of v / 257
    else:
        source = Image.fromarray(RGBA8, "RGBA").convert(mode)
        expected = np.asarray(source.convert("RGB") if mode == "P" else source)
        if mode == "1":
            expected = expected.astype(np.uint8) * 255
    for optimize in (False, True):                                 # Pillow picks other row filters
        decoded = png.decode(_pillow(source, optimize=optimize), max_pixels=13 * 17)
        np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_bit_depths_scale_to_the_full_range(depth):
    top = (1 << depth) - 1
    values = np.arange(11 * 7) % (top + 1)
    bits = np.unpackbits(values.astype(np.uint8)[:, None], axis=1)[:, 8 - depth:].reshape(11, 7 * depth)
    rows = np.packbits(np.pad(bits, ((0, 0), (0, -bits.shape[1] % 8))), axis=1)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    decoded = png.decode(_png(7, 11, depth, 0, raw), max_pixels=77)
    np.testing.assert_array_equal(decoded, (values.reshape(11, 7) * 255 // top).astype(np.uint8))


def test_every_row_filter_is_undone(tmp_path):
    rng = np.random.default_rng(1)
    for shape in [(9, 7), (9, 7, 2), (9, 7, 3), (9, 7, 4)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        for filters in [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)]:
            decoded = png.read(write_png(tmp_path / "x.png", image, filters), max_pixels=63)
            assert np.array_equal(decoded, image), (shape, filters)


def test_a_bomb_is_refused_from_its_header_before_inflating():
    # 8000x8000 declared, and an IDAT that is not even zlib: the size error proves nothing was inflated
    bomb = png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0)) + \
        _chunk(b"IDAT", b"not zlib") + _chunk(b"IEND", b"")
    with pytest.raises(png.PNGError, match="8000x8000 pixels, more than the 784"):
        png.decode(bomb, max_pixels=784)


def test_pixel_data_beyond_the_header_stops_the_inflation():
    # the header says 28x28 but the stream holds 100 MB of zeros: refused after 785 x 28 + 1 bytes
    stream = zlib.compressobj(9)
    data = stream.compress(bytes(100 << 20)) + stream.flush()
    bomb = png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)) + \
        _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    with pytest.raises(png.PNGError, match="more pixel data than 28x28"):
        png.decode(bomb, max_pixels=784)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-20], "runs past the end|truncated"),
    (lambda b: b[:33] + struct.pack(">I", 1 << 30) + b[37:], "runs past the end"),    # IDAT length field
    (lambda b: b[:-16] + bytes(4) + b[-12:], "CRC mismatch"),
    (lambda b: b"GIF89a" + b[6:], "not a PNG"),
])
def test_damaged_files_are_one_error(damage, message):
    good = _png(4, 3, 8, 0, b"".join(b"\x00" + bytes(4) for _ in range(3)))
    assert png.decode(good, max_pixels=12).shape == (3, 4)
    with pytest.raises(png.PNGError, match=message):
        png.decode(damage(good), max_pixels=12)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.png"
    with open(path, "wb") as f:
        f.write(png.SIGNATURE)
        f.truncate(40 << 20)                                      # sparse: 40 MB claimed, nothing written
    with pytest.raises(png.PNGError, match="larger than any PNG of 784 pixels"):
        png.read(path, max_pixels=784)
