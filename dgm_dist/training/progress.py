"""The driver's view of a run: one progress line per report, a bar inside each epoch on a terminal,
the metric history, MLflow logging.

Reports reach the driver in-process in local mode, and through a small queue actor fed by a Ray
Train `UserCallback` (which runs in the Train controller) otherwise.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ray.train import UserCallback

SHOWN = ("train_loss", "valid_nll", "valid_error", "test_error", "valid_per_digit_error",
         "test_per_digit_error", "valid_sequence_error", "train_elbo", "valid_elbo", "test_iw_ll",
         "test_active_units")


class ForwardReports(UserCallback):
    """Runs in the Train controller: forwards rank 0's metrics and the checkpoint path of every
    completed report (all workers reported, the checkpoint is in storage) to the driver."""

    def __init__(self, sink):
        self.sink = sink

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        self.sink.put((metrics[0], checkpoint.path if checkpoint else None))


class QueueProgress:
    """Rank 0's progress updates to the driver through the reports' queue actor (picklable: it
    travels to the worker in LoopOptions). A full queue or a gone actor drops the update."""

    def __init__(self, queue):
        self.queue = queue

    def __call__(self, update: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(("progress", update))
        except Exception:  # noqa: BLE001 -- a progress bar must never stop a training
            pass


class ProgressBar:
    """One line inside the epoch, redrawn in place on a terminal (stderr): the epoch's batches done,
    the step, the loss, examples/s and the epoch's ETA. Nothing when stderr is not a terminal
    (logs, `ray submit`, pipes): there the per-epoch lines are the whole record."""

    def __init__(self, stream=None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.shown = False

    def __call__(self, p: dict[str, Any]) -> None:
        if not self.tty:
            return
        done = p["batch"] / max(1, p["batches"])
        eta = p["seconds"] / max(done, 1e-9) * (1 - done)
        bar = "#" * round(20 * done)
        width = len(str(p["epochs"]))
        self.stream.write(f"\r\033[K  epoch {p['epoch']:>{width}}/{p['epochs']} [{bar:<20}] {p['batch']}/{p['batches']}"
                          f"  step {p['step']:,}  loss {p['loss']:.4f}  {p['examples_per_s']:,.0f} ex/s"
                          f"  epoch eta {timedelta(seconds=round(eta))}")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


class RunMonitor:
    def __init__(self, total_epochs: int, started: float, log: Callable[[int, dict], Any] | None = None,
                 out: Callable[[str], Any] | None = print, bar: ProgressBar | None = None):
        self.total_epochs, self.started = total_epochs, started
        self.log, self.out = log, out
        self.bar = bar if bar is not None else ProgressBar(tty=False if out is None else None)
        self.history: list[dict[str, Any]] = []
        self.latest_checkpoint: str | None = None
        self.nonfinite: str | None = None
        self.startup_seconds: float | None = None
        self.replayed: list[int] = []            # epochs reported again after a restart
        self._first_seen: tuple[float, int] | None = None

    def __call__(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        if "nonfinite" in metrics:
            self.nonfinite = metrics["nonfinite"]
            return
        epoch = int(metrics["epoch"])
        if checkpoint:
            self.latest_checkpoint = checkpoint
        if "first_step_at" in metrics and self.startup_seconds is None:
            self.startup_seconds = metrics["first_step_at"] - self.started
        if any(h["epoch"] == epoch for h in self.history):
            # re-run after a worker-group restart from an older checkpoint: exact resume, same values
            self.replayed.append(epoch)
            if self.out is not None:
                self.out(f"epoch {epoch} re-run after a restart (already logged)")
            return
        self.history.append(metrics)
        if self.log is not None:
            self.log(epoch, {k: v for k, v in metrics.items() if k != "first_step_at"})
        if self.out is not None:
            self.bar.clear()
            self.out(self.line(metrics))

    def progress(self, update: dict[str, Any]) -> None:
        """An update from inside an epoch (rank 0, every `LoopOptions.progress_seconds`)."""
        self.bar(update)

    def line(self, m: dict[str, Any]) -> str:
        now = time.time()
        if self._first_seen is None:
            self._first_seen = (now - m.get("epoch_seconds", 0.0), int(m["epoch"]) - 1)
        t0, e0 = self._first_seen
        done = int(m["epoch"])
        eta = (now - t0) / max(1, done - e0) * (self.total_epochs - done)
        width = len(str(self.total_epochs))
        parts = [f"epoch {done:>{width}}/{self.total_epochs}", f"step {int(m['step']):>7,}"]
        for k in SHOWN:
            if k in m:
                value = m[k]
                parts.append(f"{k} {100 * value:.2f}%" if k.endswith("error") else
                             f"{k} {value}" if isinstance(value, int) else f"{k} {value:.4f}")
        parts += [f"{m.get('throughput', 0):,.0f} ex/s", f"eta {timedelta(seconds=round(eta))}"]
        return "  ".join(parts)


class QueueDrain:
    """A driver thread that hands every forwarded report to the monitor while `fit()` runs."""

    def __init__(self, source, monitor: RunMonitor):
        self.source, self.monitor = source, monitor
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dgm-progress", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.error is None:
            self._drain(block=False)   # reports that arrived after the last poll
        if self.error is not None and exc[0] is None:
            raise self.error

    def _run(self):
        try:
            while not self._stop.is_set():
                self._drain(block=True)
        except BaseException as e:     # e.g. the tracking server went away: raised by __exit__
            self.error = e

    def _drain(self, block: bool):
        while True:
            try:
                item = self.source.get(block=block, timeout=0.2) if block else self.source.get_nowait()
            except queue.Empty:
                return
            if item[0] == "progress":
                self.monitor.progress(item[1])
            else:
                self.monitor(*item)
            block = False
