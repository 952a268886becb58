"""What Ray Train costs: a plain PyTorch loop vs the same model through the TorchTrainer.

    python bench/train_overhead.py [--quick] [--gpu] [--preset adgm-mnist100] [--examples N --epochs E]

One run prints, side by side:
  * training examples/s of a plain single-process loop (the engine's own batches, model, optimizer
    and clipping, one thread) vs `dgm-dist train` with 1 Ray worker (one CPU, so one thread);
  * 2 workers (DDP over gloo) vs 1 worker on this machine;
  * seconds from the call to the first training step (validation, data, MLflow, Ray start-up,
    worker group).
Throughput is the median over epochs after the first; evaluation is excluded from both sides.
Model: the MLP 784-500-500-10 on Fashion-MNIST (Debian's dataset-fashion-mnist), batch 100; or
`--preset` (e.g. `adgm-mnist100`: the ADGM at the paper's size, 5 MC samples, on Fashion-MNIST with
100 labels: a compute-heavy step, where DDP should pay even on 2 cores). For the semi-supervised
models the examples are the unlabelled ones (an epoch is a pass over them).
With --gpu the plain loop and the workers use one GPU each (NCCL); 2 workers need 2 GPUs.
"""

import argparse
import os
import statistics
import tempfile
import time


def plain_loop(cfg, epochs: int, device: str) -> float:
    import torch

    from dgm_dist.data import load_from_config
    from dgm_dist.data.pixels import to_unit
    from dgm_dist.models.registry import build_model, model_spec
    from dgm_dist.training import data as D
    from dgm_dist.training.optim import clip_gradients, make_optimizer

    if device == "cpu":
        torch.set_num_threads(1)                 # what a Ray worker with one CPU gets
    data = D.prepare(load_from_config(cfg.data), cfg.data, model_spec(cfg.model.name).streams)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.info).to(device)
    opt = make_optimizer(cfg.optim, model.parameters())
    spec = model_spec(cfg.model.name)
    rates = []
    for epoch in range(epochs):
        n, t = 0, time.perf_counter()
        for batch in D.epoch_batches(data, epoch, 0, 1, cfg.optim.batch_size, cfg.optim.labelled_batch_size,
                                     cfg.seed):
            inputs = {k: (v if k == "y" else to_unit(v)).to(device) for k, v in batch.items()}
            if spec.kl_weight:
                inputs["kl_weight"] = 1.0
            loss, _ = model(**inputs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), cfg.optim)
            opt.step()
            n += len(batch.get("x_unlabelled", batch["x"]))
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 epochs on 2 000 examples instead of 4 on 50 000")
    ap.add_argument("--gpu", action="store_true", help="one GPU per worker and for the plain loop")
    ap.add_argument("--preset", default="mlp-fashion", help="the model and recipe (default: mlp-fashion)")
    ap.add_argument("--examples", type=int, default=None,
                    help="training examples per epoch (default 50 000; a slow step, e.g. the ADGM's, wants fewer)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per arm (default 4; at least 2)")
    args = ap.parse_args()
    epochs = args.epochs or (2 if args.quick else 4)   # the rate is the median of the epochs after the first
    if epochs < 2 or not 0 < (args.examples or 1) <= 59_000:
        ap.error("--epochs must be at least 2 (the first epoch is not timed) and --examples between 1 and 59000")
    device = "cuda" if args.gpu else "cpu"
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu: torch sees no GPU here")
        two_workers = torch.cuda.device_count() >= 2
    else:
        two_workers = True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as root:
        from dgm_dist.config import load_config
        from dgm_dist.training.launcher import train

        ssl = load_config(args.preset).data.labels > 0
        data = ["data.dataset=fashion-mnist", "data.labels=100"] if ssl else []
        if args.quick:
            data += ["data.validation=58000"] + (["model.hidden=64,64", "model.mc_samples=1"] if ssl else [])
        elif args.examples:                        # Fashion-MNIST's 60 000: the rest is the validation set
            data += [f"data.validation={60_000 - args.examples}"]

        def cfg(workers):
            return load_config(args.preset, overrides=[
                f"scaling.workers={workers}", f"scaling.use_gpu={str(args.gpu).lower()}", f"optim.epochs={epochs}",
                f"scaling.checkpoint_every={epochs}", "scaling.cpus_per_worker=1", f"tracking.root={root}", *data])

        plain = plain_loop(cfg(1), epochs, device)
        one = train(cfg(1), out=None)
        two = train(cfg(2), out=None) if two_workers else None

    def rate(result):
        return statistics.median(h["throughput"] for h in result.history[1:])

    r1 = rate(one)
    kind = "1 GPU" if args.gpu else "1 thread"
    print(f"{args.preset}: {'unlabelled ' if load_config(args.preset).data.labels else ''}examples/s")
    print(f"{'setting':<38} {'examples/s':>11}")
    print(f"{'plain PyTorch loop, ' + kind:<38} {plain:>11,.0f}")
    print(f"{'TorchTrainer, 1 worker':<38} {r1:>11,.0f}")
    if two:
        r2 = rate(two)
        print(f"{'TorchTrainer, 2 workers (DDP, ' + ('nccl)' if args.gpu else 'gloo)'):<38} {r2:>11,.0f}")
    print(f"1 worker / plain loop:   {r1 / plain:.3f}   (target >= 0.90)")
    if two:
        print(f"2 workers / 1 worker:    {r2 / r1:.3f}   on {os.cpu_count()} cores")
    else:
        print("2 workers / 1 worker:    not measured (one GPU here)")
    print(f"start to first step:     {one.startup_seconds:.1f} s with 1 worker"
          + (f", {two.startup_seconds:.1f} s with 2 workers" if two else "") + " (each starts its own local Ray)")

if __name__ == "__main__":
    main()
