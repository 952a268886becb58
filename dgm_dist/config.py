"""Typed run configuration: dataclasses with defaults, named presets, YAML files and `--set k=v`.

A config is built in layers: defaults, then a preset, then a YAML file, then `--set` overrides
(`optim.lr=1e-3`, `model.hidden=500,500`). Every value is coerced to its field's type and checked;
an invalid value raises `ConfigError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dgm_dist.data.catalog import DATASETS
from dgm_dist.data.cluttered import ClutterParams
from dgm_dist.errors import ConfigError

# The models the registry (models/registry.py) builds; a list, so that `registry.register` can add
# one without this file changing (the config check reads it when a value is checked).
MODEL_NAMES = ["mlp", "m2", "adgm", "sdgm", "vae", "lvae", "cnn", "cnn_spn", "rnn_spn"]


def choice(default, *allowed):
    return field(default=default, metadata={"choices": allowed})


def bounded(default, lo=None, hi=None, *, open_lo=False):
    return field(default=default, metadata={"min": lo, "max": hi, "open_lo": open_lo})


@dataclass
class DataConfig:
    dataset: str = choice("fashion-mnist", *DATASETS)
    data_dir: str | None = None
    labels: int = bounded(0, 0)                # labelled training examples, balanced over classes (0: all)
    validation: int | None = bounded(None, 0)  # held out of training (0: none, as the original; None: the smaller
                                               # of 10 000 and a sixth of the training set, data/splits.py)
    binarize: str = choice("dynamic", "none", "dynamic", "static")
    eval_binarize: bool = False                # with dynamic: validation/test binarized once (the LVAE code)
    seed: int = 0                              # label split and validation hold-out
    norb_stereo: str = choice("both", "both", "left_duplicated")
    norb_size: int = bounded(32, 1)
    norb_resize: str = choice("nearest", "nearest", "bicubic")
    cluttered: ClutterParams = field(default_factory=ClutterParams)


@dataclass
class ModelConfig:
    name: str = field(default="mlp", metadata={"choices": MODEL_NAMES})
    hidden: tuple[int, ...] = (500, 500)
    latent: tuple[int, ...] = (100,)
    aux: int = bounded(100, 0)
    output: str = choice("bernoulli", "bernoulli", "gaussian")
    batch_norm: str = choice("off", "off", "running", "full_train")
    dropout: float = bounded(0.0, 0.0, 0.99)
    channels: tuple[int, ...] = (96, 96, 96)   # conv layers of the CNN classifiers (docs/models.md)
    mc_samples: int = bounded(1, 1)            # Monte Carlo samples of a (and z) per example in training
    eval_samples: int = bounded(100, 1)        # draws of a averaged by q(y|a,x) at test time (paper: 100)
    predict: str = choice("sample", "sample", "mean")   # "mean": a at the mean of q(a|x), deterministic
    alpha: float = bounded(0.1, 0.0)           # classification weight, times N / N_l
    factored: bool = True                      # per-input first layers, x term computed once per example
    weight_prior: bool = False                 # N(0, 1) prior on the weights (the original code)
    shared_noise: bool = True                  # ADGM/SDGM/M2: one z draw shared by the enumerated classes
    mc_average: str = choice("bounds", "bounds", "probabilities")   # K > 1: average U, or q(y|a,x) (released code)
    unlabelled_weight: float = bounded(1.0, 0.0)   # weight of the unlabelled bound (0: the ablation without it)
    init: str = choice("original", "original", "torch")   # ADGM/SDGM/M2 weights: the released code's or PyTorch's
    bound_weights: str = choice("released", "released", "paper")   # ADGM/SDGM/M2: labelled mean x 1, or x N_l/N
    share: bool = True                         # LVAE: p shares q's top-down nets (paper); false: own (released code)
    batch_norm_heads: bool = False             # VAE/LVAE: batch norm on the mean/variance heads (original code)
    iw_samples: int = bounded(100, 1)          # importance samples of the evaluated log-likelihood
    downsample: float = bounded(1.0, 1.0)      # SPN glimpse (CNN: the identity glimpse) = input / downsample
    loc_channels: tuple[int, ...] = (20, 20, 20)   # SPN localisation convs (docs/models.md)
    loc_hidden: int = bounded(200, 1)          # CNN-SPN: localisation dense units; RNN-SPN: GRU units (256)
    gru_init: str = choice("lasagne", "lasagne", "torch")   # RNN-SPN: Lasagne's GRU init (original) or PyTorch's
    theta_start: str = choice("identity", "identity", "strips")   # RNN-SPN: first glimpses (strips: beyond the paper)


@dataclass
class OptimConfig:
    optimizer: str = choice("adam", "adam", "rmsprop_lasagne", "rmsprop", "sgd")   # rmsprop: PyTorch's rule
    lr: float = bounded(3e-4, 0.0, open_lo=True)
    batch_size: int = bounded(100, 1)          # global: split evenly over the workers
    labelled_batch_size: int = bounded(100, 1) # semi-supervised models: labelled examples per step
    epochs: int = bounded(10, 1)
    max_minutes: float | None = bounded(None, 0.0, open_lo=True)   # wall-clock budget; stops after a final evaluation
    warmup_epochs: float = bounded(0.0, 0.0)   # KL warm-up length, converted to steps once
    clip_norm: float | None = bounded(5.0, 0.0, open_lo=True)
    clip_value: float | None = bounded(1.0, 0.0, open_lo=True)
    clip_order: str = choice("norm_then_value", "norm_then_value", "value_then_norm")  # ADGM / RNN-SPN code
    lr_decay: float = bounded(1.0, 0.0, 1.0, open_lo=True)
    lr_decay_every: int = bounded(0, 0)        # epochs; 0 = constant LR
    lr_decay_start: int = bounded(0, 0)        # epochs before decay begins (RNN-SPN code: 30)
    lr_min: float = bounded(0.0, 0.0)
    weight_decay: float = bounded(0.0, 0.0)
    patience: int = bounded(0, 0)              # early stop after this many epochs without a better
                                               # validation figure (0: never; RNN-SPN code: 50)


@dataclass
class ScalingConfig:
    workers: int = bounded(1, 0)               # 0: in-process (Ray Train local mode)
    use_gpu: bool = False
    gpus_per_worker: float = bounded(1.0, 0.0, open_lo=True)   # < 1: small models share a GPU (Tune trials)
    cpus_per_worker: float = bounded(1.0, 0.0, open_lo=True)
    address: str | None = None                 # a running Ray cluster; None: start a local one
    max_failures: int = bounded(0, 0)
    placement_strategy: str = choice("PACK", "PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")  # workers over nodes
    checkpoint_every: int = bounded(1, 1)     # epochs between evaluations + checkpoints
    report_every: int = bounded(1, 1)         # epochs between progress reports (raise it for tiny epochs)
    flush_denormal: bool = True               # CPU: subnormal floats as 0 (speed; docs/training.md)


@dataclass
class TrackingConfig:
    root: str = "runs"                         # local home of the MLflow DB, artifacts and Ray results
    tracking_uri: str | None = None            # None: MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db
    experiment: str = "dgm-dist"
    storage_path: str | None = None            # Ray Train storage; None: <root>/ray (s3://... on a cluster)


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ----------------------------------------------------------------------------------------------
# Presets: named partial configs. The model modules register the papers' settings here.

@dataclass(frozen=True)
class Preset:
    description: str
    overrides: dict[str, Any]


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, description: str, overrides: dict[str, Any]) -> None:
    """Register a named config; `overrides` is nested like the YAML form. Checked at once."""
    apply(Config(), overrides, origin=f"preset '{name}'")
    PRESETS[name] = Preset(description, overrides)


# ----------------------------------------------------------------------------------------------
# Building configs

def load_config(preset: str | None = None, yaml_path: str | Path | None = None,
                overrides: list[str] = ()) -> Config:
    import dgm_dist.presets  # noqa: F401  (registers the named presets)

    cfg = Config()
    if preset is not None:
        if preset not in PRESETS:
            known = ", ".join(sorted(PRESETS)) or "(none registered)"
            raise ConfigError(f"unknown preset '{preset}'; known presets: {known}")
        cfg = apply(cfg, PRESETS[preset].overrides, origin=f"preset '{preset}'")
        cfg.name = preset if cfg.name == "run" else cfg.name
    if yaml_path is not None:
        cfg = apply(cfg, read_yaml(yaml_path), origin=str(yaml_path))
    return apply(cfg, parse_overrides(overrides), origin="--set")


def resolve_paths(cfg: Config) -> Config:
    """`data.data_dir` made absolute against this process's directory: Ray workers start in another
    one (a study resolves its trials' paths against the driver's directory itself)."""
    if cfg.data.data_dir:
        cfg.data.data_dir = str(Path(cfg.data.data_dir).expanduser().resolve())
    return cfg


def preset_or_model(target: str) -> tuple[str | None, list[str]]:
    """A preset name, or a bare model name with its defaults: (preset, overrides) for `load_config`."""
    import dgm_dist.presets  # noqa: F401

    if target in PRESETS:
        return target, []
    if target in MODEL_NAMES:
        return None, [f"model.name={target}", f"name={target}"]
    close = difflib.get_close_matches(target, [*PRESETS, *MODEL_NAMES], n=3, cutoff=0.5)
    if close:
        raise ConfigError(f"unknown model or preset '{target}'; did you mean {' or '.join(close)}? "
                          "(dgm-dist config list shows them all)")
    raise ConfigError(f"unknown model or preset '{target}'; presets: {', '.join(sorted(PRESETS))}; "
                      f"models: {', '.join(MODEL_NAMES)}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML file in UTF-8 is expected)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a YAML file") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, ...), got {type(doc).__name__}")
    return doc


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["optim.lr=1e-3", "model.hidden=500,500"]` -> nested dict of strings, which `coerce`
    parses by each field's type."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-3")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is set twice, once as a value")
        node[leaf] = value.strip()
    return out


def apply(cfg: Any, changes: dict[str, Any], origin: str, prefix: str = "") -> Any:
    """A copy of dataclass `cfg` with `changes` applied, each value coerced and validated."""
    if not isinstance(changes, dict):
        raise ConfigError(f"{origin}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {changes!r}")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    updates = {}
    for key, value in changes.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{origin}: unknown key '{path}'; allowed: {', '.join(fields)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            updates[key] = apply(current, value, origin, f"{path}.")
        else:
            updates[key] = coerce(value, hints[key], path, origin)
            check(fields[key], updates[key], path, origin)
    return dataclasses.replace(cfg, **updates)


def coerce(value: Any, hint: Any, path: str, origin: str) -> Any:
    def bad(allowed: str):
        return ConfigError(f"{origin}: {path}={value!r} is not valid: expected {allowed}")

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, path, origin)
    if typing.get_origin(hint) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad("a list, e.g. 500,500")
        out = tuple(coerce(v.strip() if isinstance(v, str) else v, args[0], path, origin)
                    for v in items if not (isinstance(v, str) and not v.strip()))
        if args[0] is int and any(v < 1 for v in out):      # layer widths and sizes: a 0-wide layer trains nothing
            raise bad("sizes >= 1, e.g. 500,500")
        return out
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad("true or false")
    if hint is int:
        if isinstance(value, bool):
            raise bad("an integer")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad("an integer") from None
        if not f.is_integer():
            raise bad("an integer")
        return int(f)
    if hint is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if hint is str:
        if isinstance(value, bool):
            raise bad("a string (YAML reads unquoted off/on/yes/no as true/false: quote it, e.g. 'off')")
        if isinstance(value, (dict, list)):
            raise bad("a string")
        return str(value)
    raise bad(str(hint))  # pragma: no cover - a field type this module does not handle


def check(f: dataclasses.Field, value: Any, path: str, origin: str) -> None:
    meta = f.metadata
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{origin}: {path}={value!r} is not allowed; choose one of: "
                          f"{', '.join(map(str, meta['choices']))}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("open_lo") and value == lo)):
        rel = ">" if meta.get("open_lo") else ">="
        raise ConfigError(f"{origin}: {path}={value!r} is out of range; must be {rel} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{origin}: {path}={value!r} is out of range; must be <= {hi}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The whole config as YAML that `--config` reads back to the same config (tuples as lists)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
    return yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False, default_flow_style=None, width=100)


def flatten(cfg: Any) -> dict[str, Any]:
    """`{"optim.lr": 3e-4, ...}`: the form MLflow params and Tune spaces use."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    walk(to_dict(cfg), "")
    return out
