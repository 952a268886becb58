"""Subnormal floats flushed to zero on CPU (docs/training.md, *Subnormal floats*).

Late in a semi-supervised run the classifier's cross-entropy on its 100 labels is ~1e-3, and
gradients of order 1e-20 appear; Adam's second moment squares them into float32's subnormal range
(|v| < 1.2e-38), where x86 arithmetic takes a slow path. Flush-to-zero (FTZ) and denormals-are-zero
(DAZ) treat those values as 0, a change far below any float32 rounding that matters to training.

The flags live in each thread's MXCSR register, and a thread copies them from the thread that
creates it. PyTorch's intra-op (OpenMP) pool is created by the first parallel operation, so the
flags must be set before it: at the top of the training worker. `flush_denormals` checks that
every thread of the pool took them.
"""

from __future__ import annotations

import torch

_PROBE = 1 << 20        # elements: several of ATen's parallel grains, so every thread takes a share


def every_thread_flushes() -> bool:
    """True when a parallel multiply maps a subnormal to 0 in every thread's share. The subnormal
    (the smallest, bit pattern 1) is made and the product read as integers: float arithmetic or a
    float comparison on a flushing thread would see 0 either way."""
    smallest = torch.full((_PROBE,), 1, dtype=torch.int32).view(torch.float32)
    return not bool(torch.count_nonzero((smallest * 1.0).view(torch.int32)))


def flush_denormals(on: bool = True) -> bool | None:
    """Set FTZ/DAZ on this thread (and the threads it will create). Returns whether every intra-op
    thread flushes (None when `on` is False or the CPU has no such flags)."""
    if not torch.set_flush_denormal(on) or not on:
        return None
    return every_thread_flushes()
