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


# float32 tensors per parameter: the weights and their gradients, plus the optimizer's state
# (Adam: two moments; RMSprop: one running average; plain SGD: none)
_STATE = {"adam": 2, "rmsprop": 1, "rmsprop_lasagne": 1, "sgd": 0}


def check_model_memory(cfg, info, workers_here: int) -> int:
    """Refuse, before anything is allocated, a model whose weights, gradients and optimizer state
    would not fit in this machine's available memory, times the workers it hosts (0: they run on a
    cluster's nodes, not checked here). The model is built on PyTorch's meta device, which records
    shapes only. Returns the parameter count.
    Activations are not counted: this catches sizes that cannot work, not every run that will not."""
    import torch

    from dgm_dist.errors import ConfigError
    from dgm_dist.models.registry import build_model

    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(cfg.model, info).parameters())
    if workers_here == 0:              # the workers run on a cluster's nodes, not here
        return params
    need = params * 4 * (2 + _STATE.get(cfg.optim.optimizer, 2)) * max(1, workers_here)
    have = available_memory()
    if need > have:
        each = f" on each of {workers_here} workers" if workers_here > 1 else ""
        raise ConfigError(f"model '{cfg.model.name}' has {params:,} parameters: its weights, gradients and "
                          f"{cfg.optim.optimizer} state need {need / 2**30:,.1f} GiB{each}, and this machine has "
                          f"{have / 2**30:.1f} GiB available; make model.hidden, model.latent or model.channels "
                          "smaller")
    return params


def available_memory() -> int:
    """Bytes of memory available for new allocations: Linux's MemAvailable (free memory plus what the
    kernel can reclaim), else the free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
