"""Importance-weighted evaluation (the LVAE paper's log-likelihood): examples/s at k = 100 and 5000.

    python bench/iw_eval.py [--quick] [--threads N] [--max-rows R]

For the VAE + BN + warm-up and the Ladder VAE rows (papers' sizes: 5 layers 64-32-16-8-4, MLPs of
512-256-128-64-32, batch norm with running statistics, evaluation mode) one run times
`iw_log_likelihood` as `dgm-dist evaluate` calls it, the k samples batched in chunks of at most
R rows (examples x samples; 5 000 on a CPU by default). Interleaved with it, two baselines:
"x repeated" runs the whole inference network once per sample (the same chunks), and "before" is
the code before the profile-guided change (x repeated, chunks of 50 000 rows). It prints
examples/s, sample rows/s (equal at both k when chunking costs nothing), both speed-ups, and the
estimated time of the paper's evaluation: the 10 000 test images at k = 5000.
"""

import argparse
import statistics
import time

import torch

from dgm_dist.config import load_config
from dgm_dist.models.registry import DataInfo, build_model

INFO = DataInfo((28, 28), 10)


def model(preset: str) -> torch.nn.Module:
    cfg = load_config(preset, overrides=["model.batch_norm=running"])
    torch.manual_seed(0)
    return build_model(cfg.model, INFO).eval()


def seconds(net, x, k: int, max_rows: int | None, shared: bool) -> float:
    start = time.perf_counter()
    net.iw_log_likelihood(x, k, max_rows=max_rows, shared_bottom_up=shared)
    return time.perf_counter() - start


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer examples, one round")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--max-rows", type=int, default=None,
                    help="rows per chunk (examples x samples); default: the model's (5 000 on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else 3
    sizes = {100: 20, 5000: 2} if args.quick else {100: 500, 5000: 20}       # k: examples
    g = torch.Generator().manual_seed(0)
    chunks = f"{args.max_rows:,}" if args.max_rows else "5,000 (the default)"
    print(f"{args.threads} thread(s), chunks of <= {chunks} rows, median of {rounds} interleaved rounds")
    print("| model | k | examples | examples/s | sample rows/s | x repeated | speed-up | before | speed-up | "
          "10 000 test images at this k |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    variants = {"now": (args.max_rows, True), "repeated": (args.max_rows, False), "before": (50_000, False)}
    for name, preset in (("VAE + BN + WU", "vae-bn-wu-mnist-5l"), ("LVAE + BN + WU", "lvae-bn-wu-mnist-5l")):
        net = model(preset)
        for k, n in sizes.items():
            x = torch.rand(n, 784, generator=g).bernoulli(generator=g)
            seconds(net, x[:1], min(k, 10), None, True)                            # warm-up
            times = {v: [] for v in variants}
            for _ in range(rounds):
                for v, (rows, shared) in variants.items():
                    times[v].append(seconds(net, x, k, rows, shared))
            t = {v: statistics.median(ts) for v, ts in times.items()}
            print(f"| {name} | {k} | {n} | {n / t['now']:,.1f} | {n * k / t['now']:,.0f} | "
                  f"{n / t['repeated']:,.1f} | {t['repeated'] / t['now']:.2f}x | {n / t['before']:,.1f} | "
                  f"{t['before'] / t['now']:.2f}x | {10_000 * t['now'] / n / 60:,.1f} min |", flush=True)

if __name__ == "__main__":
    main()
