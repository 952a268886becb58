"""Semi-supervised throughput (papers' sizes): factored vs naive first layers, the unlabelled
bound's estimators, and prediction.

    python bench/ssl_throughput.py [--quick]

For ADGM and SDGM (2x500 ReLU MLPs, a = z = 100, MNIST-sized inputs), one run measures, each pair
interleaved so that both arms see the same machine state, and prints their ratio:
1. training steps (forward, backward, Adam) of a labelled batch of 100 plus an unlabelled batch of
   100, with 1 and 5 Monte Carlo samples: unlabelled examples/s of the factored networks (the x term
   computed once per example, docs/models.md) and of the naive ones (inputs concatenated per
   enumerated class);
2. the same step with the classes' shared noise of z against independent draws, and (K = 5) the
   two K-sample estimators, `bounds` against `probabilities` (docs/models.md);
3. prediction, q(y|a,x) averaged over S = 100 draws of a for 500 images: the factored classifier
   (x's term once for all draws) against the naive one (x repeated for each draw), images/s.
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


def predict_rate(model, rounds: int, n: int = 500) -> float:
    x = torch.rand(n, 784, generator=torch.Generator().manual_seed(1)).bernoulli()
    start = time.perf_counter()
    for _ in range(rounds):
        model.classify(x, samples=100)
    return rounds * n / (time.perf_counter() - start)


def paired(make, measure, steps: int, rounds: int) -> tuple[float, float]:
    """Median rates of two models built by make(True) and make(False), measured interleaved."""
    models = {}
    for arm in (True, False):
        torch.manual_seed(0)
        models[arm] = make(arm)
    measure(models[True], 1), measure(models[False], 1)                 # warm-up
    rates = {True: [], False: []}
    for _ in range(rounds):
        for arm in (True, False):
            rates[arm].append(measure(models[arm], steps))
    return statistics.median(rates[True]), statistics.median(rates[False])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 steps, one round, ADGM and SDGM (a smoke test)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, rounds = (2, 1) if args.quick else (15, 3)
    sizes = {"n_unlabelled": 60000, "n_labelled": 100}
    print(f"unlabelled examples/s, {args.threads} thread(s), median of {rounds} rounds of {steps} steps")
    print(f"{'model':<6} {'MC':>3} {'factored':>10} {'naive':>10} {'ratio':>7}")
    for cls in (ADGM, SDGM) if args.quick else (ADGM, SDGM, M2):
        for mc in (1, 5):
            f, s = paired(lambda arm, c=cls, k=mc: c(784, 10, mc_samples=k, factored=arm, **sizes), rate,
                          steps, rounds)
            print(f"{cls.__name__:<6} {mc:>3} {f:>10,.0f} {s:>10,.0f} {f / s:>6.2f}x")

    print("\nestimators of the unlabelled bound (training steps, unlabelled examples/s)")
    print(f"{'model':<6} {'MC':>3} {'arm A':<13} {'A':>8} {'arm B':<13} {'B':>8} {'A / B':>7}")
    for cls in (ADGM, SDGM):
        for mc, name_a, name_b, make in (
                (1, "shared", "independent", lambda arm, c=cls: c(784, 10, mc_samples=1, shared_noise=arm, **sizes)),
                (5, "bounds", "probabilities", lambda arm, c=cls: c(784, 10, mc_samples=5, **sizes,
                                                                   mc_average="bounds" if arm else "probabilities"))):
            a, b = paired(make, rate, steps, rounds)
            print(f"{cls.__name__:<6} {mc:>3} {name_a:<13} {a:>8,.0f} {name_b:<13} {b:>8,.0f} {a / b:>6.2f}x")

    print(f"\nprediction, S = 100 draws of a, {50 if args.quick else 500} images (images/s)")
    print(f"{'model':<6} {'factored':>10} {'naive':>10} {'ratio':>7}")
    for cls in (ADGM, SDGM):
        f, s = paired(lambda arm, c=cls: c(784, 10, factored=arm, **sizes).eval(),
                      lambda m, r: predict_rate(m, r, 50 if args.quick else 500), 1 if args.quick else 3, rounds)
        print(f"{cls.__name__:<6} {f:>10,.0f} {s:>10,.0f} {f / s:>6.2f}x")


if __name__ == "__main__":
    main()
