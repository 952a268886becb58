"""Does a run fit this machine? The one check behind `dgm-dist train` and a study's trial resources,
made before Ray starts (a running cluster is checked once joined)."""

from __future__ import annotations

import os


def shortfall(workers: int, cpus_per_worker: float, gpus_per_worker: float = 0.0) -> tuple[str, float, int] | None:
    """What this machine lacks for `workers` workers of the given size: ("GPUs" or "CPUs", needed,
    available), or None when they fit. GPUs are counted only when asked for."""
    if gpus_per_worker > 0:
        import torch

        gpus = torch.cuda.device_count()
        if workers * gpus_per_worker > gpus:
            return "GPUs", workers * gpus_per_worker, gpus
    cpus = os.cpu_count() or 1
    if workers * cpus_per_worker > cpus:
        return "CPUs", workers * cpus_per_worker, cpus
    return None
