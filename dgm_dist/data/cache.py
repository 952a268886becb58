"""The on-disk cache of decoded arrays and generated datasets.

Writes are atomic (a temporary file in the same directory, then `os.replace`), so an interrupted
or failed write never damages what is already cached. A cache file that cannot be read is treated
as missing and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from dgm_dist.errors import DataError
from dgm_dist.fileio import atomic_write


def cache_root() -> Path:
    """`DGM_CACHE_DIR`, else `$XDG_CACHE_HOME/dgm-dist`, else `~/.cache/dgm-dist`."""
    if env := os.environ.get("DGM_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dgm-dist"


def ensure_writable_dir(directory: Path) -> Path:
    """Create `directory` if needed and check that files can be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-", delete=True)
        probe.close()
    except OSError as e:
        raise DataError(
            f"cache directory {directory} is not writable ({e.strerror or e}); set DGM_CACHE_DIR "
            "to a writable directory") from None
    return directory


def digest(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts and numpy arrays (by content)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype.str, part.shape)).encode())
            h.update(np.ascontiguousarray(part).data)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def file_fingerprint(paths: list[Path]) -> list[tuple[str, int, int]]:
    """Identity of source files for cache keys: resolved path, size and modification time."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return out


MANIFEST = "__manifest__"      # every array's name, shape and dtype, written with them


def _manifest(arrays: dict[str, np.ndarray]) -> str:
    return json.dumps({k: [list(v.shape), v.dtype.str] for k, v in sorted(arrays.items())})


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays in a cached `.npz`, or None when it is missing, unreadable, or not what was
    written (an array missing, or of another shape or type than its manifest says): it is rebuilt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"ignoring unreadable cache file {path} ({e}); it will be rebuilt", stacklevel=2)
        return None
    written = arrays.pop(MANIFEST, None)
    if written is None or str(written) != _manifest(arrays):
        why = "written by an earlier dgm-dist" if written is None else "its arrays are not the ones written"
        warnings.warn(f"ignoring cache file {path}: {why}; it will be rebuilt", stacklevel=2)
        return None
    return arrays


def save_arrays(path: Path, arrays: dict[str, np.ndarray], compress: bool = False) -> None:
    """Write arrays to `path` atomically, with their manifest."""
    ensure_writable_dir(path.parent)
    arrays = {**arrays, MANIFEST: np.array(_manifest(arrays))}
    try:
        atomic_write(path, lambda f: (np.savez_compressed if compress else np.savez)(f, **arrays))
    except OSError as e:
        raise DataError(f"cannot write cache file {path} ({e.strerror or e}); set DGM_CACHE_DIR to a "
                        "directory with free space") from None
