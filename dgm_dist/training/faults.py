"""Fault drills that tests install into a run (docs/reliability.md): wrappers around an epoch's
batches, passed as `LoopOptions.batches_hook`, so the training loop itself carries no test code."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KillWorker:
    """SIGKILL the worker of `rank` once, before step `step` (0-based, within the epoch) of the
    1-based `epoch`; `marker` records that it happened, so the restarted worker is spared."""

    epoch: int
    step: int
    rank: int
    marker: str

    def __call__(self, batches: Iterable, *, epoch: int, rank: int) -> Iterator:
        for i, batch in enumerate(batches):
            if (epoch + 1, i, rank) == (self.epoch, self.step, self.rank) and not Path(self.marker).exists():
                Path(self.marker).write_text(f"killed rank {rank} at epoch {epoch + 1}, step {i}\n")
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch
