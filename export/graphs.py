"""Deterministic inference graphs of the trained classifiers, as exported to ONNX.

Every graph takes raw pixels, `uint8 (B, H, W[, C])`, and does the preprocessing the training loop
did (`data.pixels.to_unit`: x / 255) inside, so an edge app feeds decoded images as they are.

- MLP, CNN: `log_probs` (B, classes) or (B, positions, classes).
- CNN-SPN, RNN-SPN: `log_probs` (B, positions, classes) and `theta` (B, steps, 2, 3), the affine
  map of each glimpse, so an app can draw the attention boxes (`glimpse_corners`).
- M2, ADGM, SDGM: log q(y|x). The paper predicts with q(y|a,x) averaged over S draws of
  a ~ q(a|x) (Maaloe et al. 2016, sec. 4). A random node in ONNX would give a different answer on
  every call, so the S standard-normal draws are fixed in the graph (`aux="sample"`, drawn from a
  seed), and PyTorch run with the same draws computes the same function. The same draws serve every
  example, where `model.classify` draws afresh per example: an estimate of the same expectation.
  `aux="mean"` puts a at the mean of q(a|x) (one pass, for small devices). M2 has no a.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgm_dist.models.cnn import SequenceCNN
from dgm_dist.models.dgm import SemiSupervisedDGM, _call
from dgm_dist.models.mlp import MLPClassifier
from dgm_dist.models.spn import CNNSPN, RNNSPN

INPUT = "pixels"


class Graph(nn.Module):
    """Pixels in, as `data.pixels.to_unit` converts them: uint8 0..255 -> float 0..1. The scale
    is a buffer, so `.double()` gives the float64 twin that `checks` uses as the exact reference."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("levels", torch.tensor(255.0), persistent=False)

    def to_unit(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.levels.dtype) / self.levels


class MLPGraph(Graph):
    outputs = ("log_probs",)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.classify(self.to_unit(pixels))


class SequenceGraph(Graph):
    """CNN: log-probabilities per position; the SPN models also return theta per step."""

    def __init__(self, model: SequenceCNN | CNNSPN | RNNSPN):
        super().__init__(model)
        self.outputs = ("log_probs",) if isinstance(model, SequenceCNN) else ("log_probs", "theta")

    def forward(self, pixels: torch.Tensor):
        x = self.to_unit(pixels)
        if isinstance(self.model, SequenceCNN):
            return self.model.classify(x)
        log_probs, theta, _ = self.model.attend(x)
        return log_probs, theta


class DGMGraph(Graph):
    """log q(y|x) of M2/ADGM/SDGM with the noise of a fixed (see the module docstring)."""

    outputs = ("log_probs",)

    def __init__(self, model: SemiSupervisedDGM, aux: str = "sample", samples: int = 100, seed: int = 0):
        super().__init__(model)
        self.aux = aux if model.has_aux else "none"
        draws = torch.randn(samples, 1, model.aux, generator=torch.Generator().manual_seed(seed)) \
            if self.aux == "sample" else torch.zeros(0)
        self.register_buffer("noise", draws)                            # (S, 1, A): shared by the batch

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = self.to_unit(pixels).flatten(1)
        if self.aux == "none":
            return F.log_softmax(m.class_logits(x, None), dim=-1)
        mu, logvar = m.aux_posterior(x)
        if self.aux == "mean":
            return F.log_softmax(m.class_logits(x, mu), dim=-1)
        a = mu + torch.exp(0.5 * logvar) * self.noise                   # (S, B, A)
        # x enters unexpanded: the factored first layer computes its term once, not S times
        logits = m.q_y_head(_call(m.q_y, x=x[None], a=a))                # (S, B, C)
        return torch.log(F.softmax(logits, dim=-1).mean(0))


@dataclass(frozen=True)
class GraphOptions:
    aux: str | None = None     # M2/ADGM/SDGM: "sample" (S fixed draws) or "mean"; None: the run's model.predict
    samples: int | None = None  # S; None: the run's model.eval_samples
    seed: int = 0              # of the S draws

    def for_model(self, model: nn.Module) -> GraphOptions:
        """These options with the trained model's own settings where none were given."""
        return dataclasses.replace(self, aux=self.aux or getattr(model, "predict", "sample"),
                                   samples=self.samples or getattr(model, "eval_samples", 100))

    def describe(self, model: nn.Module) -> str:
        if not isinstance(model, SemiSupervisedDGM):
            return "deterministic"
        if not model.has_aux:
            return "q(y|x), deterministic"
        if self.aux == "mean":
            return "q(y|a,x) at a = mean of q(a|x)"
        return f"q(y|a,x) averaged over {self.samples} fixed draws of a ~ q(a|x) (seed {self.seed})"


def build_graph(model: nn.Module, options: GraphOptions = GraphOptions()) -> nn.Module:
    """The inference graph of a trained classifier, in eval mode; `TypeError` for other models."""
    options = options.for_model(model)
    if isinstance(model, SemiSupervisedDGM):
        graph = DGMGraph(model, options.aux, options.samples, options.seed)
    elif isinstance(model, MLPClassifier):
        graph = MLPGraph(model)
    elif isinstance(model, (SequenceCNN, CNNSPN, RNNSPN)):
        graph = SequenceGraph(model)
    else:
        raise TypeError(type(model).__name__)
    return graph.eval()


def run_graph(graph: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The graph's outputs as a tuple, in its output order."""
    with torch.no_grad():
        out = graph(pixels)
    return out if isinstance(out, tuple) else (out,)
