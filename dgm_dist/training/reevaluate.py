"""`dgm-dist evaluate`: a finished run's model on a whole split, with settings of its own (e.g. the
LVAE paper's 5000 importance samples), in one process, with progress."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dgm_dist.config import Config, apply
from dgm_dist.data import load_from_config
from dgm_dist.errors import ConfigError, DataError
from dgm_dist.models.registry import DataInfo, build_model, model_spec
from dgm_dist.training import data as training_data
from dgm_dist.training import state
from dgm_dist.training.evaluation import evaluate_model


def find_checkpoint(target: str, storage_path: str, tracking_uri: str | None = None) -> Path:
    """A checkpoint directory, a run name under the storage path (its latest checkpoint), or an MLflow
    run id (its `dgm.checkpoint` tag)."""
    if "://" in target:                      # a cluster's shared storage (s3://...): fetch it here
        return _download(target)
    path = Path(target).expanduser()
    if (path / state.STATE_FILE).exists():
        return path
    run_dir = Path(storage_path) / target
    found = sorted((p for p in run_dir.glob("checkpoint*") if (p / state.STATE_FILE).exists()),
                   key=lambda p: (p.stat().st_mtime, p.name)) if run_dir.is_dir() else []
    if found:
        return found[-1]
    if tracking_uri and len(target) == 32 and all(c in "0123456789abcdef" for c in target):
        from mlflow import MlflowClient

        try:
            tag = MlflowClient(tracking_uri).get_run(target).data.tags.get("dgm.checkpoint")
        except Exception:  # an unknown id: fall through to the error below
            tag = None
        if tag and (Path(tag) / state.STATE_FILE).exists():
            return Path(tag)
    raise DataError(f"no checkpoint found for '{target}': give a checkpoint directory, a run name under "
                    f"{storage_path}, or an MLflow run id of a finished run")


def trained_source(run: str | None, study: str | None, cfg, uri: str) -> tuple[Path, dict]:
    """The checkpoint a user names — a checkpoint directory, a run name, an MLflow run id (`run`) or a
    study's best trial (`study`) — and what is known of where it came from (for export)."""
    from dgm_dist.tracking import run_for_checkpoint
    from dgm_dist.training.launcher import storage_path

    if bool(run) == bool(study):
        raise ConfigError("give either a RUN (checkpoint directory, run name or MLflow run id) or --study STUDY")
    if study:
        from mlflow import MlflowClient

        from dgm_dist.tuning.report import find_study

        parent = find_study(MlflowClient(uri), cfg.tracking.experiment, study)
        tags = parent.data.tags
        if not tags.get("dgm.best_checkpoint"):
            raise DataError(f"study {study} has no finished trial with a checkpoint to export")
        checkpoint = find_checkpoint(tags["dgm.best_checkpoint"], storage_path(cfg))
        return checkpoint, {"mlflow_run_id": tags.get("dgm.best_run_id"), "study": study,
                            "trial": tags.get("dgm.best_trial")}
    checkpoint = find_checkpoint(run, storage_path(cfg), uri)
    return checkpoint, {"mlflow_run_id": run_for_checkpoint(uri, checkpoint)}


def _download(uri: str) -> Path:
    """A checkpoint in remote storage, copied to a local directory (Ray Train's storage layer, so
    any filesystem pyarrow reads: s3://, gs://, ...)."""
    import tempfile

    import ray.train

    local = Path(tempfile.mkdtemp(prefix="dgm-checkpoint-"))
    try:
        ray.train.Checkpoint(path=uri).to_directory(str(local))
    except Exception as e:  # pyarrow raises OSError/ArrowInvalid for a missing path or no credentials
        raise DataError(f"cannot fetch the checkpoint {uri} ({type(e).__name__}: {e}); check the path and "
                        f"this machine's credentials for that storage") from None
    if not (local / state.STATE_FILE).exists():
        raise DataError(f"{uri}: no {state.STATE_FILE} in it; not a dgm-dist checkpoint")
    return local


def load_trained(checkpoint: Path) -> tuple[Config, torch.nn.Module, dict[str, Any]]:
    """The config, the model with its trained weights, and the saved state."""
    saved = state.load(checkpoint)
    extra = saved.get("extra", {})
    if "config" not in extra:
        raise DataError(f"{checkpoint}: the checkpoint has no config (not written by dgm-dist train)")
    cfg = apply(Config(), extra["config"], origin=f"{checkpoint}")
    model = build_model(cfg.model, DataInfo(**extra["data_info"]))
    model.load_state_dict(saved["model"])
    return cfg, model, saved


@torch.no_grad()
def evaluate_run(checkpoint: Path, split: str = "test", iw_samples: int | None = None, batch_size: int = 100,
                 out: Callable[[str], Any] | None = print, examples: int | None = None,
                 data_dir: str | None = None) -> dict[str, Any]:
    """The model of `checkpoint` on `split` (its first `examples` only, if given); `data_dir`: where
    to find the dataset's files instead of where the run found them."""
    cfg, model, saved = load_trained(checkpoint)
    if data_dir:
        cfg = apply(cfg, {"data": {"data_dir": str(Path(data_dir).expanduser().resolve())}}, origin="--data-dir")
    spec = model_spec(cfg.model.name)
    data = training_data.prepare(load_from_config(cfg.data, download=False), cfg.data, spec.streams)
    if split not in data.eval_sets:
        raise ConfigError(f"split '{split}' is not available; choose one of {', '.join(data.eval_sets)}")
    if iw_samples is not None:
        if not hasattr(model, "iw_samples"):
            raise ConfigError(f"--iw-samples applies to the VAE models, not to {cfg.model.name}")
        model.iw_samples = iw_samples
    if hasattr(model, "prepare_evaluation"):
        model.prepare_evaluation(training_data.training_inputs(data))
    model.eval()
    torch.manual_seed(cfg.seed)
    x, y = data.eval_sets[split]
    split_size = len(x)
    x, y = x[:examples], y[:examples]
    started, last_print = time.time(), 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last_print
        if out and (time.time() - last_print > 10 or done == total):
            last_print = time.time()
            elapsed = last_print - started
            out(f"evaluated {done:,}/{total:,} {split} examples in {elapsed:.0f} s, "
                f"eta {math.ceil(elapsed / done * (total - done))} s")

    metrics = evaluate_model(model, x, y, batch_size, progress=progress)
    result = {f"{split}_{k}": v for k, v in metrics.items() if not isinstance(v, list)}
    if iw_samples is not None:
        result["iw_samples"] = iw_samples
    return {"checkpoint": str(checkpoint), "model": cfg.model.name, "dataset": cfg.data.dataset,
            "epoch": saved["epoch"] + 1, "examples": len(x), "split_size": split_size, "metrics": result,
            "seconds": round(time.time() - started, 1)}
