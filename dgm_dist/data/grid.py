"""PNG grids of images with their labels (`dgm-dist data inspect`, and later MLflow artifacts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dgm_dist.errors import DataError


def to_display(images: np.ndarray) -> np.ndarray:
    """(N, H, W), (N, H, W, 3) or (N, C, H, W) with C in {1, 2} -> uint8 (N, H, W[, 3]) for display.
    Stereo pairs (C = 2) are shown side by side."""
    x = images
    if x.ndim == 4 and x.shape[1] in (1, 2) and x.shape[-1] not in (3,):
        x = np.concatenate(list(np.moveaxis(x, 1, 0)), axis=-1)  # channels side by side
    if x.dtype != np.uint8:
        x = (np.clip(x.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    return x


def image_grid(images: np.ndarray, captions: list[str] | None = None, columns: int = 8,
               scale: int = 2, pad: int = 2) -> Image.Image:
    x = to_display(images)
    n, h, w = x.shape[:3]
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    caption_h = 12 if captions else 0
    cell_w, cell_h = w * scale + pad, h * scale + pad + caption_h
    mode = "RGB" if x.ndim == 4 else "L"
    grid = Image.new(mode, (columns * cell_w + pad, rows * cell_h + pad), color=255 if mode == "L" else (255,) * 3)
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for i in range(n):
        r, c = divmod(i, columns)
        tile = Image.fromarray(x[i]).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        grid.paste(tile, (pad + c * cell_w, pad + r * cell_h))
        if captions:
            draw.text((pad + c * cell_w, pad + r * cell_h + h * scale), captions[i][: w * scale // 6],
                      fill=0 if mode == "L" else (0, 0, 0), font=font)
    return grid


def save_grid(path: Path, images: np.ndarray, captions: list[str] | None = None, columns: int = 8) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images, captions, columns).save(path, format="PNG")
    except OSError as e:
        raise DataError(f"cannot write {path} ({e.strerror or e}); choose a writable --out path") from None
    return path
