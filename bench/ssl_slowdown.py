"""Why a long semi-supervised CPU run slows down: train a preset on its real data in this process and,
every few hundred steps, print the step rate, the share of subnormal floats in the weights, the
gradients and the optimizer's state, and the step rate of a copy of the model with subnormals
flushed to zero on the main thread against one without (docs/results.md §1.2).

    python bench/ssl_slowdown.py [--preset adgm-mnist100-cpu] [--minutes 12] [--every 400] [--no-flush]

Subnormal floats (|v| < 1.2e-38 in float32) take a slow path in x86 arithmetic; Adam's second
moment is the square of the gradient, so a gradient under ~1e-19 already puts one there. The main
run flushes them on every thread as the training worker does (`dgm_dist/training/denormals.py`),
unless `--no-flush`; compare the two runs' step rates at equal steps. The copy's flag reaches only
the main thread (the pool's threads keep theirs, docs/training.md), so its ratio is a lower bound.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from dgm_dist.config import load_config
from dgm_dist.data import load_from_config
from dgm_dist.models.registry import build_model, model_spec
from dgm_dist.training import data as training_data
from dgm_dist.training.denormals import flush_denormals
from dgm_dist.training.loop import _input
from dgm_dist.training.optim import clip_gradients, make_optimizer

TINY = torch.finfo(torch.float32).tiny


def subnormal_share(tensors) -> float:
    total = bad = 0
    for t in tensors:
        if t is None or not t.is_floating_point():
            continue
        total += t.numel()
        bad += int(((t != 0) & (t.abs() < TINY)).sum())
    return bad / max(total, 1)


def optimizer_tensors(optimizer):
    return [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]


def step(model, optimizer, cfg, batch) -> None:
    loss, _ = model(**batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_gradients(model.parameters(), cfg.optim)
    optimizer.step()


def rate(model, optimizer, cfg, batches, flush: bool) -> float:
    """Steps/s of a copy of (model, optimizer) over `batches`, with or without flush-to-zero."""
    m = copy.deepcopy(model)
    o = make_optimizer(cfg.optim, m.parameters())
    o.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    torch.set_flush_denormal(flush)                       # the caller sets its own mode back
    step(m, o, cfg, batches[0])                           # warm-up
    start = time.perf_counter()
    for b in batches[1:]:
        step(m, o, cfg, b)
    return (len(batches) - 1) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="adgm-mnist100-cpu")
    ap.add_argument("--minutes", type=float, default=12)
    ap.add_argument("--every", type=int, default=400, help="steps between diagnostics")
    ap.add_argument("--ab-steps", type=int, default=12, help="steps of each flush-to-zero timing")
    ap.add_argument("--no-flush", dest="flush", action="store_false", help="the main run keeps subnormals")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    torch.set_num_threads(2)
    every_thread = flush_denormals(args.flush)            # before the intra-op pool starts
    cfg = load_config(args.preset, overrides=args.overrides)
    spec = model_spec(cfg.model.name)
    data = training_data.prepare(load_from_config(cfg.data, download=False), cfg.data, spec.streams)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.info)
    optimizer = make_optimizer(cfg.optim, model.parameters())
    model.train()
    print(f"{args.preset}: subnormals flushed on every thread of the main run: {bool(every_thread)}; "
          f"{torch.get_num_threads()} threads", flush=True)
    print("min   step   steps/s(window)  subnormal: weights  grads   optim   | copy steps/s: ftz off  on   ratio",
          flush=True)
    deadline = time.time() + args.minutes * 60
    started = window_start = time.perf_counter()
    steps, epoch, window = 0, 0, 0
    while time.time() < deadline:
        gen = torch.Generator().manual_seed(training_data.epoch_seed(cfg.seed, epoch, 0))
        for raw in training_data.epoch_batches(data, epoch, 0, 1, cfg.optim.batch_size,
                                               cfg.optim.labelled_batch_size, cfg.seed):
            batch = {k: _input(v, k, data.dynamic_binarize, gen) for k, v in raw.items()}
            step(model, optimizer, cfg, batch)
            steps, window = steps + 1, window + 1
            if steps % args.every == 0:
                window_rate = window / (time.perf_counter() - window_start)
                shares = (subnormal_share(p.data for p in model.parameters()),
                          subnormal_share(p.grad for p in model.parameters()),
                          subnormal_share(optimizer_tensors(optimizer)))
                ab = [batch] * (args.ab_steps + 1)
                off, on = rate(model, optimizer, cfg, ab, False), rate(model, optimizer, cfg, ab, True)
                torch.set_flush_denormal(args.flush)
                print(f"{(time.perf_counter() - started) / 60:5.1f} {steps:6d} {window_rate:10.2f}"
                      f"      {shares[0]:9.2e} {shares[1]:8.2e} {shares[2]:8.2e} | {off:12.2f} {on:5.2f}"
                      f" {on / off:6.2f}", flush=True)
                window, window_start = 0, time.perf_counter()
            if time.time() >= deadline:
                break
        epoch += 1


if __name__ == "__main__":
    main()
