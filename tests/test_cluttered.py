import numpy as np
import pytest
from formats import fake_digits, write_mnist_dir

from dgm_dist.data.catalog import load_dataset
from dgm_dist.data.cluttered import DIGIT, ClutterParams, generate
from dgm_dist.errors import ConfigError

SMALL = dict(n_train=60, n_valid=20, n_test=20, valid_digits=50, clutter_pool=500)


def source():
    tx, ty = fake_digits(300, seed=0)
    sx, sy = fake_digits(100, seed=1)
    return tx, ty, sx, sy


def test_deterministic_and_seeded():
    a = generate(*source(), ClutterParams(**SMALL))
    b = generate(*source(), ClutterParams(**SMALL))
    c = generate(*source(), ClutterParams(**SMALL, seed=7))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["train_x"], c["train_x"])


def test_shapes_and_positions_inside_canvas():
    p = ClutterParams(**SMALL)
    out = generate(*source(), p)
    for split, n in (("train", 60), ("valid", 20), ("test", 20)):
        x, y, pos = out[f"{split}_x"], out[f"{split}_y"], out[f"{split}_pos"]
        assert x.shape == (n, 100, 100) and x.dtype == np.uint8 and y.shape == (n, 3)
        assert (pos >= 0).all() and (pos <= 100 - DIGIT).all()
        np.testing.assert_array_equal(np.diff(pos[:, :, 1], axis=1), DIGIT)   # side by side, left to right
        base = (100 - 3 * DIGIT) // 2
        assert pos[:, 0, 1].min() >= 0 and pos[:, 0, 1].max() <= 2 * base - 1


def test_labels_left_to_right_match_the_pixels():
    # no clutter: each digit's 20x20 square has value 20*(class+1) at its position
    out = generate(*source(), ClutterParams(**SMALL, clutter=0))
    x, y, pos = out["test_x"], out["test_y"], out["test_pos"]
    for img, labels, p in zip(x, y, pos, strict=True):
        for label, (r, c) in zip(labels, p, strict=True):
            assert img[r + 14, c + 14] == 20 * (label + 1)
        assert int((img > 0).sum()) == 3 * 20 * 20   # the digits and nothing else


def test_clutter_comes_from_training_digits_only():
    tx, ty, sx, sy = source()
    tx = np.where(tx > 0, 201, 0).astype(np.uint8)       # training digits: value 201
    sx = np.where(sx > 0, 7, 0).astype(np.uint8)         # test digits: value 7
    out = generate(tx, ty, sx, sy, ClutterParams(**SMALL, clutter=8))
    x, pos = out["test_x"], out["test_pos"]
    mask = np.ones_like(x, dtype=bool)
    for i, p in enumerate(pos):
        for r, c in p:
            mask[i, r:r + DIGIT, c:c + DIGIT] = False
    outside = x[mask]
    assert set(np.unique(outside).tolist()) <= {0, 201}   # clutter pixels are training pixels
    assert (outside == 201).any()                           # and there is clutter


def test_clutter_saturates_instead_of_wrapping():
    tx, ty, sx, sy = source()
    tx = np.where(tx > 0, 200, 0).astype(np.uint8)
    out = generate(tx, ty, tx[:100], ty[:100], ClutterParams(**SMALL, clutter=30))
    assert out["train_x"].max() == 255 and set(np.unique(out["train_x"]).tolist()) <= {0, 200, 255}


def test_generalised_parameters():
    p = ClutterParams(**{**SMALL, "canvas": 60, "digits": 2, "clutter": 3, "clutter_size": 5})
    out = generate(*source(), p)
    assert out["train_x"].shape == (60, 60, 60) and out["train_y"].shape == (60, 2)
    assert (out["train_pos"] <= 60 - DIGIT).all()


@pytest.mark.parametrize("bad, message", [
    (dict(canvas=80), "too small for 3 digits"),
    (dict(digits=0), "at least 1 digit"),
    (dict(clutter_size=30), "clutter_size=30"),
    (dict(valid_digits=300), "valid_digits=300"),
])
def test_invalid_parameters(bad, message):
    with pytest.raises(ConfigError, match=message):
        generate(*source(), ClutterParams(**{**SMALL, **bad}))


def test_cached_by_parameters_and_source(tmp_path):
    d = write_mnist_dir(tmp_path / "m", n_train=300, n_test=100)
    a = load_dataset("cluttered-mnist", d, **SMALL)
    files = list((tmp_path / "cache" / "cluttered").glob("*.npz"))
    assert len(files) == 1
    b = load_dataset("cluttered-mnist", d, **SMALL)
    np.testing.assert_array_equal(a.arrays["train_x"], b.arrays["train_x"])
    assert len(list((tmp_path / "cache" / "cluttered").glob("*.npz"))) == 1
    load_dataset("cluttered-mnist", d, **{**SMALL, "seed": 5})
    assert len(list((tmp_path / "cache" / "cluttered").glob("*.npz"))) == 2
    write_mnist_dir(d, n_train=300, n_test=100, seed=9)                    # different source digits
    c = load_dataset("cluttered-mnist", d, **SMALL)
    assert len(list((tmp_path / "cache" / "cluttered").glob("*.npz"))) == 3
    assert not np.array_equal(a.arrays["train_x"], c.arrays["train_x"])
    with pytest.raises(ConfigError, match="unknown cluttered option"):
        load_dataset("cluttered-mnist", d, canvass=3)
