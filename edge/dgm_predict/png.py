"""A bounded PNG decoder in numpy and zlib only (docs/export.md, *Inputs*): every colour type and bit
depth of the PNG standard, non-interlaced, to uint8.

Bounded before anything is allocated: the declared size (IHDR) is checked against the caller's
limit before a byte is inflated, inflation stops at the size the header implies, and every chunk's
length and CRC are checked, so a decompression bomb or a damaged file ends in one error in
microseconds. Samples are scaled to 8 bits (16-bit: the nearest of v / 257; 1-, 2- and 4-bit grey:
v * 255 / (2^depth - 1)); a palette image becomes RGB (its transparency is dropped)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type -> (samples per pixel, allowed bit depths)
COLOUR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)), 6: (4, (8, 16))}


class PNGError(ValueError):
    """A file that is not a PNG this decoder reads, or one too large for the caller's limit."""


def read(path, max_pixels: int) -> np.ndarray:
    """`decode` of a file, whose size is checked first: a PNG holds at most its raw pixels plus
    deflate's few bytes per block, and metadata chunks (room for 16 MiB of them)."""
    size = path.stat().st_size
    if size > max_pixels * 8 * 1.01 + (16 << 20):
        raise PNGError(f"a file of {size} bytes, larger than any PNG of {max_pixels} pixels")
    return decode(path.read_bytes(), max_pixels)


def sniff(path) -> bool:
    """Whether a file starts with the PNG signature."""
    with open(path, "rb") as f:
        return f.read(len(SIGNATURE)) == SIGNATURE


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG bytes -> uint8 (H, W) for grey, (H, W, C) otherwise; PNGError for anything else."""
    if not data.startswith(SIGNATURE):
        raise PNGError("not a PNG file")
    chunks = _chunks(data)
    kind, ihdr = next(chunks, (None, b""))
    if kind != b"IHDR" or len(ihdr) != 13:
        raise PNGError("a damaged PNG (no IHDR chunk first)")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", ihdr)
    if colour not in COLOUR_TYPES or depth not in COLOUR_TYPES[colour][1] or compression or filtering:
        raise PNGError(f"a damaged PNG (colour type {colour} with bit depth {depth})")
    if interlace:
        raise PNGError("an interlaced PNG; save it without interlacing")
    if not width or not height:
        raise PNGError(f"a PNG of {width}x{height} pixels")
    if width * height > max_pixels:
        raise PNGError(f"a PNG of {width}x{height} pixels, more than the {max_pixels} this predictor decodes")
    samples = COLOUR_TYPES[colour][0]
    stride = (width * samples * depth + 7) // 8                 # bytes per row, without its filter byte
    palette, inflater, raw = None, zlib.decompressobj(), bytearray()
    expected = height * (stride + 1)
    for kind, body in chunks:
        if kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3) if len(body) % 3 == 0 else None
        elif kind == b"IDAT":
            try:
                raw += inflater.decompress(inflater.unconsumed_tail + body, expected + 1 - len(raw))
            except zlib.error as e:
                raise PNGError(f"a damaged PNG ({e})") from None
            if len(raw) > expected:
                raise PNGError(f"a damaged PNG (more pixel data than {width}x{height})")
        elif kind == b"IEND":
            break
    if len(raw) != expected:
        raise PNGError(f"a damaged PNG (pixel data of {len(raw)} bytes for {width}x{height}, expected {expected})")
    rows = np.frombuffer(bytes(raw), np.uint8).reshape(height, stride + 1)
    bpp = max(1, samples * depth // 8)                          # the filters' byte distance to the left pixel
    image = _samples(_unfilter(rows[:, 0], rows[:, 1:], bpp), width, samples, depth)
    if colour == 0 and depth < 8:
        image = image * np.uint8(255 // ((1 << depth) - 1))        # 1 -> 255, 2 -> 85, 4 -> 17: exact
    if colour == 3:
        if palette is None or image.max() >= len(palette):
            raise PNGError("a damaged PNG (palette missing or too short)")
        return palette[image[..., 0]]
    return image[..., 0] if samples == 1 else image


def _chunks(data: bytes):
    """(type, body) of each chunk, its length and CRC checked."""
    pos = len(SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise PNGError("a damaged PNG (truncated chunk header)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise PNGError(f"a damaged PNG (chunk {kind!r} runs past the end of the file)")
        body = data[pos + 8:end]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[end:end + 4])[0]:
            raise PNGError(f"a damaged PNG (CRC mismatch in chunk {kind!r})")
        yield kind, body
        pos = end + 4


def _unfilter(filters: np.ndarray, rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters: None, Sub, Up in numpy; Average and Paeth, whose every byte needs
    the decoded byte to its left, byte by byte in Python ints."""
    if filters.size and filters.max() > 4:
        raise PNGError(f"a damaged PNG (unknown row filter {int(filters.max())})")
    out = np.empty_like(rows)
    previous = np.zeros(rows.shape[1], np.uint8)
    for i, f in enumerate(filters.tolist()):
        row = rows[i]
        if f == 0:
            cur = row
        elif f == 2:
            cur = row + previous                                # uint8 arithmetic wraps modulo 256
        elif f == 1:
            padded = np.zeros((-(-len(row) // bpp)) * bpp, np.uint8)
            padded[:len(row)] = row
            cur = np.cumsum(padded.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)[:len(row)]
        else:
            cur = np.frombuffer(_left_dependent(row.tobytes(), previous.tobytes(), bpp, f), np.uint8)
        out[i] = previous = cur
    return out


def _left_dependent(row: bytes, up: bytes, bpp: int, f: int) -> bytearray:
    cur = bytearray(row)
    for x in range(len(cur)):
        left = cur[x - bpp] if x >= bpp else 0
        if f == 3:
            pred = (left + up[x]) >> 1
        else:
            b, c = up[x], up[x - bpp] if x >= bpp else 0
            p = left + b - c
            pa, pb, pc = abs(p - left), abs(p - b), abs(p - c)
            pred = left if pa <= pb and pa <= pc else (b if pb <= pc else c)
        cur[x] = (cur[x] + pred) & 0xFF
    return cur


def _samples(rows: np.ndarray, width: int, samples: int, depth: int) -> np.ndarray:
    """Unfiltered rows (H, stride) -> uint8 (H, W, samples), scaled to 8 bits (palette indices kept)."""
    height = len(rows)
    if depth == 8:
        return rows[:, :width * samples].reshape(height, width, samples)
    if depth == 16:
        wide = rows[:, :width * samples * 2].reshape(height, width, samples, 2).astype(np.uint32)
        return (((wide[..., 0] << 8 | wide[..., 1]) * 255 + 32767) // 65535).astype(np.uint8)
    bits = np.unpackbits(rows, axis=1).reshape(height, -1, depth)[:, :width]      # (H, W, depth), MSB first
    values = (bits * (1 << np.arange(depth - 1, -1, -1, dtype=np.uint8))).sum(-1, dtype=np.uint8)
    return values[..., None]
