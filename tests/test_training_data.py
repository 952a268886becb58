"""The loop's data: splits, sharded epoch batches of one and two streams, per-epoch seeds, clipping."""

import numpy as np
import pytest
import torch

from dgm_dist.config import load_config
from dgm_dist.data.catalog import Dataset
from dgm_dist.errors import ConfigError
from dgm_dist.training import data as D
from dgm_dist.training.optim import clip_gradients


def _dataset(n=200, n_test=30, sequences=False):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    y = np.tile(np.arange(10), n // 10).astype(np.uint8)
    arrays = {"train_x": x, "train_y": y, "test_x": x[:n_test], "test_y": y[:n_test]}
    if sequences:
        arrays.update(train_y=np.stack([y] * 3, 1), test_y=np.stack([y[:n_test]] * 3, 1),
                      valid_x=x[:20], valid_y=np.stack([y[:20]] * 3, 1))
    return Dataset("toy", tuple(map(str, range(10))), arrays)


def _cfg(**data):
    return load_config(overrides=[f"data.{k}={v}" for k, v in data.items()]).data


def test_prepare_holds_out_validation_and_subsets_labels():
    d = D.prepare(_dataset(), _cfg(validation=50, labels=20), "supervised")
    assert len(d.train_x) == 150 and len(d.eval_sets["valid"][0]) == 50 and len(d.eval_sets["test"][0]) == 30
    assert len(d.labelled) == 20 and np.bincount(d.train_y[d.labelled].numpy()).tolist() == [2] * 10
    assert d.unlabelled is None and d.train_x.dtype == torch.uint8          # converted per batch
    semi = D.prepare(_dataset(), _cfg(validation=50, labels=20), "semi_supervised")
    assert len(semi.unlabelled) == 150                                       # labelled ones included
    with pytest.raises(ConfigError, match="need data.labels > 0"):
        D.prepare(_dataset(), _cfg(validation=50), "semi_supervised")
    with pytest.raises(ConfigError, match="digit sequences"):
        D.prepare(_dataset(sequences=True), _cfg(labels=20), "supervised")
    seq = D.prepare(_dataset(sequences=True), _cfg(), "supervised")
    assert seq.info.sequence_length == 3 and len(seq.train_x) == 200        # its own validation split


def test_supervised_epoch_is_sharded_and_reshuffled():
    d = D.prepare(_dataset(), _cfg(validation=50), "supervised")
    shards = [list(D.epoch_batches(d, 0, r, 2, 20, 100, seed=1)) for r in range(2)]
    assert all(len(b["x"]) == 10 for s in shards for b in s[:-1])           # 20 global = 10 per worker
    seen = torch.cat([b["x"].flatten(1) for s in shards for b in s])
    assert len(seen) == 150                                                  # 75 per rank, none lost
    assert {tuple(r.tolist()) for r in seen} == {tuple(r.tolist()) for r in d.train_x.flatten(1)}
    assert len(shards[0]) == D.steps_per_epoch(d, 20, 2) == 8
    again = list(D.epoch_batches(d, 0, 0, 2, 20, 100, seed=1))
    other = list(D.epoch_batches(d, 1, 0, 2, 20, 100, seed=1))
    assert torch.equal(again[0]["x"], shards[0][0]["x"]) and not torch.equal(other[0]["x"], shards[0][0]["x"])


def test_two_streams_cycle_the_labelled_set():
    d = D.prepare(_dataset(), _cfg(validation=0, labels=20), "semi_supervised")
    one = list(D.epoch_batches(d, 0, 0, 1, 50, 20, seed=0))
    assert len(one) == 4 and all(len(b["x_unlabelled"]) == 50 for b in one)
    for b in one:                                     # labelled batch 20 of 20: the whole set each step
        assert sorted(b["y"].tolist()) == sorted(d.train_y[d.labelled].tolist())
    two = [list(D.epoch_batches(d, 0, r, 2, 50, 20, seed=0)) for r in range(2)]
    assert all(len(b["x"]) == 10 and len(b["x_unlabelled"]) == 25 for s in two for b in s)
    first_step = torch.cat([s[0]["x"].flatten(1) for s in two])             # ranks split the labelled set
    assert len({tuple(r.tolist()) for r in first_step}) == 20
    small = list(D.epoch_batches(d, 0, 0, 1, 50, 8, seed=0))                # 8 of 20: cycles, full batches
    assert all(len(b["x"]) == 8 for b in small)


def test_epoch_seeds_are_deterministic_and_distinct():
    seeds = {D.epoch_seed(0, e, r) for e in range(5) for r in range(3)}
    assert len(seeds) == 15 and D.epoch_seed(0, 3, 1) == D.epoch_seed(0, 3, 1)


def test_global_batch_must_split_evenly():
    with pytest.raises(ConfigError, match="divisible by the number of workers"):
        D.per_worker(100, 3)


def test_clip_orders_differ_as_the_original_codes():
    def grads(order):
        p = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.tensor([10.0, 0.5])
        cfg = load_config(overrides=["optim.clip_norm=1", "optim.clip_value=0.1", f"optim.clip_order={order}"]).optim
        return clip_gradients([p], cfg), p.grad
    raw, g = grads("norm_then_value")
    assert raw == pytest.approx(np.hypot(10, 0.5)) and torch.allclose(g, torch.tensor([0.1, 0.0499376]), atol=1e-6)
    raw, g = grads("value_then_norm")                 # [0.1, 0.1], norm 0.141 < 1: unchanged
    assert torch.allclose(g, torch.tensor([0.1, 0.1]))


def test_the_default_hold_outs_fit_a_small_real_format_dataset(tmp_path):
    """A training set of 3 000 digits with every default: validation and the cluttered validation
    digits take a sixth (500) instead of failing on 10 000; 60 000 digits still give 10 000."""
    from formats import write_mnist_dir

    from dgm_dist.data import load_from_config

    data_dir = write_mnist_dir(tmp_path / "mnist", n_train=3000, n_test=40)
    cfg = load_config(overrides=["data.dataset=mnist", f"data.data_dir={data_dir}"])
    assert cfg.data.validation is None
    data = D.prepare(load_from_config(cfg.data, download=False), cfg.data, "supervised")
    assert len(data.eval_sets["valid"][0]) == 500 and len(data.train_x) == 2500
    cfg = load_config(overrides=["data.dataset=cluttered-mnist", f"data.data_dir={data_dir}",
                                 "data.cluttered.n_train=20", "data.cluttered.n_valid=5", "data.cluttered.n_test=5",
                                 "data.cluttered.clutter_pool=100"])
    assert load_from_config(cfg.data, download=False).options["valid_digits"] == 500
    from dgm_dist.data.holdout import default_holdout

    assert default_holdout(60_000) == 10_000
