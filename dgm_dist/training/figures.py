"""Figures a finished run leaves beside its final checkpoint (logged to MLflow by the driver).

Classifiers: the first test examples captioned "predicted/true" (class names cut to 4 letters). Model families add
their own (sample grids, reconstructions, attention boxes) through a `figures(data)` method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dgm_dist.data.grid import save_grid
from dgm_dist.training.data import TrainingData, to_float

COUNT = 16


def _label(classes: tuple[str, ...], y: torch.Tensor) -> str:
    names = classes or tuple(map(str, range(int(y.max()) + 1)))
    return " ".join(names[int(c)] for c in y.reshape(-1))


def kl_per_unit(metrics: dict, path: Path) -> Path:
    """The LVAE paper's figure: the KL of every latent unit, a panel per layer (test set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(int(k.removeprefix("test_kl_units")) for k in metrics if k.startswith("test_kl_units"))
    fig, axes = plt.subplots(1, len(layers), figsize=(3 * len(layers), 2.6), squeeze=False)
    for ax, i in zip(axes[0], layers, strict=True):
        kl = metrics[f"test_kl_units{i}"]
        ax.bar(range(len(kl)), sorted(kl, reverse=True), width=1.0)
        ax.set_title(f"z{i}: {metrics.get(f'test_active_units{i}', '?')} active of {len(kl)}", fontsize=9)
        ax.set_xlabel("unit (sorted)", fontsize=8)
    axes[0][0].set_ylabel("KL (nats)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def write_figures(model, data: TrainingData, out: Path, device, metrics: dict | None = None) -> list[Path]:
    written = []
    if metrics and any(k.startswith("test_kl_units") for k in metrics):
        written.append(kl_per_unit(metrics, out / "kl_per_unit.png"))
    x, y = data.eval_sets["test"]
    x, y = x[:COUNT], y[:COUNT]
    if hasattr(model, "classify"):
        model.eval()
        pred = model.classify(to_float(x).to(device)).argmax(-1).cpu()
        short = tuple(c[:4] for c in data.classes)       # captions are as wide as the image
        captions = [f"{_label(short, p)}/{_label(short, t)}" for p, t in zip(pred, y, strict=True)]
        written.append(save_grid(out / "test_predictions.png", x.numpy(), captions, columns=4))
    if hasattr(model, "figures"):
        for name, (images, captions) in model.figures(data).items():
            written.append(save_grid(out / f"{name}.png", np.asarray(images), captions, columns=8))
    return written
