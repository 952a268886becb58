import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgm_dist.data.pixels import to_unit
from dgm_dist.data.splits import dynamic_binarize, semi_supervised_split, static_binarize
from dgm_dist.errors import ConfigError

LABELS = np.random.default_rng(0).integers(0, 10, 3000)


@settings(max_examples=25, deadline=None)
@given(per_class=st.integers(0, 20), n_valid=st.integers(0, 1000), seed=st.integers(0, 2**31))
def test_balanced_disjoint_reproducible(per_class, n_valid, seed):
    s = semi_supervised_split(LABELS, per_class * 10, n_valid, 10, seed)
    assert np.bincount(LABELS[s.labelled], minlength=10).tolist() == [per_class] * 10
    assert len(s.valid) == n_valid and len(np.intersect1d(s.valid, s.labelled)) == 0
    assert len(np.intersect1d(s.valid, s.unlabelled)) == 0
    assert np.isin(s.labelled, s.unlabelled).all()                    # as the original code
    assert len(s.unlabelled) + n_valid == len(LABELS)
    again = semi_supervised_split(LABELS, per_class * 10, n_valid, 10, seed)
    np.testing.assert_array_equal(s.labelled, again.labelled)
    np.testing.assert_array_equal(s.valid, again.valid)


def test_seed_changes_the_split_and_exclusion_option():
    a = semi_supervised_split(LABELS, 100, 500, 10, seed=1)
    b = semi_supervised_split(LABELS, 100, 500, 10, seed=2)
    assert not np.array_equal(a.labelled, b.labelled)
    c = semi_supervised_split(LABELS, 100, 500, 10, seed=1, unlabelled_includes_labelled=False)
    assert len(np.intersect1d(c.unlabelled, c.labelled)) == 0 and len(c.unlabelled) == len(LABELS) - 600


@pytest.mark.parametrize("n_labels, n_valid, message", [
    (105, 0, "multiple of the number of classes"),
    (100, 3000, "data.validation=3000"),
    (10_000, 0, "class 0 has only"),
])
def test_invalid_splits(n_labels, n_valid, message):
    with pytest.raises(ConfigError, match=message):
        semi_supervised_split(LABELS, n_labels, n_valid, 10, 0)


def test_binarization():
    x = torch.full((20000,), 0.3)
    g = torch.Generator().manual_seed(0)
    b1, b2 = dynamic_binarize(x, g), dynamic_binarize(x, g)
    assert set(b1.unique().tolist()) <= {0.0, 1.0} and abs(b1.mean().item() - 0.3) < 0.02
    assert not torch.equal(b1, b2)                                   # fresh every step
    s = static_binarize(np.full(20000, 0.7, np.float32), seed=3)
    np.testing.assert_array_equal(s, static_binarize(np.full(20000, 0.7, np.float32), seed=3))
    assert abs(s.mean() - 0.7) < 0.02
    assert to_unit(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
