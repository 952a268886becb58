"""Deterministic inference graphs of the trained classifiers, as exported to ONNX.

Every graph takes raw pixels, `uint8 (B, H, W[, C])`, and does the preprocessing the training loop
did (`data.pixels.to_unit`: x / 255) inside, so an edge app feeds decoded images as they are; what
follows is the classifier's own `inference` module (dgm_dist/models/interface.py), so this file
knows no model class:

- MLP, CNN: `log_probs` (B, classes) or (B, positions, classes).
- CNN-SPN, RNN-SPN: `log_probs` (B, positions, classes) and `theta` (B, steps, 2, 3).
- M2, ADGM, SDGM: log q(y|x), with the S draws of a fixed in the graph (`aux="sample"`) or a at
  the mean of q(a|x) (`aux="mean"`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from dgm_dist.models.interface import InferenceOptions

INPUT = "pixels"


class Graph(nn.Module):
    """Pixels in, as `data.pixels.to_unit` converts them: uint8 0..255 -> float 0..1, then the
    classifier's inference module. The scale is a buffer, so `.double()` gives the float64 twin that
    `checks` uses as the exact reference."""

    def __init__(self, inference: nn.Module):
        super().__init__()
        self.inference = inference
        self.outputs = tuple(inference.outputs)
        self.register_buffer("levels", torch.tensor(255.0), persistent=False)

    def forward(self, pixels: torch.Tensor):
        return self.inference(pixels.to(self.levels.dtype) / self.levels)


@dataclass(frozen=True)
class GraphOptions:
    aux: str | None = None     # M2/ADGM/SDGM: "sample" (S fixed draws) or "mean"; None: the run's model.predict
    samples: int | None = None  # S; None: the run's model.eval_samples
    seed: int = 0              # of the S draws

    def for_model(self, model: nn.Module) -> GraphOptions:
        """These options with the trained model's own settings where none were given."""
        return dataclasses.replace(self, aux=self.aux or getattr(model, "predict", "sample"),
                                   samples=self.samples or getattr(model, "eval_samples", 100))

    def inference(self, model: nn.Module) -> InferenceOptions:
        o = self.for_model(model)
        return InferenceOptions(aux=o.aux, samples=o.samples, seed=o.seed)


def build_graph(model: nn.Module, options: GraphOptions = GraphOptions()) -> nn.Module:
    """The inference graph of a trained classifier, in eval mode; `TypeError` for a model that has
    no `inference` (not a classifier)."""
    if not callable(getattr(model, "inference", None)):
        raise TypeError(f"{type(model).__name__} is not a classifier (it has no `inference`)")
    return Graph(model.inference(options.inference(model))).eval()


def run_graph(graph: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The graph's outputs as a tuple, in its output order."""
    with torch.no_grad():
        out = graph(pixels)
    return out if isinstance(out, tuple) else (out,)
