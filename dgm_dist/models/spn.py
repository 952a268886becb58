"""Spatial transformer networks for cluttered digit sequences (Sønderby et al. 2015; docs/models.md).

- `SpatialTransformer` (in cnn.py, which the CNN baseline shares): an affine theta per glimpse, a
  sampling grid (`affine_grid`) and bilinear sampling (`grid_sample`) of the original image; the
  glimpse is the input size / `downsample`.
- `CNNSPN` (the original's FFN-SPN): a feed-forward localisation network gives one theta; one
  glimpse feeds a classifier with one softmax head per digit position.
- `RNNSPN`: the localisation features, repeated for every digit, drive a GRU; each step's state
  gives a theta, each theta one glimpse of the original image, and one classifier shared over the
  steps names the digit of each glimpse. Glimpses are not fed back into the GRU (as the paper).

Sampling follows Lasagne's `TransformerLayer`, which the original code used: the grid spans
[-1, 1] corner to corner (`align_corners=True`) and points outside the image take the nearest
border pixel (`padding_mode="border"`). Theta starts at the identity with zero weights
(docs/models.md: replications that skipped this did not train). Everything is tensor code with fixed shapes,
so the models export to ONNX (GridSample/AffineGrid, GRU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dgm_dist.models.cnn import (
    IDENTITY,
    GlimpseClassifier,
    SequenceClassifier,
    SpatialTransformer,
    as_channels,
    conv_output_size,
    conv_stack,
    glorot_init,
)
from dgm_dist.models.interface import InferenceOptions


def identity_affine(features: int) -> nn.Linear:
    """The layer that outputs theta: zero weights, identity bias, so every glimpse starts as the
    whole image (resized)."""
    layer = nn.Linear(features, 6)
    nn.init.zeros_(layer.weight)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor(IDENTITY))
    return layer


def strip_thetas(steps: int) -> torch.Tensor:
    """(steps, 6) thetas of `steps` vertical strips side by side, left to right, each the full
    height and 1/steps of the width: the `theta_start="strips"` option's first glimpses."""
    t = torch.arange(steps, dtype=torch.float32)
    out = torch.tensor(IDENTITY).repeat(steps, 1)
    out[:, 0] = 1.0 / steps                          # x scale
    out[:, 2] = -1.0 + (2 * t + 1) / steps           # x translation: strip centres
    return out


def lasagne_gru_init(gru: nn.GRU) -> None:
    """Lasagne's `GRULayer` defaults (the RNN-SPN code's GRU): every weight Normal(0, 0.1), every
    bias 0. PyTorch's default, uniform +-1/sqrt(hidden), gives states about 2.5x smaller at the
    start (docs/models.md)."""
    for name, param in gru.named_parameters():
        if name.startswith("weight"):
            nn.init.normal_(param, std=0.1)
        else:
            nn.init.zeros_(param)


def glimpse_corners(theta: torch.Tensor, image_size: int) -> torch.Tensor:
    """Pixel (x, y) of the four corners of each glimpse, in drawing order: thetas (..., 2, 3) ->
    (..., 4, 2). A glimpse's corner (+-1, +-1) samples the image at theta @ (x, y, 1), and with
    `align_corners=True` the normalised -1 and 1 are the centres of the first and last pixels."""
    corners = theta.new_tensor([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]])      # (4, 3)
    source = torch.einsum("...ij,kj->...ki", theta, corners)                          # (..., 4, 2)
    return (source + 1) / 2 * (image_size - 1)


def glimpse_sums(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where the glimpses look, summed over the batch (docs/models.md, *diagnostics*), from thetas
    (B, T, 2, 3) in the sampler's coordinates (the image spans [-1, 1]): `glimpse_area`, the mean
    fraction of the image each glimpse covers (|det A|; 1 at the identity); `glimpse_x`, each step's
    centre across the image (a vector, -1 left edge, +1 right); `glimpse_spread`, the mean distance
    of a step's centre from the mean of its sequence's centres (0 while every step sees the same box)."""
    theta = theta.detach().double()
    area = torch.linalg.det(theta[..., :2]).abs()                                  # (B, T)
    centre = theta[..., 2]                                                         # (B, T, 2)
    spread = (centre - centre.mean(1, keepdim=True)).norm(dim=-1).mean(-1)        # (B,)
    return {"glimpse_area_sum": area.mean(-1).sum(), "glimpse_x_sum": centre[..., 0].sum(0),
            "glimpse_spread_sum": spread.sum()}


def localisation_features(image_size: int, channels: tuple[int, ...], dropout: float) -> tuple[nn.Module, int]:
    """MaxPool 2, then the conv stack (docs/models.md: 100 -> 50 -> 48 -> 24 -> 22 -> 11 -> 9, i.e.
    20 x 9 x 9 features). Returns the module and its flattened output size."""
    side = conv_output_size(image_size // 2, len(channels))
    if side < 1:
        raise ValueError(f"a {image_size}-pixel image is too small for the localisation network "
                         f"({len(channels)} conv layers after a 2x2 pool)")
    net = nn.Sequential(nn.MaxPool2d(2), conv_stack(1, channels, dropout), nn.Flatten())
    return net, channels[-1] * side * side


class Attend(nn.Module):
    """The exported graph of a spatial transformer: log-probabilities (B, positions, classes) and
    theta (B, steps, 2, 3), the affine map of every glimpse, so an app can draw the attention boxes."""

    outputs = ("log_probs", "theta")
    description = "deterministic"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, theta, _ = self.model.attend(x)
        return log_probs, theta


class Attending(SequenceClassifier):
    """What both spatial transformers share once `attend` is defined: classification, the
    evaluation's sums with the glimpse diagnostics, the exported graph."""

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def eval_sums(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        log_probs, theta, _ = self.attend(x)
        return {**self.eval_scored(log_probs, y), **glimpse_sums(theta)}

    def inference(self, options: InferenceOptions) -> nn.Module:
        return Attend(self)


class CNNSPN(Attending):
    """The FFN-SPN of the original code: localisation convs -> dense -> theta; one glimpse; the
    classifier with one softmax head per digit position."""

    def __init__(self, image_size: int, digits: int, num_classes: int, channels: tuple[int, ...] = (96, 96, 96),
                 dense: int = 400, downsample: float = 2.0, dropout: float = 0.0,
                 loc_channels: tuple[int, ...] = (20, 20, 20), loc_hidden: int = 200):
        super().__init__()
        self.digits, self.num_classes, self.steps = digits, num_classes, 1
        self.localisation, features = localisation_features(image_size, loc_channels, dropout)
        self.loc_dense = nn.Sequential(nn.Linear(features, loc_hidden), nn.ReLU())
        self.transformer = SpatialTransformer(image_size, downsample)
        self.classifier = GlimpseClassifier(self.transformer.size, channels, dense, digits * num_classes, dropout)
        glorot_init(self)
        self.theta = identity_affine(loc_hidden)

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probabilities (B, digits, classes), theta (B, 1, 2, 3), glimpses (B, 1, g, g))."""
        images = as_channels(x)
        theta = self.theta(self.loc_dense(self.localisation(images))).view(-1, 1, 2, 3)
        glimpses = self.transformer(images, theta)[:, :, 0]
        logits = self.classifier(glimpses).view(-1, self.digits, self.num_classes)
        return F.log_softmax(logits, dim=-1), theta, glimpses


class RNNSPN(Attending):
    """The recurrent spatial transformer: one GRU step, theta and glimpse per digit; one classifier
    shared over the glimpses; the loss is the cross-entropy averaged over the steps."""

    def __init__(self, image_size: int, digits: int, num_classes: int, channels: tuple[int, ...] = (32, 32, 32),
                 dense: int = 400, downsample: float = 3.0, dropout: float = 0.0,
                 loc_channels: tuple[int, ...] = (20, 20, 20), loc_hidden: int = 256, gru_init: str = "lasagne",
                 theta_start: str = "identity"):
        super().__init__()
        self.digits, self.num_classes, self.steps = digits, num_classes, digits
        self.localisation, features = localisation_features(image_size, loc_channels, dropout)
        self.transformer = SpatialTransformer(image_size, downsample)
        self.classifier = GlimpseClassifier(self.transformer.size, channels, dense, num_classes, dropout)
        glorot_init(self)
        self.gru = nn.GRU(features, loc_hidden, batch_first=True)
        if gru_init == "lasagne":
            lasagne_gru_init(self.gru)
        elif gru_init != "torch":
            raise ValueError(f"gru_init={gru_init!r}: expected 'lasagne' or 'torch'")
        self.theta = identity_affine(loc_hidden)
        # beyond the paper (off in its presets): a learnable theta offset per step, starting at T
        # distinct strips, so the glimpses differ from the first step (docs/models.md)
        if theta_start == "strips":
            self.theta_offset = nn.Parameter(strip_thetas(digits) - torch.tensor(IDENTITY))
        elif theta_start == "identity":
            self.theta_offset = None
        else:
            raise ValueError(f"theta_start={theta_start!r}: expected 'identity' or 'strips'")

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probabilities (B, T, classes), thetas (B, T, 2, 3), glimpses (B, T, g, g))."""
        images = as_channels(x)
        features = self.localisation(images)
        # the same features at every step (the original's Repeat layer): the GRU state alone moves the glimpse
        states, _ = self.gru(features.unsqueeze(1).expand(-1, self.steps, -1))
        theta = self.theta(states) if self.theta_offset is None else self.theta(states) + self.theta_offset
        theta = theta.view(-1, self.steps, 2, 3)
        glimpses = self.transformer(images, theta)[:, :, 0]                       # (B, T, g, g)
        g = glimpses.shape[-1]
        logits = self.classifier(glimpses.reshape(-1, 1, g, g)).view(-1, self.steps, self.num_classes)
        return F.log_softmax(logits, dim=-1), theta, glimpses
