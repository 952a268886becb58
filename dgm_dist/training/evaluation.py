"""Evaluation on a whole split, sharded across workers without padding and all-reduced, so every
reported figure is for the full set whatever the worker count.

(A `DistributedSampler` pads the last shard by repeating examples; evaluating through it would
count some examples twice. Here each rank takes a contiguous, disjoint slice instead.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist

from dgm_dist.data.pixels import to_unit


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's slice: disjoint, covering 0..n, sizes differing by at most one."""
    return n * rank // world, n * (rank + 1) // world


@torch.no_grad()
def evaluate_sums(batch_sums: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
                  x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device | str = "cpu",
                  progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Per-example averages of the sums `batch_sums(xb, yb)` returns (e.g. `nll_sum`, `error_sum`;
    scalars or vectors) over the whole of (x, y). Accumulated in float64 and summed over ranks when a process group
    is running; keys lose their `_sum` suffix (`errors` stays `errors` as a rate). `progress(done, total)`
    is called after each batch with this rank's counts."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    start, stop = shard_bounds(len(x), rank, world)
    totals: dict[str, torch.Tensor] = {}
    for i in range(start, stop, batch_size):
        j = min(stop, i + batch_size)
        for k, v in batch_sums(x[i:j].to(device), y[i:j].to(device)).items():
            totals[k] = totals.get(k, torch.zeros((), dtype=torch.float64, device=device)) + v.double()
        if progress is not None:
            progress(j - start, stop - start)
    keys = sorted(totals)
    if world > 1:
        # every rank must reduce the same keys and shapes in the same order, even one with an empty slice
        names = [None] * world
        dist.all_gather_object(names, {k: tuple(totals[k].shape) for k in keys})
        shapes = {k: s for ks in names for k, s in ks.items()}
        keys = sorted(shapes)
        packed = torch.cat([totals.get(k, torch.zeros(shapes[k], dtype=torch.float64, device=device)).reshape(-1)
                            for k in keys])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        sizes = [math.prod(shapes[k]) for k in keys]
        totals = {k: t.reshape(shapes[k]) for k, t in zip(keys, packed.split(sizes), strict=True)}
    # scalars as floats; vector sums (per-unit statistics) as lists
    return {k.removesuffix("_sum"): (totals[k] / len(x)).tolist() for k in keys}


@torch.no_grad()
def evaluate_model(net, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device | str = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> dict[str, float | list]:
    """A model's figures on the whole of (x, y), stored pixels in: its `eval_sums` per batch, averaged
    as above, then its `summarize` (per-unit statistics -> e.g. active units) where it has one. The
    training loop's evaluations and `dgm-dist evaluate` both come through here."""
    sums = evaluate_sums(lambda xb, yb: net.eval_sums(to_unit(xb), yb), x, y, batch_size, device, progress)
    return net.summarize(sums) if hasattr(net, "summarize") else sums
