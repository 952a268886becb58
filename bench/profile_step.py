"""Where the time goes: torch.profiler over each family's training step and evaluation batch.

    python bench/profile_step.py [--quick] [--family adgm,sdgm,lvae,rnn_spn] [--top 8] [--threads N]

For every family (the papers' sizes, `workloads.py`) one run profiles a few training steps (forward,
backward, the preset's clipping and optimizer) and a few evaluation batches of 500 (`eval_sums`, as
the loop's full-set evaluation calls it), and prints the operators with the largest self time, each
as a share of the phase's total. This is what the speed work of docs/results.md started from; for
the Python side, `py-spy record -o out.svg -- python bench/profile_step.py --family lvae` gives a
flame graph of the same run.
"""

from __future__ import annotations

import argparse

import torch
import workloads
from torch.profiler import ProfilerActivity, profile


def top_ops(fn, calls: int, top: int, device: str) -> tuple[float, list[tuple[str, float, int]]]:
    """(total self ms per call, [(op, share of total, calls per call)]) for `calls` calls of fn."""
    fn()                                                   # warm-up (allocator, lazy init)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        workloads.sync(device)
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    rows = [(e.key, getattr(e, attr) / total, round(e.count / calls)) for e in events[:top]]
    return total / 1000 / calls, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one call per phase, two families")
    ap.add_argument("--family", default=None, help=f"comma-separated, from {', '.join(workloads.PRESETS)}")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    families = args.family.split(",") if args.family else (["adgm", "lvae"] if args.quick else list(workloads.PRESETS))
    unknown = [f for f in families if f not in workloads.PRESETS]
    if unknown:
        ap.error(f"unknown family {unknown[0]!r}; choose from {', '.join(workloads.PRESETS)}")
    calls = 1 if args.quick else 5
    print(f"self time per call, {args.threads} thread(s), {args.device}, {calls} call(s) profiled per phase")
    for name in families:
        w = workloads.build(name, args.device, eval_batch=100 if args.quick else 500)
        for phase, fn, n in (("train step", w.train_step, w.examples), ("evaluation", w.evaluate, len(w.eval_x))):
            ms, rows = top_ops(fn, calls, args.top, args.device)
            print(f"\n{name} {phase} (batch {n}): {ms:.1f} ms per call, {1000 * n / ms:,.0f} examples/s")
            for op, share, count in rows:
                print(f"  {share:6.1%}  {op:<40} x{count}")


if __name__ == "__main__":
    main()
