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
   (x's term once for all draws) against the naive one (x repeated for each draw), images/s;
4. the work of one training step (floating-point operations of its matrix products, forward and
   backward, counted by torch's FlopCounterMode) and, with `--port DIR` (the `semi-supervised`
   folder of a checkout of wohlert/semi-supervised-pytorch, the public port; not shipped here),
   the port's M2 and ADGM at the same sizes trained the way its example does, interleaved with
   ours: the speed ratio beside the work ratio shows how much of our lead is work removed and
   how much is work done faster (docs/results.md §5.1).
"""

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dgm_dist.models.dgm import ADGM, M2, SDGM


def batches(batch: int = 100):
    g = torch.Generator().manual_seed(0)
    x, xu = torch.rand(batch, 784, generator=g).bernoulli(), torch.rand(batch, 784, generator=g).bernoulli()
    return x, torch.randint(0, 10, (batch,), generator=g), xu


def our_step(model):
    """One training step of ours: the closure run by `steps` and counted by `flops`."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    x, y, xu = batches()

    def step():
        loss, _ = model(x=x, y=y, x_unlabelled=xu)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def port_step(model, port, mc: int):
    """One step of the public port, as its example trains (`examples/mnist_sslvae.py`): -L(x,y) and
    -U(u) from its SVI with its binary cross-entropy, and the classifier's cross-entropy on the
    labelled batch weighted by alpha = 0.1 N / N_l."""
    svi = port.SVI(model, likelihood=lambda r, x: -torch.sum(x * torch.log(r + 1e-8)
                                                          + (1 - x) * torch.log(1 - r + 1e-8), dim=-1),
                   sampler=port.Sampler(mc=mc, iw=1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    x, y, u = batches()
    y = torch.nn.functional.one_hot(y, 10).float()
    alpha = 0.1 * 60000 / 100

    def step():
        labelled, unlabelled = -svi(x, y), -svi(u)
        ce = torch.sum(y * torch.log(model.classify(x) + 1e-8), dim=1).mean()
        (labelled - alpha * ce + unlabelled).backward()
        opt.step()
        opt.zero_grad()
    return step


def flops(step) -> float:
    """GFLOP of one call of `step` (matrix products, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def step_rate(step, steps: int, batch: int = 100) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def load_port(folder: str):
    """The port's modules, imported from the user's checkout (its files import each other by bare
    module names, so its folder goes on sys.path)."""
    path = Path(folder)
    if not (path / "models" / "dgm.py").is_file() or not (path / "inference").is_dir():
        print(f"ssl_throughput.py: error: --port {folder}: no models/dgm.py and inference/ there; give the "
              "'semi-supervised' folder of a wohlert/semi-supervised-pytorch checkout", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(path))
    import inference
    import models
    return type("Port", (), {"SVI": inference.SVI, "Sampler": inference.ImportanceWeightedSampler,
                             "M2": models.DeepGenerativeModel,
                             "ADGM": models.AuxiliaryDeepGenerativeModel})


def work_and_port(port, steps: int, rounds: int, quick: bool) -> None:
    """Section 4: GFLOP per step, achieved GFLOP/s, and (with the port, from `load_port`) both ratios."""
    h, z = (64, 16) if quick else (500, 100)                 # --quick: a smoke test of the section
    sizes = {"n_unlabelled": 60000, "n_labelled": 100, "hidden": (h, h), "latent": z, "aux": z}
    print(f"\nwork of a training step (2x{h}, a = z = {z}; 100 labelled + 100 unlabelled, MC samples): GFLOP of "
          "matrix products, forward and backward; unlabelled examples/s")
    head = f"{'model':<6} {'MC':>3} {'GFLOP':>7} {'ex/s':>8} {'GFLOP/s':>8}"
    print(head + (f" {'port GFLOP':>10} {'port ex/s':>9} {'work ratio':>10} {'speed ratio':>11}" if port else ""))
    models = (("M2", M2, lambda: port.M2([784, 10, z, [h, h]])),
              ("ADGM", ADGM, lambda: port.ADGM([784, 10, z, z, [h, h]])))
    for (name, cls, theirs), mc in itertools.product(models, (1, 5) if quick else (1, 5, 10)):
        torch.manual_seed(0)
        arms = {"ours": our_step(cls(784, 10, mc_samples=mc, **sizes))}
        if port:
            torch.manual_seed(0)
            arms["port"] = port_step(theirs(), port, mc)
        work = {arm: flops(step) for arm, step in arms.items()}        # also the warm-up
        rates = {arm: [] for arm in arms}
        for _ in range(rounds):
            for arm, step in arms.items():
                rates[arm].append(step_rate(step, steps))
        rate = {arm: statistics.median(r) for arm, r in rates.items()}
        line = f"{name:<6} {mc:>3} {work['ours']:>7.2f} {rate['ours']:>8,.0f} {work['ours'] * rate['ours'] / 100:>8.1f}"
        if port:
            line += (f" {work['port']:>10.2f} {rate['port']:>9,.0f} {work['port'] / work['ours']:>9.2f}x"
                     f" {rate['ours'] / rate['port']:>10.2f}x")
        print(line)


def rate(model, steps: int) -> float:
    return step_rate(our_step(model), steps)


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
    ap.add_argument("--port", metavar="DIR", help="the public port's 'semi-supervised' folder: compare with it")
    ap.add_argument("--only-work", action="store_true", help="section 4 alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, rounds = (2, 1) if args.quick else (15, 3)
    port = load_port(args.port) if args.port else None       # a wrong folder fails before any timing
    if args.only_work:
        return work_and_port(port, steps, rounds, args.quick)
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
    work_and_port(port, steps, rounds, args.quick)


if __name__ == "__main__":
    main()
