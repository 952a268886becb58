"""What the per-step agreement of the ranks costs (docs/training.md, the loop): every `check_every`
steps the workers all-reduce two flags (a non-finite loss or gradient; the time budget spent), a
host sync. CPU runs check every step (the failing step named exactly), GPU runs every 50 (no
per-step wait for the device). Measured here on the CPU, side by side in one run:

    python bench/host_sync.py [--quick] [--workers 2]

Prints the training examples/s of the same run with the check every step and every 50 steps, and
their ratio. On a GPU the every-step check would also stall the device's queue once a step; that is
not measurable on this machine."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 epochs on 2 000 examples instead of 4 on 20 000")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from dgm_dist.config import load_config
    from dgm_dist.training import launcher

    epochs = 2 if args.quick else 4
    held_out = 58_000 if args.quick else 40_000
    rates = {}
    with tempfile.TemporaryDirectory() as root:
        def cfg():
            return load_config("mlp-fashion", overrides=[
                f"scaling.workers={args.workers}", "scaling.cpus_per_worker=1", f"optim.epochs={epochs}",
                f"scaling.checkpoint_every={epochs}", f"data.validation={held_out}", f"tracking.root={root}"])

        with launcher.RaySession(cfg().scaling, verbose=False):      # one local Ray for both runs
            for every in (1, 50):
                launcher.check_every = lambda cfg, every=every: every      # what the driver hands the workers
                result = launcher.train(cfg(), run_name=f"check-every-{every}", out=None)
                rates[every] = statistics.median(h["throughput"] for h in result.history[1:] or result.history)
    print(f"mlp-fashion, {args.workers} worker(s), {os.cpu_count()} cores: training examples/s")
    print(f"{'check every':<14} {'examples/s':>11}")
    for every, rate in rates.items():
        print(f"{f'{every} step(s)':<14} {rate:>11,.0f}")
    print(f"every 50 / every step: {rates[50] / rates[1]:.3f}")


if __name__ == "__main__":
    main()
