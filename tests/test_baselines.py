"""Supervised baselines (MLP, sequence CNN) and the model registry."""

import pytest
import torch

from dgm_dist.config import load_config
from dgm_dist.errors import ConfigError
from dgm_dist.models.cnn import SequenceCNN, conv_output_size
from dgm_dist.models.registry import DataInfo, build_model


def test_sequence_cnn_shapes_and_metrics():
    torch.manual_seed(0)
    m = SequenceCNN(100, digits=3, num_classes=10, channels=(8, 8, 8), dense=32, downsample=2.0)
    assert m.glimpse == 50 and conv_output_size(50, 3) == 9          # 48 -> 24 -> 22 -> 11 -> 9
    x, y = torch.rand(5, 100, 100), torch.randint(0, 10, (5, 3))
    logp = m.classify(x)
    assert logp.shape == (5, 3, 10) and torch.allclose(logp.exp().sum(-1), torch.ones(5, 3))
    loss, sums = m(x=x, y=y)                                           # forward is the training loss
    wrong = logp.argmax(-1) != y
    assert sums["per_digit_error_sum"].item() == pytest.approx(wrong.float().mean(-1).sum().item())
    assert sums["sequence_error_sum"].item() == wrong.any(-1).sum().item()
    assert sums["nll_sum"].item() == pytest.approx(loss.item() * 5, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_downsample_changes_the_glimpse_not_the_output():
    m = SequenceCNN(100, 3, 10, channels=(4, 4, 4), dense=8, downsample=3.0)
    assert m.glimpse == 33 and m.classify(torch.rand(2, 100, 100)).shape == (2, 3, 10)   # the original's 33x33


def test_registry_builds_and_refuses_mismatches():
    single, seq = DataInfo((28, 28), 10), DataInfo((100, 100), 10, sequence_length=3)
    assert build_model(load_config(overrides=["model.name=mlp"]).model, single).net[0].in_features == 784
    with pytest.raises(ConfigError, match="classifies one label per image"):
        build_model(load_config(overrides=["model.name=mlp"]).model, seq)
    with pytest.raises(ConfigError, match="digit sequences"):
        build_model(load_config(overrides=["model.name=cnn"]).model, single)
    with pytest.raises(ConfigError, match="too small"):
        build_model(load_config(overrides=["model.name=cnn", "model.downsample=20"]).model, seq)
