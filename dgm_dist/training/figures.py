"""Figures a finished run leaves beside its final checkpoint (logged to MLflow by the driver).

Classifiers: the first test examples captioned "predicted/true" (class names cut to 4 letters). Sequence classifiers:
a per-digit confusion matrix over the whole test set. Spatial transformers (models with `attend`): the attention box of
every step drawn on test images (the RNN-SPN paper's figure) and the glimpses themselves. Other model families add
their own (sample grids, reconstructions) through a `figures(data)` method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dgm_dist.data.grid import save_grid
from dgm_dist.data.pixels import to_unit
from dgm_dist.training.data import TrainingData

COUNT = 16
STEP_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:cyan")


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def attention_boxes(images: np.ndarray, corners: np.ndarray, captions: list[str], path: Path) -> Path:
    """Each image with the glimpse of every step outlined, one colour per step (legend: step number).
    `corners` (N, T, 4, 2) are pixel (x, y) as `spn.glimpse_corners` gives them."""
    plt = _pyplot()
    columns = 4
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, boxes, caption in zip(axes.flat, images, corners, captions, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255 if image.dtype == np.uint8 else 1)
        for t, box in enumerate(boxes):
            closed = np.vstack([box, box[:1]])
            ax.plot(closed[:, 0], closed[:, 1], color=STEP_COLOURS[t % len(STEP_COLOURS)], linewidth=1.2,
                    label=f"step {t + 1}")
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(image.shape[0] - 0.5, -0.5)
        ax.set_title(caption, fontsize=8)
    axes.flat[0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix(pred: np.ndarray, true: np.ndarray, classes: tuple[str, ...], path: Path) -> Path:
    """Counts of (true, predicted) over every digit of every test sequence, with the per-class error."""
    plt = _pyplot()
    k = len(classes) or int(max(pred.max(), true.max())) + 1
    names = classes or tuple(map(str, range(k)))
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (true.reshape(-1), pred.reshape(-1)), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(np.log1p(counts), cmap="Blues")
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if counts[i, j] > counts.max() / 4 else "black")
    per_class = 1 - np.diag(counts) / np.maximum(counts.sum(1), 1)
    ax.set_yticks(range(k), [f"{n[:8]} ({100 * e:.1f}%)" for n, e in zip(names, per_class, strict=True)], fontsize=7)
    ax.set_xticks(range(k), [n[:8] for n in names], rotation=60, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (error)")
    ax.set_title(f"test digits: {counts.sum():,}, error {100 * (1 - np.trace(counts) / counts.sum()):.2f}%", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def _predict_all(model, x: torch.Tensor, device, batch: int = 500) -> torch.Tensor:
    return torch.cat([model.classify(to_unit(x[i:i + batch]).to(device)).argmax(-1).cpu()
                      for i in range(0, len(x), batch)])


@torch.no_grad()
def sequence_figures(model, data: TrainingData, out: Path, device) -> list[Path]:
    from dgm_dist.models.spn import glimpse_corners

    x, y = data.eval_sets["test"]
    written = [confusion_matrix(_predict_all(model, x, device).numpy(), y.numpy(), data.classes,
                                out / "confusion_matrix.png")]
    if hasattr(model, "attend"):
        logp, theta, glimpses = model.attend(to_unit(x[:COUNT]).to(device))
        short = tuple(c[:4] for c in data.classes)
        captions = [f"{_label(short, p)}/{_label(short, t)}" for p, t in zip(logp.argmax(-1).cpu(), y[:COUNT],
                                                                             strict=True)]
        corners = glimpse_corners(theta.cpu(), x.shape[-1]).numpy()
        written.append(attention_boxes(x[:COUNT].numpy(), corners, captions, out / "attention_boxes.png"))
        steps = glimpses.shape[1]        # one row per image: its glimpses in step order
        step_captions = [f"{i + 1}:{short[int(c)] if short else int(c)}" if steps > 1 else f"{i + 1}"
                         for i in range(COUNT) for c in logp.argmax(-1)[i][:steps].cpu()]
        written.append(save_grid(out / "glimpses.png", glimpses.reshape(-1, *glimpses.shape[-2:]).cpu().numpy(),
                                 step_captions[: len(glimpses) * steps], columns=steps * 4))
    return written


@torch.no_grad()
def write_figures(model, data: TrainingData, out: Path, device, metrics: dict | None = None) -> list[Path]:
    written = []
    if metrics and any(k.startswith("test_kl_units") for k in metrics):
        written.append(kl_per_unit(metrics, out / "kl_per_unit.png"))
    x, y = data.eval_sets["test"]
    x, y = x[:COUNT], y[:COUNT]
    if hasattr(model, "classify"):
        model.eval()
        pred = model.classify(to_unit(x).to(device)).argmax(-1).cpu()
        short = tuple(c[:4] for c in data.classes)       # captions are as wide as the image
        captions = [f"{_label(short, p)}/{_label(short, t)}" for p, t in zip(pred, y, strict=True)]
        written.append(save_grid(out / "test_predictions.png", x.numpy(), captions, columns=4))
    if y.ndim == 2:                                   # digit sequences
        written += sequence_figures(model, data, out, device)
    if hasattr(model, "figures"):
        for name, (images, captions) in model.figures(data).items():
            written.append(save_grid(out / f"{name}.png", np.asarray(images), captions, columns=8))
    return written
