"""Cluttered-sequence models: training and evaluation images/s (papers' sizes, 100x100 inputs).

    python bench/spn_throughput.py [--quick] [--threads N]

One run measures the CNN baseline, the CNN-SPN and the RNN-SPN at downsample 1, 2, 3 and 4 as
their presets build them, training steps as the training loop takes them (forward, backward,
the preset's gradient clipping, RMSprop) on a batch of 100, and evaluation (forward, no
gradient) on a batch of 500. Rounds are interleaved so every model sees the same machine state;
the table prints medians and each model's ratio to the CNN baseline. The "vs NCHW" columns time
the same model with its convolution weights in the default layout, interleaved too: the speed-up
of the channels-last layout the registry now builds (docs/results.md, section 6).
"""

import argparse
import statistics
import time

import torch

from dgm_dist.config import load_config
from dgm_dist.models.registry import DataInfo, build_model
from dgm_dist.training.optim import clip_gradients, make_optimizer

INFO = DataInfo((100, 100), 10, sequence_length=3)


def variants() -> dict[str, object]:
    out = {"cnn": load_config("cnn-seq3"), "cnn_spn": load_config("cnn-spn-seq3")}
    for d in (1, 2, 3, 4):
        out[f"rnn_spn d={d}"] = load_config("rnn-spn-seq3", overrides=[f"model.downsample={d}"])
    return out


def train_rate(model, optimizer, optim_cfg, x, y, steps: int) -> float:
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), optim_cfg)
        optimizer.step()
    return steps * len(x) / (time.perf_counter() - start)


@torch.no_grad()
def eval_rate(model, x, y, steps: int) -> float:
    model.eval()
    start = time.perf_counter()
    for _ in range(steps):
        model.eval_sums(x, y)
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds, two models")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, rounds = (1, 1) if args.quick else (4, 3)
    configs = variants()
    if args.quick:
        configs = {k: configs[k] for k in ("cnn", "rnn_spn d=3")}
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(100, 100, 100, generator=g), torch.randint(0, 10, (100, 3), generator=g)
    xe, ye = torch.rand(500, 100, 100, generator=g), torch.randint(0, 10, (500, 3), generator=g)
    runs = {}
    for name, cfg in configs.items():
        for layout in ("channels_last", "nchw"):
            torch.manual_seed(0)
            model = build_model(cfg.model, INFO)                   # channels-last, as training builds it
            if layout == "nchw":
                model = model.to(memory_format=torch.contiguous_format)
            runs[name, layout] = (model, make_optimizer(cfg.optim, model.parameters()), cfg.optim)
            train_rate(*runs[name, layout], x, y, 1)                                   # warm-up
    train, evals = {k: [] for k in runs}, {k: [] for k in runs}
    for _ in range(rounds):
        for key, (model, optimizer, optim_cfg) in runs.items():
            train[key].append(train_rate(model, optimizer, optim_cfg, x, y, steps))
            evals[key].append(eval_rate(model, xe, ye, max(1, steps // 2)))
    t = {k: statistics.median(v) for k, v in train.items()}
    e = {k: statistics.median(v) for k, v in evals.items()}
    print(f"images/s, {args.threads} thread(s), median of {rounds} interleaved rounds "
          f"({steps} training steps of 100, {max(1, steps // 2)} evaluation batches of 500)")
    print(f"{'model':<13} {'params':>10} {'glimpse':>8} {'train':>8} {'vs CNN':>7} {'vs NCHW':>8} "
          f"{'eval':>8} {'vs CNN':>7} {'vs NCHW':>8}")
    cnn = ("cnn", "channels_last")
    for name in configs:
        key, old = (name, "channels_last"), (name, "nchw")
        model = runs[key][0]
        size = getattr(getattr(model, "transformer", None), "size", getattr(model, "glimpse", None))
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<13} {params:>10,} {size:>5}px {t[key]:>8,.0f} {t[key] / t[cnn]:>6.2f}x "
              f"{t[key] / t[old]:>7.2f}x {e[key]:>8,.0f} {e[key] / e[cnn]:>6.2f}x {e[key] / e[old]:>7.2f}x")

if __name__ == "__main__":
    main()
