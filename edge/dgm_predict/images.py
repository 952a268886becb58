"""Images for the edge predictor (docs/export.md, *Inputs*): which files a command line names, how
an image file becomes uint8 pixels, and how it is brought to the model's input size.

- Names: a file; a directory (its image and .npy files, sorted, not recursive); a glob pattern
  (`*`, `?`, `[`; sorted), for shells that do not expand it.
- Decoding: PNG with the bounded decoder of png.py, or with Pillow when it is installed (faster on
  large images) — Pillow also reads JPEG, BMP, GIF, TIFF and WebP. Either way the declared size is
  checked before the pixels are decoded.
- Resizing: an image of another size is resampled to the model's by area averaging (each output
  pixel is the mean of the input area it covers; `RESIZE` in the model card), the same numpy code
  whichever decoder read it. With `--no-resize` it is an error instead.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path

import numpy as np

from dgm_predict import png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")
# The largest image decoded for resizing: 16.8 megapixels (4096 x 4096), about 0.1 s to resample.
# Without resizing the limit is the model's own input size.
MAX_SOURCE_PIXELS = 4096 * 4096
RESIZE = {"method": "area", "fit": "stretch"}     # what cards exported before it was stated mean


class InputError(ValueError):
    """A name that matches nothing, or an image that cannot be read; one line for the user."""


# ---- names ----------------------------------------------------------------------------------------
def expand(names: list[str]) -> list[Path]:
    """The files the command line names, in order: directories and glob patterns expanded, sorted."""
    found: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            if not inside:
                raise InputError(f"{name}: a directory with no {', '.join(INPUT_SUFFIXES)} files")
            found += inside
        elif not path.exists() and glob.has_magic(name):
            matched = sorted(Path(p) for p in glob.glob(name) if Path(p).is_file())
            if not matched:
                raise InputError(f"{name}: no file matches this pattern")
            found += matched
        else:
            found.append(path)
    return found


# ---- decoding -------------------------------------------------------------------------------------
def pillow_available() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def decode(path: Path, max_pixels: int, decoder: str = "auto") -> np.ndarray:
    """uint8 (H, W) or (H, W, C) of an image file, its declared size at most max_pixels.
    decoder: "auto" (Pillow when installed), "builtin" (PNG only) or "pillow"."""
    use_pillow = decoder == "pillow" or (decoder == "auto" and pillow_available())
    if use_pillow:
        return _pillow(path, max_pixels)
    if path.suffix.lower() != ".png" and not png.sniff(path):
        raise InputError(f"{path}: not a PNG file; other image formats need Pillow: pip install "
                         f"'dgm-predict[pillow]' (or give a .png image or a .npy array)")
    try:
        return png.read(path, max_pixels)
    except png.PNGError as e:
        raise InputError(f"{path}: {e}" + (" (give a .png image or a .npy array)"
                                           if str(e) == "not a PNG file" else "")) from None


def _pillow(path: Path, max_pixels: int) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError("--decoder pillow needs Pillow: pip install 'dgm-predict[pillow]'") from None
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None     # our own limit, checked below
    try:
        with Image.open(path) as image:                         # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(f"{path}: an image of {width}x{height} pixels, more than the {max_pixels} "
                                 f"this predictor decodes")
            return _to_uint8(image)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file Pillow reads (give an image or a .npy array)") from None
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: a damaged image ({str(e)[:200]})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def size(path: Path, decoder: str = "auto") -> tuple[int, int] | None:
    """(width, height) from the file's header alone, or None where it cannot be read (decode then
    says why): lets --no-resize refuse an image before its pixels are decoded."""
    if png.sniff(path):
        with open(path, "rb") as f:
            head = f.read(24)
        return (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) \
            if head[12:16] == b"IHDR" else None
    if decoder == "builtin" or not pillow_available():
        return None
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # noqa: BLE001 -- any unreadable file: decode reports it
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _to_uint8(image) -> np.ndarray:
    """Pillow's modes -> what png.py returns for the same file: grey (H, W), RGB(A) (H, W, C),
    16-bit samples to the nearest of v / 257, a palette to RGB(A)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.int64)
        return np.rint(wide.clip(0, 65535) / 257).astype(np.uint8)
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if mode == "LA":
        return np.asarray(image, dtype=np.uint8)[..., 0]
    if mode in ("RGB", "RGBA"):
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB"),
                      dtype=np.uint8)


# ---- resizing -------------------------------------------------------------------------------------
def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in): output pixel j averages the input interval [j, j+1) * size_in / size_out,
    each input pixel weighted by the length it covers (rows sum to 1)."""
    scale = size_in / size_out
    lo = np.arange(size_out)[:, None] * scale
    edges = np.arange(size_in + 1)[None, :]
    covered = np.clip(np.minimum(edges[:, 1:], lo + scale) - np.maximum(edges[:, :-1], lo), 0, None)
    return (covered / covered.sum(1, keepdims=True)).astype(np.float64)


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W[, C]) -> uint8 (height, width[, C]) by area averaging (stretch: no crop, no pad)."""
    rows, cols = area_weights(pixels.shape[0], height), area_weights(pixels.shape[1], width)
    out = np.tensordot(rows, pixels.astype(np.float64), axes=(1, 0))      # (height, W[, C]), by BLAS
    out = np.moveaxis(np.tensordot(cols, out, axes=(1, 1)), 0, 1)         # (height, width[, C])
    return np.rint(out).clip(0, 255).astype(np.uint8)


def source_limit(shape: list[int], resize_allowed: bool) -> int:
    """The most pixels an image may declare: the model's input, or MAX_SOURCE_PIXELS to resize."""
    return max(math.prod(shape[:2]), MAX_SOURCE_PIXELS) if resize_allowed else math.prod(shape[:2])
