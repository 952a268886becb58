"""Cluttered digit sequences, following the RNN-SPN paper's `create_mnist_sequence.py`
(docs/data.md), generalised to any 28x28 digit source and any canvas/sequence size.

Per image: `digits` digits drawn with replacement are placed side by side (no gap) from a base x
offset (canvas - digits*28)//2 plus a shift in [-base, base); a y offset drawn in [0, canvas) and a
"slope" in [-14, 14) move digit i down by floor(i * slope), clamped into the canvas. Clutter:
`clutter` patches, each a random `clutter_size` crop of a random *training* digit (a pool of
`clutter_pool` crops drawn once, used for every split), are pasted (overwriting) onto an empty
canvas, which is then added to the digits and clipped. Labels are the digit classes left to right.

Differences from the original script (deliberate): numpy's PCG64 generator instead of the legacy
global seed (the original's own dataset is not reproducible from its script, docs/data.md), pixels
kept as uint8 (the saturating sum equals the original's float clip exactly), the crop pool drawn
from the training digits once (the original listed the training set twice until commit d9174d5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dgm_dist.data.holdout import default_holdout
from dgm_dist.errors import ConfigError

DIGIT = 28


@dataclass(frozen=True)
class ClutterParams:
    canvas: int = 100
    digits: int = 3
    clutter: int = 8
    clutter_size: int = 9
    clutter_pool: int = 100_000
    n_train: int = 60_000
    n_valid: int = 10_000
    n_test: int = 10_000
    valid_digits: int | None = None  # the last training digits, kept for validation sequences (None: the
                                     # smaller of 10 000 and a sixth of the training digits)
    seed: int = 1234

    def validate(self, n_source_train: int) -> None:
        if self.digits < 1:
            raise ConfigError(f"cluttered.digits={self.digits}: need at least 1 digit per image")
        if self.canvas < self.digits * DIGIT:
            raise ConfigError(f"cluttered.canvas={self.canvas} is too small for {self.digits} digits of "
                              f"{DIGIT} px side by side; use canvas >= {self.digits * DIGIT}")
        if not 1 <= self.clutter_size <= DIGIT - 1 or self.clutter_size > self.canvas - 1:
            raise ConfigError(f"cluttered.clutter_size={self.clutter_size}: allowed 1..{DIGIT - 1}")
        for name in ("clutter", "n_train", "n_valid", "n_test"):
            if getattr(self, name) < 0:
                raise ConfigError(f"cluttered.{name}={getattr(self, name)}: must be >= 0")
        if self.clutter > 0 and self.clutter_pool < 1:
            raise ConfigError(f"cluttered.clutter_pool={self.clutter_pool}: must be >= 1 when clutter > 0")
        if self.valid_digits is not None and not 0 < self.valid_digits < n_source_train:
            raise ConfigError(f"cluttered.valid_digits={self.valid_digits}: must be in 1..{n_source_train - 1} "
                              f"(the source has {n_source_train} training digits)")

    def as_dict(self) -> dict:
        return asdict(self)


def crop_pool(train_digits: np.ndarray, p: ClutterParams, rng: np.random.Generator) -> np.ndarray:
    """`clutter_pool` random crops of random training digits: (pool, s, s)."""
    s = p.clutter_size
    src = rng.integers(0, len(train_digits), p.clutter_pool)
    cy = rng.integers(0, DIGIT - s, p.clutter_pool)
    cx = rng.integers(0, DIGIT - s, p.clutter_pool)
    offs = np.arange(s)
    return train_digits[src[:, None, None], (cy[:, None] + offs)[:, :, None], (cx[:, None] + offs)[:, None, :]]


def digit_positions(n: int, p: ClutterParams, rng: np.random.Generator) -> np.ndarray:
    """Top-left (y, x) of every digit: (n, digits, 2)."""
    base = (p.canvas - p.digits * DIGIT) // 2
    shift = rng.integers(-base, base, n) if base > 0 else np.zeros(n, dtype=np.int64)
    y0 = rng.integers(0, p.canvas, n)
    slope = rng.integers(-(DIGIT // 2), DIGIT // 2, n)
    i = np.arange(p.digits)
    ys = np.clip(y0[:, None] + np.floor(i[None, :] * slope[:, None]).astype(np.int64), 0, p.canvas - DIGIT)
    xs = (base + shift)[:, None] + i[None, :] * DIGIT
    return np.stack([ys, xs], axis=-1)


def make_split(digits: np.ndarray, labels: np.ndarray, n: int, crops: np.ndarray | None,
               p: ClutterParams, rng: np.random.Generator, chunk: int = 10_000):
    """n cluttered sequences from `digits`: images (n, canvas, canvas) uint8, labels (n, digits)
    int64 left to right, positions (n, digits, 2) int16."""
    picks = rng.integers(0, len(digits), (n, p.digits))
    pos = digit_positions(n, p, rng)
    if crops is not None and p.clutter > 0:
        which = rng.integers(0, len(crops), (n, p.clutter))
        cpos = rng.integers(0, p.canvas - p.clutter_size, (n, p.clutter, 2))
    images = np.empty((n, p.canvas, p.canvas), dtype=np.uint8)
    d_off, c_off = np.arange(DIGIT), np.arange(p.clutter_size)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        rows = np.arange(sl.stop - sl.start)[:, None, None]
        canvas = np.zeros((len(rows), p.canvas, p.canvas), dtype=np.uint16)
        if crops is not None and p.clutter > 0:
            for k in range(p.clutter):  # later patches overwrite earlier ones, as in the original
                y, x = cpos[sl, k, 0], cpos[sl, k, 1]
                canvas[rows, (y[:, None] + c_off)[:, :, None], (x[:, None] + c_off)[:, None, :]] = crops[which[sl, k]]
        placed = np.zeros_like(canvas)
        for i in range(p.digits):
            y, x = pos[sl, i, 0], pos[sl, i, 1]
            placed[rows, (y[:, None] + d_off)[:, :, None], (x[:, None] + d_off)[:, None, :]] = digits[picks[sl, i]]
        images[sl] = np.minimum(canvas + placed, 255)
    return images, labels[picks].astype(np.int64), pos.astype(np.int16)


def generate(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
             p: ClutterParams) -> dict[str, np.ndarray]:
    """Train/valid/test cluttered sequences from a 28x28 digit source (uint8 images)."""
    p.validate(len(train_x))
    cut = len(train_x) - (default_holdout(len(train_x)) if p.valid_digits is None else p.valid_digits)
    crops = crop_pool(train_x, p, np.random.default_rng([p.seed, 0])) if p.clutter > 0 else None
    out: dict[str, np.ndarray] = {}
    sources = {"train": (train_x[:cut], train_y[:cut], p.n_train),
               "valid": (train_x[cut:], train_y[cut:], p.n_valid),
               "test": (test_x, test_y, p.n_test)}
    for k, (split, (x, y, n)) in enumerate(sources.items(), start=1):
        images, labels, pos = make_split(x, y, n, crops, p, np.random.default_rng([p.seed, k]))
        out[f"{split}_x"], out[f"{split}_y"], out[f"{split}_pos"] = images, labels, pos
    return out
