"""What every model family offers the rest of the framework (docs/models.md). The training loop,
the evaluation and the ONNX export go through these methods, never through a model's class, so a
new classifier touches only its own model file and its registry entry.

A model's `forward(**batch)` is its training loss (DDP synchronises gradients through `forward`),
returned with its terms summed over the batch; `eval_sums(x, y)` gives the sums a full-set
evaluation averages. Optional hooks: `prepare_evaluation(x_train)` (e.g. batch-norm statistics of
the whole training set), `summarize(sums)` (per-unit statistics into figures such as active units),
`figures(data, device, metrics)`. A classifier adds `classify(x)` and `inference(options)`: the
deterministic module that the export wraps (pixels in, `outputs` out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class InferenceOptions:
    """How a classifier predicts in its exported graph. Only the semi-supervised models read them:
    `aux` is "sample" (q(y|a,x) averaged over `samples` draws of a fixed from `seed`) or "mean"."""

    aux: str = "sample"
    samples: int = 100
    seed: int = 0


@runtime_checkable
class Model(Protocol):
    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def eval_sums(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Classifier(Model, Protocol):
    def classify(self, x: torch.Tensor) -> torch.Tensor: ...

    def inference(self, options: InferenceOptions) -> nn.Module:
        """A module from inputs in [0, 1] to the exported outputs, deterministic; its attributes
        `outputs` (the names, in order) and `description` (how it predicts, for the model card)."""
        ...


class Classify(nn.Module):
    """The inference of a classifier whose `classify` is already deterministic: log-probabilities."""

    outputs = ("log_probs",)
    description = "deterministic"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.classify(x)
