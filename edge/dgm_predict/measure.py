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
