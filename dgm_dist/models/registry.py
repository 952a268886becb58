"""Models by name: how to build each from a `ModelConfig`, what data it trains on, and its main metric.

The training loop asks only this registry, so a new model family is one entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dgm_dist.config import MODEL_NAMES
from dgm_dist.errors import ConfigError
from dgm_dist.models.cnn import SequenceCNN
from dgm_dist.models.dgm import ADGM, M2, SDGM
from dgm_dist.models.lvae import HierarchicalVAE, LadderVAE
from dgm_dist.models.mlp import MLPClassifier
from dgm_dist.models.spn import CNNSPN, RNNSPN


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know of its dataset."""

    image_shape: tuple[int, ...]        # one example: (H, W) or (H, W, C)
    num_classes: int
    sequence_length: int | None = None  # digits per cluttered image; None for one label per image
    n_unlabelled: int = 0               # training examples (the unlabelled stream: N)
    n_labelled: int = 0                 # labelled training examples (N_l)

    @property
    def features(self) -> int:
        return math.prod(self.image_shape)


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[object, DataInfo], nn.Module]
    streams: str           # "supervised": labelled batches; "semi_supervised": labelled + unlabelled
    labels: str            # "single" (one class per image) or "sequence" (one per digit position)
    main_metric: str       # the validation figure that selects checkpoints and trials (lower is better)
    description: str
    kl_weight: bool = False  # forward takes the KL warm-up weight `kl_weight`
    mode: str = "min"        # whether the main metric is better low ("min") or high ("max")


def _mlp(m, info: DataInfo) -> nn.Module:
    return MLPClassifier(info.features, info.num_classes, m.hidden, batch_norm=m.batch_norm != "off",
                         dropout=m.dropout)


def _sequence(cls):
    def build(m, info: DataInfo) -> nn.Module:
        if len(info.image_shape) != 2 or info.image_shape[0] != info.image_shape[1]:
            raise ConfigError(f"model.name={m.name} needs square grey-scale images, got {info.image_shape}")
        spn = {} if cls is SequenceCNN else {"loc_channels": m.loc_channels, "loc_hidden": m.loc_hidden}
        if cls is RNNSPN:
            spn.update(gru_init=m.gru_init, theta_start=m.theta_start)
        net = cls(info.image_shape[0], info.sequence_length, info.num_classes, m.channels,
                  dense=m.hidden[0], downsample=m.downsample, dropout=m.dropout, **spn)
        # channels-last convolution weights: oneDNN's convolutions and max-pooling run NHWC without
        # layout conversions, 1.3x faster training steps on a CPU (docs/results.md, section 6); the
        # same function (tested), and checkpoints and ONNX files do not depend on the layout
        return net.to(memory_format=torch.channels_last)
    return build


def _dgm(cls):
    def build(m, info: DataInfo) -> nn.Module:
        return cls(info.features, info.num_classes, hidden=m.hidden, latent=m.latent[0], aux=m.aux,
                   output=m.output, batch_norm=m.batch_norm != "off", mc_samples=m.mc_samples, alpha=m.alpha,
                   n_unlabelled=info.n_unlabelled, n_labelled=info.n_labelled, eval_samples=m.eval_samples,
                   predict=m.predict, factored=m.factored, weight_prior=m.weight_prior,
                   shared_noise=m.shared_noise, mc_average=m.mc_average, unlabelled_weight=m.unlabelled_weight,
                   init=m.init, bound_weights=m.bound_weights)
    return build


def _vae(cls):
    def build(m, info: DataInfo) -> nn.Module:
        return cls(info.features, latent=m.latent, hidden=m.hidden, output=m.output, batch_norm=m.batch_norm,
                   share=m.share, iw_samples=m.iw_samples, batch_norm_heads=m.batch_norm_heads)
    return build


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(_mlp, "supervised", "single", "error",
                     "supervised MLP classifier (the labelled-data-only baseline)"),
    "cnn": ModelSpec(_sequence(SequenceCNN), "supervised", "sequence", "per_digit_error",
                     "CNN classifier of cluttered digit sequences (the RNN-SPN paper's baseline)"),
    "cnn_spn": ModelSpec(_sequence(CNNSPN), "supervised", "sequence", "per_digit_error",
                         "CNN with a spatial transformer in front (the RNN-SPN paper's FFN-SPN)"),
    "rnn_spn": ModelSpec(_sequence(RNNSPN), "supervised", "sequence", "per_digit_error",
                         "recurrent spatial transformer, one glimpse per digit (Sonderby et al. 2015)"),
    "m2": ModelSpec(_dgm(M2), "semi_supervised", "single", "error",
                    "M2 (Kingma et al. 2014), semi-supervised baseline", kl_weight=True),
    "adgm": ModelSpec(_dgm(ADGM), "semi_supervised", "single", "error",
                      "auxiliary deep generative model (Maaloe et al. 2016)", kl_weight=True),
    "sdgm": ModelSpec(_dgm(SDGM), "semi_supervised", "single", "error",
                      "skip deep generative model (Maaloe et al. 2016)", kl_weight=True),
    "vae": ModelSpec(_vae(HierarchicalVAE), "unsupervised", "single", "iw_ll",
                     "hierarchical VAE, q(z_1|x) q(z_2|z_1) ... (the LVAE paper's baseline)", kl_weight=True,
                     mode="max"),
    "lvae": ModelSpec(_vae(LadderVAE), "unsupervised", "single", "iw_ll",
                      "Ladder VAE (Sonderby et al. 2016)", kl_weight=True, mode="max"),
}


assert set(MODELS) == set(MODEL_NAMES), "config.MODEL_NAMES and the registry list the same models"


def register(name: str, spec: ModelSpec) -> None:
    """Add a model family: after this, `model.name=<name>` trains, evaluates and (for a classifier
    implementing models/interface.py) exports it, with no other file changed. Register it where its
    module is imported, so that Ray workers (which import the module afresh) know it too."""
    if name in MODELS:
        raise ValueError(f"model {name!r} is registered already")
    MODELS[name] = spec
    MODEL_NAMES.append(name)


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not implemented yet; available: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(model_cfg, info: DataInfo) -> nn.Module:
    """The model `model_cfg` names, sized for `info`; a mismatch is a `ConfigError`."""
    spec = model_spec(model_cfg.name)
    wants_sequence = spec.labels == "sequence"
    if wants_sequence != (info.sequence_length is not None):
        kind = "digit sequences (cluttered-*)" if wants_sequence else "one label per image"
        raise ConfigError(f"model.name={model_cfg.name} classifies {kind}; choose a matching data.dataset "
                          f"or model.name (sequences: cnn, cnn_spn, rnn_spn; single labels: mlp and the others)")
    if not model_cfg.hidden:
        raise ConfigError("model.hidden must list at least one layer width")
    try:
        return spec.build(model_cfg, info)
    except ValueError as e:
        raise ConfigError(f"model {model_cfg.name}: {e}") from None
