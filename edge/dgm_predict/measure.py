"""What a model is judged by, in numpy alone: the training loop's test metrics and latency. The
exporter (dgm_dist/export/checks.py) and `dgm-predict --check` on the device use these same
functions, so the figures in a card and on the device are computed alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np


def metrics(log_probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The training loop's test metrics: `error` for one label per image; `per_digit_error` and
    `sequence_error` for sequences."""
    wrong = log_probs.argmax(-1) != labels
    if wrong.ndim == 1:
        return {"error": float(wrong.mean())}
    return {"per_digit_error": float(wrong.mean()), "sequence_error": float(wrong.any(-1).mean())}


def latency_ms(fn: Callable, x: np.ndarray, seconds: float = 1.0, min_runs: int = 5) -> float:
    """Median wall time of one call, after a warm-up call; runs for about `seconds`."""
    fn(x)
    times: list[float] = []
    budget = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < budget:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def in_batches(fn: Callable, x: np.ndarray, static: int | None = None, chunk: int = 250) -> list[np.ndarray]:
    """`fn` (a list of outputs per call) over all of `x`: in chunks of `chunk`, or of exactly `static`
    images for a graph exported with a static batch (the last chunk padded with copies of its last
    image, the padding's outputs dropped)."""
    size = static or chunk
    parts: list[list[np.ndarray]] = []
    for i in range(0, len(x), size):
        part = x[i:i + size]
        n = len(part)
        if static and n < static:
            part = np.concatenate([part, np.repeat(part[-1:], static - n, axis=0)])
        parts.append([o[:n] for o in fn(np.ascontiguousarray(part))])
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def batch_sizes(static: int | None, wanted: tuple[int, ...] = (1, 64)) -> tuple[int, ...]:
    """The batch sizes a graph can be timed or checked at: `wanted`, or its one static batch."""
    return (static,) if static else wanted
