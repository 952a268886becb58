"""Reading raw dataset files: plain or gzip-compressed, with errors that name the file."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path

from dgm_dist.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"


HEAD = 1024                 # decompressed bytes that hold any header these formats have
MAX_DECLARED = 8 << 30      # bytes a header may declare: far beyond any dataset file here (MNIST: 47 MB)


def read_bytes(path: Path, declared_size: Callable[[bytes], int] | None = None) -> bytes:
    """The file's content, decompressed when it is gzip (detected by its magic, not its name).
    `declared_size(head)` gives the size the file's header declares (from its first HEAD bytes):
    a gzipped file is then inflated no further than that (a bomb of zeros stops there, and the
    parser reports the size mismatch), and a declared size beyond MAX_DECLARED is refused first."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        if declared_size is None:
            return gzip.decompress(raw)
        inflater = zlib.decompressobj(wbits=31)                    # one gzip member
        out = bytearray(inflater.decompress(raw, HEAD))
        limit = declared_size(bytes(out))
        if limit > MAX_DECLARED:
            raise DataError(f"{path}: its header declares {limit} bytes of data, more than any dataset file "
                            f"({MAX_DECLARED >> 30} GiB); the file is damaged or not what its name says")
        # one byte more than declared shows an oversized file (max_length 0 would mean no bound)
        out += inflater.decompress(inflater.unconsumed_tail, max(1, limit + 1 - len(out)))
        if not inflater.eof and len(out) <= limit:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        return bytes(out)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: corrupt gzip data ({e}); the file is truncated or damaged: delete it and "
            "fetch it again") from None


def find_file(directory: Path, stem: str) -> Path | None:
    """`directory/stem` or `directory/stem.gz`, whichever exists (plain first)."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None
