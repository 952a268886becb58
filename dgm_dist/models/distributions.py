"""Log-densities and KL divergences, in nats, summed over the last (feature) axis.

Gaussians are parameterised by mean and log-variance; the log-variance is an unconstrained linear
output (a softplus on it, as one public port did, would force every variance >= 1: docs/models.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def log_normal(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + x.pow(2)).sum(-1)


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x) of Bernoulli(sigmoid(logits)); also for x in [0, 1] (grey-scale pixels)."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


def kl_normal_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), analytic."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def sample_normal(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Reparameterised draw: mu + sigma * eps, eps ~ N(0, I) drawn here unless given (a given eps
    broadcasts, e.g. one draw shared by every enumerated class: docs/models.md)."""
    return mu + torch.exp(0.5 * logvar) * (torch.randn_like(mu) if eps is None else eps)
