"""Semi-supervised training throughput: factored vs naive first layers (papers' sizes).

    python bench/ssl_throughput.py [--quick]

For ADGM and SDGM (2x500 ReLU MLPs, a = z = 100, MNIST-sized inputs) with 1 and 5 Monte Carlo
samples, one run measures training steps (forward, backward, Adam) of a labelled batch of 100 plus
an unlabelled batch of 100, and prints unlabelled examples/s of the factored networks (the x term
computed once per example, docs/models.md) and of the naive ones (inputs concatenated per enumerated
class), interleaved so that both see the same machine state, and their ratio.
"""

import argparse
import statistics
import time

import torch

from dgm_dist.models.dgm import ADGM, M2, SDGM


def rate(model, steps: int, batch: int = 100) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    g = torch.Generator().manual_seed(0)
    x, xu = torch.rand(batch, 784, generator=g).bernoulli(), torch.rand(batch, 784, generator=g).bernoulli()
    y = torch.randint(0, 10, (batch,), generator=g)
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = model(x=x, y=y, x_unlabelled=xu)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 steps, one round, ADGM and SDGM (a smoke test)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, rounds = (2, 1) if args.quick else (15, 3)
    print(f"unlabelled examples/s, {args.threads} thread(s), median of {rounds} rounds of {steps} steps")
    print(f"{'model':<6} {'MC':>3} {'factored':>10} {'naive':>10} {'ratio':>7}")
    for cls in (ADGM, SDGM) if args.quick else (ADGM, SDGM, M2):
        for mc in (1, 5):
            models = {}
            for factored in (True, False):
                torch.manual_seed(0)
                models[factored] = cls(784, 10, mc_samples=mc, n_unlabelled=60000, n_labelled=100, factored=factored)
            rate(models[True], 1), rate(models[False], 1)                 # warm-up
            fast, slow = [], []
            for _ in range(rounds):                                      # interleaved
                fast.append(rate(models[True], steps))
                slow.append(rate(models[False], steps))
            f, s = statistics.median(fast), statistics.median(slow)
            print(f"{cls.__name__:<6} {mc:>3} {f:>10,.0f} {s:>10,.0f} {f / s:>6.2f}x")


if __name__ == "__main__":
    main()
