"""The datasets dgm-dist knows, by name, and `load_dataset`, which resolves, decodes, validates and
caches them. Decoded arrays are cached as `.npz` keyed by the source files' identity and the
options, so a second load reads one file."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgm_dist.data import cluttered, norb, omniglot, svhn
from dgm_dist.data.cache import cache_root, digest, file_fingerprint, load_arrays, save_arrays
from dgm_dist.data.checks import check_images_labels, check_shape
from dgm_dist.data.holdout import default_holdout
from dgm_dist.data.idx import read_idx
from dgm_dist.data.sources import Source, resolve
from dgm_dist.errors import ConfigError, DataError

READER_VERSION = 1  # bump when decoding changes, so old caches are not reused

DIGITS = tuple(str(d) for d in range(10))
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")

SOURCES = {
    "mnist": Source(
        "mnist", IDX_FILES, mirror="https://ossci-datasets.s3.amazonaws.com/mnist/",
        checksums={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                   "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                   "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                   "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        howto="download the four IDX files from https://ossci-datasets.s3.amazonaws.com/mnist/ "
              "into a directory and pass --data-dir DIR (or set DGM_DATA_DIR)"),
    "fashion-mnist": Source(
        "fashion-mnist", IDX_FILES,
        mirror="https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        checksums={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                   "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                   "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                   "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        howto="`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX "
              "files in a directory and pass --data-dir DIR (or set DGM_DATA_DIR)"),
    "svhn": Source(
        "svhn", ("train_32x32.mat", "test_32x32.mat"), mirror="http://ufldl.stanford.edu/housenumbers/",
        checksums={"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
                   "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"},
        howto="download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ "
              "and pass --data-dir DIR"),
    "norb": Source(
        "norb", ("smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat",
                 "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat",
                 "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat",
                 "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat"),
        howto="download the four *-dat.mat.gz / *-cat.mat.gz files of small NORB from "
              "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ and pass --data-dir DIR"),
    "omniglot": Source(
        "omniglot", ("chardata.mat",),
        howto="download chardata.mat from https://github.com/yburda/iwae/tree/master/datasets/OMNIGLOT "
              "and pass --data-dir DIR"),
}


@dataclass
class Dataset:
    """Arrays of one dataset: `train_x`, `train_y`, `test_x`, `test_y`, optionally `valid_*` and
    `*_pos` (digit positions of cluttered sequences). Images are uint8 (N, H, W[, C]) except
    OMNIGLOT's float32 intensities."""

    name: str
    classes: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    origin: str = ""
    options: dict = field(default_factory=dict)

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        if f"{which}_x" not in self.arrays:
            raise ConfigError(f"dataset '{self.name}' has no '{which}' split; it has {self.splits()}")
        return self.arrays[f"{which}_x"], self.arrays[f"{which}_y"]

    def splits(self) -> list[str]:
        return [k[:-2] for k in self.arrays if k.endswith("_x")]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _cached(kind: str, key_parts: tuple, build: Callable[[], dict[str, np.ndarray]],
            compress: bool = False) -> dict[str, np.ndarray]:
    path = cache_root() / kind / f"{digest(READER_VERSION, *key_parts)}.npz"
    arrays = load_arrays(path)
    if arrays is None:
        arrays = build()
        save_arrays(path, arrays, compress=compress)
    return arrays


def _load_idx(name: str, files: dict[str, Path]) -> dict[str, np.ndarray]:
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        xf, yf = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
        x, y = read_idx(xf), read_idx(yf)
        check_shape(x, (28, 28), str(xf))
        if x.dtype != np.uint8:
            raise DataError(f"{xf}: element type {x.dtype}; expected unsigned bytes (type code 0x08)")
        y = y.reshape(-1).astype(np.int64)
        check_images_labels(x, y, 10, str(xf), str(yf))
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def _load_svhn(files: dict[str, Path]) -> dict[str, np.ndarray]:
    out = {}
    for split in ("train", "test"):
        out[f"{split}_x"], out[f"{split}_y"] = svhn.read_svhn(files[f"{split}_32x32.mat"])
    return out


def _load_norb(files: dict[str, Path], stereo: str, size: int | None, resize: str) -> dict[str, np.ndarray]:
    out = {}
    for split, tag in (("train", "5x46789x9x18x6x2x96x96-training"), ("test", "5x01235x9x18x6x2x96x96-testing")):
        out[f"{split}_x"], out[f"{split}_y"] = norb.load_split(
            files[f"smallnorb-{tag}-dat.mat"], files[f"smallnorb-{tag}-cat.mat"], stereo, size, resize)
    return out


NORB_OPTIONS = {"stereo": ("both", "left_duplicated"), "resize": ("nearest", "bicubic")}


def load_dataset(name: str, data_dir: Path | str | None = None, download: bool | None = None,
                 **options) -> Dataset:
    """Load a dataset by name (see `DATASETS`). Options: norb `stereo`, `size`, `resize`;
    cluttered-* the fields of `cluttered.ClutterParams`."""
    if name.startswith("cluttered-"):
        return _load_cluttered(name, data_dir, download, **options)
    if name not in SOURCES:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    source = SOURCES[name]
    files = resolve(source, data_dir, download)
    origin = str(next(iter(files.values())).parent)
    key = (name, file_fingerprint(list(files.values())), sorted(options.items()))
    if name in ("mnist", "fashion-mnist"):
        _no_options(name, options)
        arrays = _cached("decoded", key, lambda: _load_idx(name, files))
        classes = FASHION if name == "fashion-mnist" else DIGITS
    elif name == "svhn":
        _no_options(name, options)
        arrays, classes = _cached("decoded", key, lambda: _load_svhn(files)), DIGITS
    elif name == "norb":
        opts = {"stereo": "both", "size": 32, "resize": "nearest", **options}
        for k, allowed in NORB_OPTIONS.items():
            if opts[k] not in allowed:
                raise ConfigError(f"norb option {k}={opts[k]!r}: allowed {list(allowed)}")
        _no_options(name, {k: v for k, v in opts.items() if k not in ("stereo", "size", "resize")})
        key = (name, key[1], sorted(opts.items()))
        arrays = _cached("decoded", key, lambda: _load_norb(files, opts["stereo"], opts["size"], opts["resize"]))
        classes, options = norb.CLASSES, opts
    else:  # omniglot
        _no_options(name, options)
        arrays = _cached("decoded", key, lambda: omniglot.read_omniglot(files["chardata.mat"]))
        classes = tuple(f"alphabet-{i:02d}" for i in range(omniglot.NUM_ALPHABETS))
    return Dataset(name, classes, arrays, origin, dict(options))


def _no_options(name: str, options: dict) -> None:
    if options:
        raise ConfigError(f"dataset '{name}' takes no options; got {sorted(options)}")


def _load_cluttered(name: str, data_dir, download, **options) -> Dataset:
    base = name.removeprefix("cluttered-")
    if base not in ("mnist", "fashion-mnist"):
        raise ConfigError(f"unknown dataset '{name}'; cluttered sequences are made from mnist or fashion-mnist")
    known = set(cluttered.ClutterParams.__dataclass_fields__)
    if unknown := set(options) - known:
        raise ConfigError(f"unknown cluttered option(s) {sorted(unknown)}; allowed {sorted(known)}")
    params = cluttered.ClutterParams(**options)
    digits = load_dataset(base, data_dir, download)
    tx, ty = digits.split("train")
    sx, sy = digits.split("test")
    if params.valid_digits is None:       # resolved before it keys the cache: 10 000 for MNIST's 60 000
        params = dataclasses.replace(params, valid_digits=default_holdout(len(tx)))
    params.validate(len(tx))
    arrays = _cached("cluttered", (name, params.as_dict(), tx, ty, sx, sy),
                     lambda: cluttered.generate(tx, ty, sx, sy, params), compress=True)
    return Dataset(name, digits.classes, arrays, digits.origin, params.as_dict())


DATASETS: dict[str, str] = {
    "mnist": "MNIST digits, 28x28 (IDX)",
    "fashion-mnist": "Fashion-MNIST, 28x28 (IDX; Debian package dataset-fashion-mnist)",
    "svhn": "SVHN cropped digits, 32x32x3 (MATLAB v5 .mat)",
    "norb": "small NORB, 5 classes, stereo 96x96 -> 32x32 (NORB binary matrices)",
    "omniglot": "OMNIGLOT 28x28 as in the IWAE/LVAE papers (chardata.mat)",
    "cluttered-mnist": "cluttered MNIST digit sequences, 100x100, 3 digits (generated, cached .npz)",
    "cluttered-fashion-mnist": "cluttered Fashion-MNIST sequences, 100x100, 3 items (generated, cached .npz)",
}


def raw_source(name: str) -> Source:
    """The raw-file source behind a dataset name (a cluttered set's digit source)."""
    return SOURCES[name.removeprefix("cluttered-")]
