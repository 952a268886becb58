"""Checkpoint contents for exact resume: model, optimizer, counters and every RNG the loop draws
from. Only tensors and plain Python values are stored, so `torch.load(weights_only=True)` reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgm_dist.errors import DataError
from dgm_dist.fileio import atomic_write

STATE_FILE = "state.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP, so keys have no `module.` prefix."""
    return getattr(model, "module", model)


def capture(model: nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int, global_step: int,
            generators: dict[str, torch.Generator], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to continue after `epoch` as if the run had never stopped."""
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "global_step": global_step,
        "torch_rng": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
        "extra": extra or {},
    }


def restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            generators: dict[str, torch.Generator]) -> tuple[int, int]:
    """Load `state` into the live objects; returns (next epoch, global step)."""
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    return state["epoch"] + 1, state["global_step"]


def save(state: dict[str, Any], directory: Path) -> Path:
    """Write atomically, so a crash mid-write never leaves a half checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    return atomic_write(directory / STATE_FILE, lambda f: torch.save(state, f))


def load(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no checkpoint there") from None
    except Exception as e:  # torch raises several types for damaged or unsafe files
        raise DataError(f"{path}: not a readable dgm-dist checkpoint ({type(e).__name__}: {e})") from None
