"""Schedules as pure functions of the optimizer step, so they do not depend on the number of
workers or on how often they are called, and resume exactly from a saved step."""

from __future__ import annotations

import math


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """KL warm-up length configured in epochs, converted to optimizer steps once."""
    return int(round(warmup_epochs * steps_per_epoch))


def kl_weight(step: int, total_warmup_steps: int) -> float:
    """Deterministic warm-up beta: linear from 0 at step 0 to 1 at `total_warmup_steps`
    (LVAE paper section 2.2; 1 throughout when there is no warm-up)."""
    if total_warmup_steps <= 0:
        return 1.0
    return min(1.0, step / total_warmup_steps)


def learning_rate(base_lr: float, epoch: int, decay: float, every: int, floor: float, start: int = 0) -> float:
    """Step decay: base_lr * decay ** ((epoch - start) // every) once `epoch >= start`, not below
    `floor`. The ADGM code's `anneal=[("learningrate", 200, 0.75, 3e-5)]` is (0.75, 200, 3e-5);
    the RNN-SPN code's `-decayfac 1.5 -decayinterval 10 -nodecay 30` is (1/1.5, 10, 0, start=30).
    `every=0` keeps the LR constant."""
    if every <= 0 or decay == 1.0 or epoch < start:
        return base_lr
    return max(floor, base_lr * math.pow(decay, (epoch - start) // every))
