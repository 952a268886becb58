"""Where datasets are found, in order, and verified downloads from a real local HTTP server."""

import hashlib
import http.server
import threading
from dataclasses import replace

import pytest
from formats import write_mnist_dir

from dgm_dist.data import sources
from dgm_dist.data.catalog import SOURCES, load_dataset
from dgm_dist.data.sources import Source, resolve
from dgm_dist.errors import DataError


def test_explicit_dir_wins_and_is_strict(tmp_path, monkeypatch):
    env_dir = write_mnist_dir(tmp_path / "env" / "mnist", n_train=20)
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path / "env"))
    explicit = write_mnist_dir(tmp_path / "explicit", n_train=30)
    assert load_dataset("mnist", explicit).split("train")[0].shape[0] == 30
    assert load_dataset("mnist").split("train")[0].shape[0] == 20   # env used when no --data-dir
    with pytest.raises(DataError) as e:                              # explicit but empty: no fallback
        load_dataset("mnist", tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value) and str(env_dir) not in str(e.value)


def test_env_dir_may_hold_the_files_directly(tmp_path, monkeypatch):
    d = write_mnist_dir(tmp_path / "flat", n_train=40)
    monkeypatch.setenv("DGM_DATA_DIR", str(d))
    assert load_dataset("mnist").split("train")[0].shape[0] == 40


def test_missing_dataset_lists_every_place_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(sources, "DEBIAN_DATASETS", tmp_path / "debian")
    with pytest.raises(DataError) as e:
        load_dataset("mnist")
    msg = str(e.value)
    for place in (tmp_path / "data" / "mnist", tmp_path / "data", tmp_path / "debian" / "mnist",
                  tmp_path / "cache" / "downloads" / "mnist"):
        assert f"- {place}\n" in msg
    assert "To get it:" in msg and "--data-dir" in msg


def test_partial_directory_is_not_used(tmp_path):
    d = write_mnist_dir(tmp_path / "m")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", d)


@pytest.fixture
def http_dir(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a directory."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _md5(p):
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_download_verified_by_checksum(http_dir, monkeypatch, tmp_path):
    root, url = http_dir
    monkeypatch.setattr(sources, "DEBIAN_DATASETS", tmp_path / "debian")
    write_mnist_dir(root, n_train=50)
    checks = {p.name: _md5(p) for p in root.iterdir()}
    source = replace(SOURCES["mnist"], mirror=url, checksums=checks)
    files = resolve(source, download=True)
    assert all(p.parent == tmp_path / "cache" / "downloads" / "mnist" for p in files.values())
    assert {p.name for p in files.values()} == set(checks)
    # once downloaded, found without the network
    assert resolve(replace(source, mirror="http://127.0.0.1:9/"), download=False) == files


def test_download_with_bad_checksum_keeps_nothing(http_dir, monkeypatch, tmp_path):
    root, url = http_dir
    monkeypatch.setattr(sources, "DEBIAN_DATASETS", tmp_path / "debian")
    write_mnist_dir(root)
    checks = {p.name: _md5(p) for p in root.iterdir()}
    checks["train-images-idx3-ubyte.gz"] = "0" * 32
    with pytest.raises(DataError, match="checksum mismatch") as e:
        resolve(replace(SOURCES["mnist"], mirror=url, checksums=checks), download=True)
    assert "Looked in" in str(e.value)
    target = tmp_path / "cache" / "downloads" / "mnist"
    assert not (target / "train-images-idx3-ubyte.gz").exists()
    assert not list(target.glob("*.part"))


def test_unreachable_mirror_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "DEBIAN_DATASETS", tmp_path / "debian")
    source = Source("thing", ("a.bin",), mirror="http://127.0.0.1:9/", checksums={"a.bin": "0" * 32},
                    howto="ask a friend")
    with pytest.raises(DataError, match=r"(?s)The download failed: http://127.0.0.1:9/a.bin.*ask a friend"):
        resolve(source, download=True)


def test_download_disabled_by_env(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "DEBIAN_DATASETS", tmp_path / "debian")
    source = Source("thing", ("a.bin",), mirror="http://127.0.0.1:9/", checksums={"a.bin": "0" * 32})
    monkeypatch.setenv("DGM_DOWNLOAD", "0")
    with pytest.raises(DataError) as e:
        resolve(source)
    assert "download failed" not in str(e.value)
