"""`dgm-dist doctor`: what this machine has for dgm-dist, one check a line, with the fix for each
problem (README, *A tour of the CLI*). Nothing is started or created: no Ray, no training, no store."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def packages() -> list[Check]:
    from dgm_dist import __version__

    checks = [Check("dgm-dist", True, f"{__version__} (Python {platform.python_version()}, {sys.executable})")]
    for dist, pin in (("torch", "2.13.0"), ("ray", "2.60.0"), ("mlflow", "3.17.2"), ("onnx", None)):
        found = _version(dist)
        checks.append(Check(dist, found is not None and (pin is None or found.split("+")[0] == pin),   # 2.13.0+cpu
                            found or "not installed", f"pip install {dist}=={pin}" if pin else f"pip install {dist}"))
    cpu, gpu = _version("onnxruntime"), _version("onnxruntime-gpu")
    if cpu and gpu:
        checks.append(Check("onnxruntime", False, f"both onnxruntime {cpu} and onnxruntime-gpu {gpu}: they "
                            "overwrite each other", "pip uninstall -y onnxruntime onnxruntime-gpu, then install one"))
    else:
        checks.append(Check("onnxruntime", bool(cpu or gpu), f"onnxruntime{'-gpu' if gpu else ''} {cpu or gpu}"
                            if cpu or gpu else "not installed: export, validate, pipeline and the predictor need it",
                            "pip install -e '.[cpu]' (or '.[gpu]' on a GPU node)"))
    return checks


def machine() -> list[Check]:
    from dgm_dist.training.resources import available_memory

    checks = [Check("cpus", True, f"{os.cpu_count()} cores, {available_memory() / 2**30:.1f} GiB memory available")]
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        checks.append(Check("gpus", True, ", ".join(gpus) or "none (CPU workers over gloo; --gpus needs one)"))
    except Exception as e:  # a broken CUDA install reports here instead of in a run
        checks.append(Check("gpus", False, f"torch.cuda failed: {e}", "reinstall torch==2.13.0"))
    return checks


def datasets(data_dir: str | None) -> list[Check]:
    from dgm_dist.data.catalog import DATASETS, raw_source
    from dgm_dist.data.sources import locate

    found = {name: locate(raw_source(name), data_dir) for name in DATASETS}
    present = [n for n, where in found.items() if where]
    return [Check("datasets", bool(present), ", ".join(f"{n} ({found[n]})" for n in present) or "none found",
                  "install Debian's dataset-fashion-mnist, or give --data-dir / DGM_DATA_DIR")]


def ray_security() -> list[Check]:
    from dgm_dist.training.embedded_ray import token_path

    mode = os.environ.get("RAY_AUTH_MODE", "token (default)")
    checks = [Check("ray auth", not mode.startswith("disabled"), f"RAY_AUTH_MODE={mode}",
                    "unset RAY_AUTH_MODE: token authentication is the safe default")]
    path = token_path()
    if path is not None and path.exists():
        private = path.stat().st_mode & 0o077 == 0
        checks.append(Check("ray token", private, f"{path} mode {path.stat().st_mode & 0o777:04o}",
                            f"chmod 600 {path} (or run any dgm-dist command, which does)"))
    return checks


def tracking(uri: str) -> list[Check]:
    from dgm_dist.errors import DgmError
    from dgm_dist.tracking import check_reachable

    if uri.startswith("sqlite:///"):            # checked without creating anything
        existing = Path(uri.removeprefix("sqlite:///")).parent
        while not existing.exists():
            existing = existing.parent
        writable = os.access(existing, os.W_OK)
        return [Check("mlflow", writable, f"{uri} ({'can be created' if writable else f'{existing} is not writable'})",
                      "" if writable else "set tracking.root (--set tracking.root=DIR) to a writable directory")]
    try:
        check_reachable(uri, timeout=3.0)
    except DgmError as e:
        return [Check("mlflow", False, str(e), "start the server, or unset MLFLOW_TRACKING_URI for a local store")]
    return [Check("mlflow", True, f"{uri} answers")]


def run(data_dir: str | None, uri: str) -> list[Check]:
    return [*packages(), *machine(), *datasets(data_dir), *ray_security(), *tracking(uri)]


def as_dict(checks: list[Check]) -> dict:
    return {"passed": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
