"""Classifiers of cluttered digit sequences: the shared pieces (the sampler of the spatial
transformers included), and the plain CNN baseline.

The CNN baseline is not in the original code (docs/models.md). Here it is the CNN-SPN with its
transformer fixed at the identity: the same sampler at the same glimpse size (the whole image,
sampled on a corner-to-corner grid of input / `downsample` pixels), then the FFN-SPN's classifier
(three 3x3 convolutions with max-pooling, a dense layer of 400, one softmax head per digit
position). Its input is exactly the CNN-SPN's first glimpse, so the comparison isolates what the
transformer learns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dgm_dist.models.interface import Classify, InferenceOptions


def conv_stack(in_channels: int, channels: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Valid 3x3 convolutions with ReLU; a 2x2 max-pool (and dropout) after every one but the last
    (the layout of the original classifiers, docs/models.md)."""
    layers: list[nn.Module] = []
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(in_channels, c, 3), nn.ReLU()]
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(2))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        in_channels = c
    return nn.Sequential(*layers)


def conv_output_size(size: int, layers: int) -> int:
    for i in range(layers):
        size -= 2                      # valid 3x3 convolution
        if i < layers - 1:
            size //= 2                 # 2x2 max-pool
    return size


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every conv and dense layer (Lasagne's defaults,
    which the original code used; torch's default init is smaller)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def glimpse_size(image_size: int, downsample: float) -> int:
    """The original's int(100 / 3.0) = 33."""
    return int(image_size / downsample)


IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class SpatialTransformer(nn.Module):
    """Images (B, C, H, W) and thetas (B, T, 2, 3) -> glimpses (B, T, C, H/d, W/d)."""

    def __init__(self, image_size: int, downsample: float):
        super().__init__()
        self.size = glimpse_size(image_size, downsample)
        if self.size < 1:
            raise ValueError(f"model.downsample={downsample} leaves no pixel of a {image_size}-pixel image")

    def forward(self, images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        b, t = theta.shape[:2]
        c, g = images.shape[1], self.size
        grid = F.affine_grid(theta.reshape(b * t, 2, 3), [b * t, c, g, g], align_corners=True)
        # all T grids stacked into one (B, T*g, g) grid: one sampling pass, the image is never copied
        out = F.grid_sample(images, grid.reshape(b, t * g, g, 2), mode="bilinear", padding_mode="border",
                            align_corners=True)
        return out.reshape(b, c, t, g, g).transpose(1, 2)


class GlimpseClassifier(nn.Module):
    """(N, 1, g, g) glimpses -> (N, heads * num_classes) logits: conv stack, dense ReLU, output."""

    def __init__(self, glimpse: int, channels: tuple[int, ...], dense: int, outputs: int, dropout: float):
        super().__init__()
        side = conv_output_size(glimpse, len(channels))
        if side < 1:
            raise ValueError(f"a {glimpse}x{glimpse} glimpse is too small for {len(channels)} conv layers; "
                             f"lower model.downsample or use fewer model.channels")
        self.features = conv_stack(1, channels, dropout)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side * side, dense), nn.ReLU())
        self.out = nn.Linear(dense, outputs)

    def forward(self, glimpses: torch.Tensor) -> torch.Tensor:
        return self.out(self.dense(self.features(glimpses)))


class SequenceClassifier(nn.Module):
    """The loss and metrics of every sequence model; subclasses define `classify`."""

    digits: int
    num_classes: int

    def classify(self, x: torch.Tensor) -> torch.Tensor:   # (B, H, W) -> (B, digits, num_classes)
        raise NotImplementedError

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy averaged over positions and batch (the original's loss; it added 1e-5 inside
        the log of the softmax, here log_softmax is used), and sums over the batch of: per-sequence
        mean NLL, fraction of wrong digits, whether any digit is wrong."""
        return self.scored(self.classify(x), y)

    @staticmethod
    def scored(logp: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(-1)          # (B,)
        wrong = logp.argmax(-1) != y                                           # (B, digits)
        return nll.mean(), {"nll_sum": nll.detach().double().sum(),
                            "per_digit_error_sum": wrong.double().mean(-1).sum(),
                            "sequence_error_sum": wrong.any(-1).sum()}

    @classmethod
    def eval_scored(cls, logp: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss's sums and, for evaluations only, the error at each position (a vector;
        `summarize` names them)."""
        return {**cls.scored(logp, y)[1], "position_error_sum": (logp.argmax(-1) != y).double().sum(0)}

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        return self.loss(x, y)   # the training loop calls model(**batch): DDP syncs gradients through forward

    def eval_sums(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.eval_scored(self.classify(x), y)

    def summarize(self, metrics: dict) -> dict:
        """The per-position vectors as one figure per position: `position<t>_error`, `glimpse<t>_x`."""
        out = {k: v for k, v in metrics.items() if not isinstance(v, list)}
        for key, name in (("position_error", "position{}_error"), ("glimpse_x", "glimpse{}_x")):
            for t, v in enumerate(metrics.get(key, []), start=1):
                out[name.format(t)] = v
        return out

    def inference(self, options: InferenceOptions) -> nn.Module:
        """The exported graph: log-probabilities per position (models/interface.py); the spatial
        transformers also return their thetas."""
        return Classify(self)


def as_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) grey-scale images -> (B, 1, H, W)."""
    return x.reshape(x.shape[0], 1, x.shape[-2], x.shape[-1])


class SequenceCNN(SequenceClassifier):
    """(B, H, W) images of `digits` side-by-side digits -> per-position class log-probabilities, from
    the identity glimpse of the spatial transformers (module docstring)."""

    def __init__(self, image_size: int, digits: int, num_classes: int, channels: tuple[int, ...] = (96, 96, 96),
                 dense: int = 400, downsample: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.digits, self.num_classes = digits, num_classes
        self.transformer = SpatialTransformer(image_size, downsample)
        self.glimpse = self.transformer.size
        self.register_buffer("theta", torch.tensor(IDENTITY).view(1, 1, 2, 3), persistent=False)
        self.classifier = GlimpseClassifier(self.glimpse, channels, dense, digits * num_classes, dropout)
        glorot_init(self)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, digits, num_classes) log-probabilities."""
        images = as_channels(x)
        if self.glimpse != images.shape[-1]:     # at full size the identity glimpse is the image itself
            images = self.transformer(images, self.theta.expand(images.shape[0], 1, 2, 3))[:, 0]
        logits = self.classifier(images)    # one Dense-10 softmax per position = one dense of digits * 10
        return F.log_softmax(logits.view(-1, self.digits, self.num_classes), dim=-1)
