"""A study's status on a terminal: one table redrawn in place every few seconds — trials running,
pending, finished, stopped by the scheduler, failed; the best so far; elapsed time and an ETA —
instead of one line per trial per epoch (docs/tuning.md). Where stdout is not a terminal (a log,
`ray submit`, a pipe) the study prints its plain lines instead (study.TrialTracking)."""

from __future__ import annotations

import shutil
import sys
import time
from datetime import timedelta
from typing import Any

REFRESH_SECONDS = 2.0
SHOWN_TRIALS = 20          # the table's rows: the running ones first, then the best finished


def figure(metric: str, value: float | None) -> str:
    """Percent for errors, as everywhere in text; JSON keeps fractions."""
    if value is None:
        return "?"
    return f"{100 * value:.2f} %" if "error" in metric else f"{value:.4f}"


class StatusTable:
    def __init__(self, name: str, metric: str, mode: str, max_epochs: int, scheduler: str, planned: int,
                 stream=None, started: float | None = None):
        self.name, self.metric, self.mode, self.max_epochs = name, metric, mode, max_epochs
        self.scheduler, self.planned = scheduler, planned
        self.stream = stream or sys.stdout
        self.started = time.time() if started is None else started
        self.lines_drawn, self.drawn_at = 0, 0.0

    def maybe_draw(self, trials: list, stopped: set[str]) -> None:
        if time.time() - self.drawn_at >= REFRESH_SECONDS:
            self.draw(trials, stopped)

    def draw(self, trials: list, stopped: set[str]) -> None:
        lines = self.render(trials, stopped)
        up = f"\033[{self.lines_drawn}F" if self.lines_drawn else ""
        self.stream.write(up + "".join(f"\033[K{line}\n" for line in lines) + "\033[J")
        self.stream.flush()
        self.lines_drawn, self.drawn_at = len(lines), time.time()

    def render(self, trials: list, stopped: set[str]) -> list[str]:
        width = shutil.get_terminal_size((100, 24)).columns
        counts = {"RUNNING": 0, "PENDING": 0, "TERMINATED": 0, "ERROR": 0, "PAUSED": 0}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        done = [t for t in trials if t.status == "TERMINATED" and t.trial_id not in stopped]
        scored = [t for t in trials if _value(t, self.metric) is not None]
        best = (min if self.mode == "min" else max)(scored, key=lambda t: _value(t, self.metric)) if scored else None
        elapsed = time.time() - self.started
        epochs_done = sum(_epoch(t) for t in trials)
        left = sum(self.max_epochs - _epoch(t) for t in trials if t.status not in ("TERMINATED", "ERROR")) \
            + max(0, self.planned - len(trials)) * self.max_epochs          # an upper bound: ASHA stops some
        eta = "" if not (epochs_done and left) else \
            f", at most {timedelta(seconds=round(elapsed / epochs_done * left))} left"
        lines = [(f"study {self.name}: {self.planned} trials: {counts['RUNNING']} running, "
                  f"{counts['PENDING'] + max(0, self.planned - len(trials))} pending, {len(done)} finished, "
                  f"{len(stopped)} stopped by {self.scheduler}, {counts['ERROR']} failed")[:width]]
        best_text = "" if best is None else (f"; best {self.metric} {figure(self.metric, _value(best, self.metric))} "
                                             f"(trial {best.trial_id}: {_label(best)})")
        lines.append(f"{timedelta(seconds=round(elapsed))} elapsed{eta}{best_text}"[:width])
        order = {"RUNNING": 0, "PENDING": 1, "TERMINATED": 2, "ERROR": 3}
        rows = sorted(trials, key=lambda t: (order.get(t.status, 4), _sort_value(t, self.metric, self.mode)))
        lines.append(f"  {'trial':<14}{'status':<12}{'epoch':<8}{self.metric:<16}parameters"[:width])
        for t in rows[:SHOWN_TRIALS]:
            status = "STOPPED" if t.trial_id in stopped else {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(
                t.status, t.status)
            lines.append(f"  {t.trial_id:<14}{status:<12}{f'{_epoch(t)}/{self.max_epochs}':<8}"
                         f"{figure(self.metric, _value(t, self.metric)):<16}{_label(t)}"[:width])
        if len(rows) > SHOWN_TRIALS:
            lines.append(f"  ... and {len(rows) - SHOWN_TRIALS} more")
        return lines


def _result(t) -> dict[str, Any]:
    return t.last_result or {}


def _value(t, metric: str) -> float | None:
    value = _result(t).get(metric)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _epoch(t) -> int:
    return int(_result(t).get("epoch", 0) or 0)


def _sort_value(t, metric: str, mode: str) -> float:
    value = _value(t, metric)
    if value is None:
        return float("inf")
    return value if mode == "min" else -value


def _label(t) -> str:
    params = (t.config or {}).get("params", {})
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in params.items())
