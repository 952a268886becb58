"""The supervised MLP classifier: the "labelled data only" baseline (784-500-500-10 by default)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dgm_dist.models.interface import Classify, InferenceOptions


class MLPClassifier(nn.Module):
    """Dense ReLU layers, optional batch norm before each nonlinearity and dropout after it."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (500, 500),
                 batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities, (B, num_classes)."""
        return F.log_softmax(self.net(x.flatten(1)), dim=-1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy of a batch, and its metrics (summed over the batch, for exact averages)."""
        logp = self.classify(x)
        nll = F.nll_loss(logp, y, reduction="none")
        # float64 sums: full-set figures then do not depend on how the set is cut into batches or shards
        return nll.mean(), {"nll_sum": nll.detach().double().sum(), "error_sum": (logp.argmax(-1) != y).sum()}

    forward = loss   # the training loop calls model(**batch): DDP synchronises gradients through forward

    def eval_sums(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over the batch for full-set evaluation (`training.evaluation.evaluate_sums`)."""
        return self.loss(x, y)[1]

    def inference(self, options: InferenceOptions) -> nn.Module:
        """The exported graph: log-probabilities (models/interface.py)."""
        return Classify(self)
