"""A `dgm-dist` driver the tests start as a subprocess in its own session: whether its Ray Train
workers run yet, and stopping it (the driver and the embedded Ray it started)."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil


def is_train_worker(p: psutil.Process) -> bool:
    try:
        return "TrainWorker" in p.name() or "TrainWorker" in " ".join(p.cmdline())
    except psutil.Error:        # ended meanwhile, or a zombie not yet reaped (a CI run saw ray::IDLE)
        return False


def trains(driver: psutil.Process) -> bool:
    """Whether a Ray Train worker runs under this driver (the embedded Ray's processes are its children)."""
    return any(is_train_worker(p) for p in driver.children(recursive=True))


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to the driver's process group (a run's own way to end), SIGKILL after a minute."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
