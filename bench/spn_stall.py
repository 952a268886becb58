"""Does the RNN-SPN's recipe stall at ln 10? The preset's architecture (localisation convs, GRU 256,
32-channel classifier, downsample 3) trained for a few hundred steps on cluttered Fashion-MNIST
sequences, with each RMSprop update rule and each GRU initialisation, several seeds and clutter
levels (docs/results.md §3).

    python bench/spn_stall.py [--steps 300] [--seeds 0 1 2] [--clutter 8 16] [--signal full outline] [--quick]

Prints, per setting and seed, the mean training cross-entropy over the last 50 steps (ln 10 = 2.303
is chance), and the largest |theta - identity| at the end (a theta that flew off the image leaves
glimpses of the border). The sequences are generated in memory from Debian's Fashion-MNIST
(`/usr/share/datasets/fashion-mnist`, or `--data-dir`). `--signal outline` keeps only each item's
one-pixel outline (digits and clutter alike): about a tenth of the pixels lit, as sparse as MNIST's
strokes, where a filled Fashion item lights about half (docs/results.md §3: the recipe that trained on
filled items stalled on real digits).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import numpy as np
import torch

from dgm_dist.config import load_config
from dgm_dist.data.cluttered import ClutterParams, generate
from dgm_dist.data.files import find_file
from dgm_dist.data.idx import read_idx
from dgm_dist.models.cnn import IDENTITY
from dgm_dist.models.registry import DataInfo, build_model
from dgm_dist.training.optim import clip_gradients, make_optimizer

SETTINGS = [("rmsprop", "torch"), ("rmsprop", "lasagne"), ("rmsprop_lasagne", "torch"), ("rmsprop_lasagne", "lasagne")]


def outline(images: np.ndarray, level: int = 64) -> np.ndarray:
    """The lit pixels (> level) that have a 4-neighbour at or below it, at full brightness."""
    lit = images > level
    padded = np.pad(lit, ((0, 0), (1, 1), (1, 1)))
    inner = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return np.where(lit & ~inner, 255, 0).astype(np.uint8)


def sequences(data_dir: str, clutter: int, n: int, signal: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    def split(prefix):
        images, labels = (read_idx(find_file(Path(data_dir), f"{prefix}-{kind}-idx{d}-ubyte"))
                          for kind, d in (("images", 3), ("labels", 1)))
        return (outline(images) if signal == "outline" else images), labels
    (train_x, train_y), (test_x, test_y) = split("train"), split("t10k")
    p = ClutterParams(clutter=clutter, n_train=n, n_valid=1, n_test=1, valid_digits=1000, clutter_pool=20_000)
    out = generate(train_x, train_y, test_x, test_y, p)
    return torch.from_numpy(out["train_x"]).float().div_(255), torch.from_numpy(out["train_y"])


def run(x: torch.Tensor, y: torch.Tensor, optimizer: str, gru_init: str, seed: int, steps: int,
        overrides: list[str]) -> tuple[float, float]:
    cfg = load_config("rnn-spn-seq3", overrides=[f"optim.optimizer={optimizer}", f"model.gru_init={gru_init}",
                                                 *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg.model, DataInfo((x.shape[-1], x.shape[-1]), 10, sequence_length=y.shape[1]))
    opt = make_optimizer(cfg.optim, model.parameters())
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (cfg.optim.batch_size,), generator=g)
        loss, _ = model(x[idx], y[idx])
        opt.zero_grad()
        loss.backward()
        clip_gradients(model.parameters(), cfg.optim)
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        theta = model.attend(x[:100])[1].reshape(-1, 6)
    return statistics.mean(losses[-50:]), (theta - torch.tensor(IDENTITY)).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--clutter", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--signal", nargs="+", choices=["full", "outline"], default=["full"],
                    help="the items as they are, or only their outlines (sparse, like MNIST's strokes)")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 2 steps, 1 seed, small model")
    args = ap.parse_args()
    overrides = ["model.channels=4,4,4", "model.hidden=16", "model.loc_channels=4,4,4", "model.loc_hidden=8",
                 "optim.batch_size=10"] if args.quick else []
    if args.quick:
        args.steps, args.seeds, args.clutter, args.signal = 2, args.seeds[:1], args.clutter[:1], args.signal[:1]
    print(f"training cross-entropy, mean of the last {min(50, args.steps)} of {args.steps} steps (chance: "
          f"ln 10 = {math.log(10):.3f}); max |theta - identity| at the end")
    seeds = " ".join(f"{'seed ' + str(s):>16}" for s in args.seeds)
    print(f"{'signal':<7} {'clutter':>7} {'optimizer':<16} {'GRU init':<8} {seeds}")
    for signal in args.signal:
        for clutter in args.clutter:
            x, y = sequences(args.data_dir, clutter, 2000 if args.quick else 20_000, signal)
            for optimizer, gru_init in SETTINGS:
                cells = [run(x, y, optimizer, gru_init, seed, args.steps, overrides) for seed in args.seeds]
                print(f"{signal:<7} {clutter:>7} {optimizer:<16} {gru_init:<8} "
                      + " ".join(f"{loss:>8.3f} / {drift:>5.2f}" for loss, drift in cells), flush=True)


if __name__ == "__main__":
    main()
