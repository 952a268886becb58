"""Subnormal floats flushed to zero on every intra-op thread (dgm_dist/training/denormals.py): set
before the thread pool starts they reach every thread; set after, the probe says they did not. Each
case runs in a fresh interpreter, because the pool is started once per process."""

import subprocess
import sys

SETUP = ("import torch; torch.set_num_threads(2); from dgm_dist.training.denormals import *; "
         # the smallest subnormal in each of 2M elements, made as integers (no float arithmetic)
         "sub = lambda: torch.full((1 << 21,), 1, dtype=torch.int32).view(torch.float32); "
         "survivors = lambda x: int(torch.count_nonzero((x * 1.0).view(torch.int32))); ")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", SETUP + code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_flags_set_before_the_pool_starts_reach_every_thread():
    assert _run("print(flush_denormals(), survivors(sub()))") == "True 0"


def test_flags_set_after_the_pool_started_are_reported_missing():
    code = "(torch.ones(1 << 21) * 2).sum(); f = flush_denormals(); print(f, survivors(sub()) > 0)"
    assert _run(code) == "False True"         # the pool's other thread kept its default flags


def test_off_keeps_subnormals():
    assert _run("print(flush_denormals(False), every_thread_flushes(), survivors(sub()))") == f"None False {1 << 21}"
