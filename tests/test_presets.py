"""Every named preset is written out where it is defined, passes its config checks, and builds its
model on the shape of its dataset; the 2-core variants keep the paper's architecture."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import dgm_dist.presets  # noqa: F401  (registers them)
from dgm_dist.config import PRESETS, load_config
from dgm_dist.models.registry import DataInfo, build_model, model_spec

NAMES = sorted(PRESETS)      # the package's own, at import (other tests register presets of their own)
SOURCES = "\n".join(p.read_text() for p in (Path(dgm_dist.presets.__file__).parent).glob("*.py"))
# the shape of one example of each dataset, as the readers produce it (docs/data.md)
SHAPES = {"mnist": DataInfo((28, 28), 10), "fashion-mnist": DataInfo((28, 28), 10),
          "svhn": DataInfo((32, 32, 3), 10), "omniglot": DataInfo((28, 28), 50),
          "norb": DataInfo((2, 32, 32), 5), "cluttered-mnist": DataInfo((100, 100), 10, sequence_length=3),
          "cluttered-fashion-mnist": DataInfo((100, 100), 10, sequence_length=3)}


def test_every_preset_name_is_a_literal_at_its_definition():
    missing = [name for name in NAMES if not re.search(rf'register_preset\(\s*"{re.escape(name)}"', SOURCES)]
    assert len(NAMES) >= 45 and not missing, missing


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_builds_its_model_and_computes_a_finite_loss(name):
    cfg = load_config(name)
    info = SHAPES[cfg.data.dataset]
    if cfg.data.dataset == "norb" and cfg.data.norb_stereo == "left_duplicated":
        info = DataInfo((1, 32, 32), 5)
    info = dataclasses.replace(info, n_unlabelled=1000, n_labelled=max(cfg.data.labels, 10))
    torch.manual_seed(0)
    model = build_model(cfg.model, info)
    binary = cfg.model.output == "bernoulli" and cfg.data.dataset in ("mnist", "fashion-mnist", "omniglot")

    def images(n: int) -> torch.Tensor:
        x = torch.rand(n, *info.image_shape)
        return x.round() if binary else x

    y = torch.randint(0, info.num_classes, (2, info.sequence_length) if info.sequence_length else (2,))
    batch = {"x": images(2), "y": y}
    if model_spec(cfg.model.name).streams == "semi_supervised":
        batch["x_unlabelled"] = images(3)
    loss, terms = model(**batch)
    assert loss.ndim == 0 and torch.isfinite(loss), (name, terms)


def test_the_cpu_variants_keep_the_papers_architecture():
    for name in NAMES:
        if name.endswith("-cpu") and name[:-4] in NAMES:
            paper, cpu = load_config(name[:-4]).model, load_config(name).model
            for field in ("name", "hidden", "latent", "aux", "channels", "loc_hidden", "downsample", "share"):
                assert getattr(paper, field) == getattr(cpu, field), (name, field)
