"""Loading named datasets from small real-format files: happy paths, validation and caching."""

import struct

import numpy as np
import pytest
from conftest import FASHION_DIR, HAS_FASHION
from formats import fake_digits, write_chardata, write_idx, write_mnist_dir, write_norb, write_svhn_mat

from dgm_dist.data import catalog
from dgm_dist.data.catalog import load_dataset
from dgm_dist.errors import ConfigError, DataError


def test_mnist_from_data_dir(tmp_path):
    d = write_mnist_dir(tmp_path / "mnist", n_train=120, n_test=30)
    ds = load_dataset("mnist", d)
    x, y = ds.split("train")
    assert x.shape == (120, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert ds.split("test")[0].shape == (30, 28, 28)
    np.testing.assert_array_equal(x, fake_digits(120, 0)[0])
    assert ds.classes == tuple("0123456789") and ds.origin == str(d)


def test_second_load_reads_cache_not_sources(tmp_path, monkeypatch):
    d = write_mnist_dir(tmp_path / "m")
    first = load_dataset("mnist", d)

    def fail(*_):
        raise AssertionError("decoded again instead of reading the cache")
    monkeypatch.setattr(catalog, "read_idx", fail)
    second = load_dataset("mnist", d)
    for k in first.arrays:
        np.testing.assert_array_equal(first.arrays[k], second.arrays[k])


def test_changed_source_file_invalidates_cache(tmp_path):
    d = write_mnist_dir(tmp_path / "m", n_train=100)
    assert load_dataset("mnist", d).split("train")[0].shape[0] == 100
    write_mnist_dir(d, n_train=60)
    assert load_dataset("mnist", d).split("train")[0].shape[0] == 60


def test_corrupt_cache_file_is_rebuilt(tmp_path):
    d = write_mnist_dir(tmp_path / "m")
    load_dataset("mnist", d)
    (cache_file,) = (tmp_path / "cache" / "decoded").glob("*.npz")
    cache_file.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache"):
        ds = load_dataset("mnist", d)
    assert ds.split("train")[0].shape == (200, 28, 28)
    assert cache_file.stat().st_size > 1000


@pytest.mark.parametrize("tamper", ["drop a key", "change a shape"])
def test_a_readable_cache_file_with_other_arrays_is_rebuilt(tmp_path, tamper):
    """A valid .npz whose arrays are not the ones written (a key missing, a shape changed) is rebuilt,
    not handed to training as a KeyError or a shape mismatch."""
    d = write_mnist_dir(tmp_path / "m")
    load_dataset("mnist", d)
    (cache_file,) = (tmp_path / "cache" / "decoded").glob("*.npz")
    with np.load(cache_file) as f:
        arrays = {k: f[k] for k in f.files}
    if tamper == "drop a key":
        del arrays["test_y"]
    else:
        arrays["train_x"] = arrays["train_x"][:, :14]
    np.savez(cache_file, **arrays)
    with pytest.warns(UserWarning, match="not the ones written"):
        ds = load_dataset("mnist", d)
    assert ds.split("train")[0].shape == (200, 28, 28) and len(ds.split("test")[1]) == 50


def test_unwritable_cache_dir_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("DGM_CACHE_DIR", str(blocker / "cache"))
    d = write_mnist_dir(tmp_path / "m")
    with pytest.raises(DataError, match="not writable.*DGM_CACHE_DIR"):
        load_dataset("mnist", d)


def test_failed_build_leaves_existing_cache_intact(tmp_path, monkeypatch):
    d = write_mnist_dir(tmp_path / "m")
    load_dataset("mnist", d, )
    before = {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*.npz")}
    write_idx(d / "train-labels-idx1-ubyte", np.full(200, 12, dtype=np.uint8), gz=True)  # now invalid
    with pytest.raises(DataError, match="label 12 out of range"):
        load_dataset("mnist", d)
    after = {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*.npz")}
    assert before == after
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_image_label_count_mismatch(tmp_path):
    d = write_mnist_dir(tmp_path / "m", n_train=100)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(99, dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match="100 images but .* has 99 labels"):
        load_dataset("mnist", d)


def test_wrong_image_dimensions(tmp_path):
    d = write_mnist_dir(tmp_path / "m")
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((50, 32, 32), dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match=r"unexpected shape \(50, 32, 32\); expected \(N, 28, 28\)"):
        load_dataset("mnist", d)


def test_unknown_dataset_and_options(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    d = write_mnist_dir(tmp_path / "m")
    with pytest.raises(ConfigError, match="takes no options"):
        load_dataset("mnist", d, stereo="both")


# -- SVHN ------------------------------------------------------------------------------------

def test_svhn(tmp_path):
    write_svhn_mat(tmp_path / "train_32x32.mat", 40, seed=1)
    write_svhn_mat(tmp_path / "test_32x32.mat", 10, seed=2)
    ds = load_dataset("svhn", tmp_path)
    x, y = ds.split("train")
    assert x.shape == (40, 32, 32, 3) and x.dtype == np.uint8
    assert y.min() >= 0 and y.max() <= 9
    import scipy.io
    raw = scipy.io.loadmat(str(tmp_path / "train_32x32.mat"))
    np.testing.assert_array_equal(x[3], raw["X"][:, :, :, 3])
    assert ((raw["y"].ravel() == 10) == (y == 0)).all()   # label 10 means digit 0


def test_svhn_corrupt_mat(tmp_path):
    write_svhn_mat(tmp_path / "train_32x32.mat", 40)
    (tmp_path / "test_32x32.mat").write_bytes((tmp_path / "train_32x32.mat").read_bytes()[:300])
    with pytest.raises(DataError, match="test_32x32.mat: not a readable MATLAB v5 file"):
        load_dataset("svhn", tmp_path)


def test_svhn_missing_variable(tmp_path):
    import scipy.io
    write_svhn_mat(tmp_path / "train_32x32.mat", 4)
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DataError, match=r"missing variable\(s\) \['y'\]"):
        load_dataset("svhn", tmp_path)


def test_svhn_label_out_of_range(tmp_path):
    import scipy.io
    write_svhn_mat(tmp_path / "train_32x32.mat", 4)
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"),
                     {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[3], [11]], np.uint8)})
    with pytest.raises(DataError, match="label 11 out of range"):
        load_dataset("svhn", tmp_path)


# -- small NORB -------------------------------------------------------------------------------

TRAIN, TEST = "5x46789x9x18x6x2x96x96-training", "5x01235x9x18x6x2x96x96-testing"


def write_norb_dir(d, n=6, gz=True, size=96):
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for tag in (TRAIN, TEST):
        write_norb(d / f"smallnorb-{tag}-dat.mat", rng.integers(0, 256, (n, 2, size, size), dtype=np.uint8), gz)
        write_norb(d / f"smallnorb-{tag}-cat.mat", (np.arange(n) % 5).astype(np.int32), gz)
    return d


def test_norb_both_stereo_resized_nearest(tmp_path):
    d = write_norb_dir(tmp_path / "norb")
    ds = load_dataset("norb", d)
    x, y = ds.split("train")
    assert x.shape == (6, 2, 32, 32) and y.tolist() == [0, 1, 2, 3, 4, 0]
    from formats import norb_bytes  # noqa: F401 (same format, raw values)

    from dgm_dist.data.norb import read_norb
    raw = read_norb(d / f"smallnorb-{TRAIN}-dat.mat.gz")
    np.testing.assert_array_equal(x[:, :, 5, 7], raw[:, :, 5 * 3 + 1, 7 * 3 + 1])  # PIL nearest = centre pixel


def test_norb_lvae_left_duplicated_and_no_resize(tmp_path):
    d = write_norb_dir(tmp_path / "norb", gz=False)
    ds = load_dataset("norb", d, stereo="left_duplicated", size=None)
    x, y = ds.split("test")
    assert x.shape == (12, 1, 96, 96)
    np.testing.assert_array_equal(x[:6], x[6:])
    assert y.tolist() == [0, 1, 2, 3, 4, 0] * 2


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x00\x00\x00\x00" + b[4:], "not a NORB binary matrix"),
    (lambda b: b[:12], "truncated NORB header"),
    (lambda b: b[:-10], "truncated NORB data"),
    (lambda b: b + b"\x00", "size mismatch"),
    # dimensions whose product overflows int64: the size is still computed exactly
    (lambda b: b[:8] + struct.pack("<iii", 2**31 - 1, 2**31 - 1, 2**31 - 1) + b[20:],
     f"needs {(2**31 - 1) ** 3 * 96} bytes"),
])
def test_norb_corrupt(tmp_path, mutate, message):
    d = write_norb_dir(tmp_path / "norb", gz=False)
    f = d / f"smallnorb-{TRAIN}-dat.mat"
    f.write_bytes(mutate(f.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        load_dataset("norb", d)
    assert str(f) in str(e.value)


def test_norb_bad_category_and_option(tmp_path):
    d = write_norb_dir(tmp_path / "norb", gz=False)
    write_norb(d / f"smallnorb-{TEST}-cat.mat", np.array([0, 1, 2, 3, 4, 7], np.int32))
    with pytest.raises(DataError, match="label 7 out of range"):
        load_dataset("norb", d)
    with pytest.raises(ConfigError, match="stereo='left'"):
        load_dataset("norb", d, stereo="left")


# -- OMNIGLOT ----------------------------------------------------------------------------------

def test_omniglot_orientation_and_range(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.random((7, 28, 28)), rng.random((3, 28, 28))
    train[0] = 0
    train[0, 2, 20] = 1.0          # an asymmetric mark: orientation must survive the round trip
    write_chardata(tmp_path / "chardata.mat", train, test)
    ds = load_dataset("omniglot", tmp_path)
    x, y = ds.split("train")
    assert x.shape == (7, 28, 28) and x.dtype == np.float32
    assert x[0, 2, 20] == 1.0 and x[0].sum() == 1.0
    np.testing.assert_allclose(ds.split("test")[0], test, rtol=1e-6)
    assert y.tolist() == list(range(7))


def test_nan_pixels_are_one_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.random((7, 28, 28)), rng.random((3, 28, 28))
    train[3, 5, 5] = np.nan
    write_chardata(tmp_path / "chardata.mat", train, test)
    with pytest.raises(DataError, match=r"train images\): 1 pixels are NaN or infinite"):
        load_dataset("omniglot", tmp_path)


def test_omniglot_wrong_shape(tmp_path):
    import scipy.io
    scipy.io.savemat(str(tmp_path / "chardata.mat"), {"data": np.zeros((100, 5)), "target": np.zeros((50, 5)),
                                                      "testdata": np.zeros((784, 1)), "testtarget": np.zeros((50, 1))})
    with pytest.raises(DataError, match=r"\(data\): unexpected shape \(100, 5\)"):
        load_dataset("omniglot", tmp_path)


# -- real Fashion-MNIST (Debian's dataset-fashion-mnist) --------------------------------------------

def test_real_fashion_mnist_from_debian_package():
    assert HAS_FASHION, f"{FASHION_DIR} is missing: `apt-get install dataset-fashion-mnist` (CI does)"
    ds = load_dataset("fashion-mnist")
    assert ds.origin == str(FASHION_DIR)
    x, y = ds.split("train")
    assert x.shape == (60000, 28, 28) and ds.split("test")[0].shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10
    assert np.bincount(ds.split("test")[1]).tolist() == [1000] * 10
    assert ds.classes[9] == "Ankle boot"
