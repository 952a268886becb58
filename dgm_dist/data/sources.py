"""Where a dataset's files come from.

Resolution order (first hit wins):
1. an explicit directory (`--data-dir`; when given, nothing else is tried),
2. `DGM_DATA_DIR` (the files themselves, or a `<name>/` subdirectory),
3. `/usr/share/datasets/<name>` (Debian's dataset packages, e.g. `dataset-fashion-mnist`),
4. earlier downloads under `<cache>/downloads/<name>`,
5. a download from the canonical mirror, verified by MD5 (only for files with a published checksum;
   disabled by `download=False` or `DGM_DOWNLOAD=0`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dgm_dist.data.cache import cache_root, ensure_writable_dir
from dgm_dist.data.files import find_file
from dgm_dist.errors import DataError

DEBIAN_DATASETS = Path("/usr/share/datasets")
DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Source:
    """The raw files of one dataset and how to obtain them."""

    name: str
    files: tuple[str, ...]          # file names without a `.gz` suffix; either form is accepted
    mirror: str | None = None       # base URL; the file names below are appended
    checksums: dict[str, str] = field(default_factory=dict)  # downloaded file name -> MD5
    howto: str = ""

    def download_names(self) -> dict[str, str]:
        """Required file -> the name to download it as (the checksummed name)."""
        out = {}
        for stem in self.files:
            gz = f"{stem}.gz"
            out[stem] = gz if gz in self.checksums else stem
        return out


def _dir_has_all(directory: Path, source: Source) -> dict[str, Path] | None:
    found = {stem: find_file(directory, stem) for stem in source.files}
    return found if all(found.values()) else None  # type: ignore[return-value]


def candidate_dirs(source: Source, data_dir: Path | str | None) -> list[Path]:
    """The directories searched, in order."""
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        return [d, d / source.name]
    dirs = []
    if env := os.environ.get("DGM_DATA_DIR"):
        d = Path(env).expanduser()
        dirs += [d / source.name, d]
    dirs += [DEBIAN_DATASETS / source.name, cache_root() / "downloads" / source.name]
    return dirs


def download_enabled(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("DGM_DOWNLOAD", "1").lower() not in ("0", "false", "no", "off")


def locate(source: Source, data_dir: Path | str | None = None) -> Path | None:
    """The directory that holds all of `source`'s files, without downloading; None if none does."""
    for d in candidate_dirs(source, data_dir):
        if _dir_has_all(d, source) is not None:
            return d
    return None


def resolve(source: Source, data_dir: Path | str | None = None, download: bool | None = None) -> dict[str, Path]:
    """Paths of all of `source`'s files, from the first directory that has them all."""
    searched = candidate_dirs(source, data_dir)
    for d in searched:
        if (found := _dir_has_all(d, source)) is not None:
            return found
    problem = ""
    if data_dir is None and download_enabled(download) and source.mirror and source.checksums:
        try:
            return _download(source)
        except DataError as e:
            problem = f"\nThe download failed: {e}"
    looked = "\n".join(f"  - {d}" for d in searched)
    need = ", ".join(source.files)
    raise DataError(
        f"dataset '{source.name}' not found. It needs the files {need} (plain or .gz). Looked in:\n"
        f"{looked}{problem}\nTo get it: {source.howto}")


def md5sum(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(source: Source) -> dict[str, Path]:
    """Fetch every file into the download cache; each is verified before it is moved into place."""
    target = ensure_writable_dir(cache_root() / "downloads" / source.name)
    for stem, name in source.download_names().items():
        if find_file(target, stem):
            continue
        if name not in source.checksums:
            raise DataError(f"no published checksum for {name}; download it by hand")
        url = source.mirror.rstrip("/") + "/" + name  # type: ignore[union-attr]
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
                for chunk in iter(lambda r=r: r.read(1 << 20), b""):
                    out.write(chunk)
            got = md5sum(Path(tmp))
            if got != source.checksums[name]:
                raise DataError(f"{url}: checksum mismatch (MD5 {got}, expected {source.checksums[name]})")
            os.replace(tmp, target / name)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"{url}: {reason}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    found = _dir_has_all(target, source)
    assert found is not None
    return found
