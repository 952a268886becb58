"""Building blocks of the generative models: multi-input MLPs and Gaussian heads.

A network over several inputs (`[x, a, y]`) has one linear map per input in its first layer, summed,
as the ADGM/SDGM code does (docs/models.md, "the first-layer merge"). Inputs broadcast against each other,
so when the classes are enumerated for an unlabelled example the `x` term is computed once and added
to the ten `y` terms, instead of multiplying a copy of x by the weights ten times. `factored=False`
computes the same function the naive way (inputs expanded and concatenated, one matrix product), for
the benchmark and the equivalence test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _init_hidden(linear: nn.Linear) -> None:
    # GlorotNormal with the ReLU gain and N(0, 1e-3) biases, as the original code
    nn.init.xavier_normal_(linear.weight, gain=nn.init.calculate_gain("relu"))
    if linear.bias is not None:
        nn.init.normal_(linear.bias, std=1e-3)


class MultiInputLinear(nn.Module):
    """sum_k W_k input_k + b over named inputs that broadcast to a common batch shape."""

    def __init__(self, sizes: dict[str, int], out_features: int, factored: bool = True):
        super().__init__()
        self.names = list(sizes)
        self.factored = factored
        self.maps = nn.ModuleDict({n: nn.Linear(sizes[n], out_features, bias=i == 0) for i, n in enumerate(sizes)})
        for m in self.maps.values():
            _init_hidden(m)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        if self.factored:
            out = None
            for n in self.names:
                term = self.maps[n](inputs[n])
                out = term if out is None else out + term      # broadcasting add
            return out
        shape = torch.broadcast_shapes(*(inputs[n].shape[:-1] for n in self.names))
        joined = torch.cat([inputs[n].expand(*shape, inputs[n].shape[-1]) for n in self.names], dim=-1)
        weight = torch.cat([self.maps[n].weight for n in self.names], dim=1)
        return F.linear(joined, weight, self.maps[self.names[0]].bias)


class Hidden(nn.Module):
    """Optional batch norm, then ReLU. Batch norm normalises over every leading axis (examples,
    samples, enumerated classes) together."""

    def __init__(self, width: int, batch_norm: bool):
        super().__init__()
        self.bn = nn.BatchNorm1d(width) if batch_norm else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            h = self.bn(h.reshape(-1, h.shape[-1])).reshape(h.shape)
        return F.relu(h)


class MLP(nn.Module):
    """Multi-input first layer, then dense ReLU layers: `hidden=(500, 500)` is two layers of 500."""

    def __init__(self, sizes: dict[str, int], hidden: tuple[int, ...], batch_norm: bool = False,
                 factored: bool = True):
        super().__init__()
        self.first = MultiInputLinear(sizes, hidden[0], factored)
        self.acts = nn.ModuleList([Hidden(hidden[0], batch_norm)])
        self.rest = nn.ModuleList()
        for w_in, w_out in zip(hidden, hidden[1:], strict=False):
            lin = nn.Linear(w_in, w_out)
            _init_hidden(lin)
            self.rest.append(lin)
            self.acts.append(Hidden(w_out, batch_norm))
        self.out_features = hidden[-1]

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        h = self.acts[0](self.first(**inputs))
        for lin, act in zip(self.rest, self.acts[1:], strict=True):
            h = act(lin(h))
        return h


class GaussianHead(nn.Module):
    """Mean and log-variance, linear (N(0, 1e-3) initial weights, as the original's heads)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.mu = nn.Linear(in_features, out_features)
        self.logvar = nn.Linear(in_features, out_features)
        for lin in (self.mu, self.logvar):
            nn.init.normal_(lin.weight, std=1e-3)
            nn.init.normal_(lin.bias, std=1e-3)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(h), self.logvar(h)
