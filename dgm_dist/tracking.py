"""MLflow: where runs go and what gets logged.

Only the driver talks to MLflow; workers report metrics and write checkpoints and figures, which the
driver logs. So one process owns each run, a restarted worker group cannot log a second series, and
a local sqlite store is never written from several processes.

Default store: `sqlite:///<tracking.root>/mlflow.db` with artifacts in `<tracking.root>/mlartifacts`
(never the deprecated file store); `MLFLOW_TRACKING_URI` or `tracking.tracking_uri` names a server.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dgm_dist.errors import ConfigError, DgmError

SERVER_HINT = ("start one with `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 "
               "--port 5000`, fix MLFLOW_TRACKING_URI, or unset it to log to a local sqlite file")


RESUME_TAG = "dgm.resume_key"     # <storage path>/<run name>: Ray Train's resume key
EPOCH_METRIC = "epoch"             # logged with every report; its steps are the logged epochs


class TrackingError(DgmError):
    """The tracking store cannot be used."""


def resolve_uri(tracking_cfg) -> str:
    uri = tracking_cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        root = Path(tracking_cfg.root).expanduser().resolve()
        return f"sqlite:///{root / 'mlflow.db'}"
    if uri.startswith("file:") or "://" not in uri:
        raise ConfigError(f"tracking URI {uri!r}: MLflow's file store is deprecated and refuses new runs; "
                          f"use sqlite:///PATH/mlflow.db or an http(s):// tracking server")
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when the store cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"MLflow tracking server {uri} cannot be reached ({reason}); {SERVER_HINT}") from None
    elif uri.startswith("sqlite:///"):
        directory = Path(uri.removeprefix("sqlite:///")).parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create {directory} for the MLflow database ({e.strerror}); "
                                f"set tracking.root to a writable directory") from None
        if not os.access(directory, os.W_OK):
            raise TrackingError(f"{directory} is not writable; set tracking.root to a writable directory")


def quiet_mlflow() -> None:
    # the sqlite store logs every alembic migration at INFO on first use
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_for_checkpoint(uri: str, checkpoint: str | Path) -> str | None:
    """The id of the run (training run or Tune trial) that wrote `checkpoint`, or None when the store
    has none (or cannot be read: the caller goes on without it)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None                          # no local store: do not create one just to find nothing
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(ids, f"tags.`dgm.checkpoint` = '{checkpoint}'", max_results=1) if ids else []
    except Exception:  # an unreachable store
        return None
    return runs[0].info.run_id if runs else None


class RunTracker:
    """One MLflow run, owned by the driver: params at the start, metrics per report, artifacts at the
    end, and a terminal status always (`end` is called from a `finally`)."""

    def __init__(self, uri: str, experiment: str, run_name: str, root: str | Path,
                 params: dict[str, Any], tags: dict[str, str] | None = None, resume_key: str | None = None):
        quiet_mlflow()
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                # an absolute artifact root: workers and later processes may run in another cwd
                location = (Path(root).expanduser().resolve() / "mlartifacts").as_uri() \
                    if uri.startswith("sqlite:") else None
                exp_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            run = self._resumed_run(exp_id, run_name, resume_key)
            self.resumed = run is not None
            if run is None:
                run = self.client.create_run(exp_id, run_name=run_name, tags=tags or {})
        except Exception as e:  # MLflow raises many types (MlflowException, requests, sqlalchemy)
            raise TrackingError(f"MLflow at {uri} refused to create a run ({type(e).__name__}: {e})") from None
        self.run_id = run.info.run_id
        self.experiment_id = exp_id
        self.logged_epochs: set[int] = set()
        values = {k: str(v)[:6000] for k, v in params.items()}
        if self.resumed:
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged_epochs = {m.step for m in self.client.get_metric_history(self.run_id, EPOCH_METRIC)}
            # params cannot change in MLflow; what a resumed attempt changed (epochs, say) goes in tags
            before = run.data.params
            for k in sorted(k for k in values if k in before and before[k] != values[k]):
                self.client.set_tag(self.run_id, f"dgm.resumed_with.{k}", values[k])
            values = {k: v for k, v in values.items() if k not in before}
        items = [Param(k, v) for k, v in sorted(values.items())]
        for i in range(0, len(items), 100):           # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _resumed_run(self, exp_id: str, run_name: str, resume_key: str | None):
        """The run logged by an earlier attempt of the same Ray run (same name and storage), so a
        resumed training continues one metric series instead of starting a second run."""
        if resume_key is None:
            return None
        found = self.client.search_runs([exp_id], f"tags.`{RESUME_TAG}` = '{resume_key}'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        return found[0] if found else None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Log one report's numeric metrics at step `epoch`; a repeated epoch (re-run after a restart
        from an older checkpoint; identical by exact resume) is skipped. Returns whether it logged."""
        from mlflow.entities import Metric

        if epoch in self.logged_epochs:
            return False
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in sorted(metrics.items())
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.client.log_batch(self.run_id, metrics=batch)
        self.logged_epochs.add(epoch)
        return True

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def learning_curve(history: list[dict[str, float]], path: Path) -> Path:
    """A PNG of every loss and error series against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    keys = sorted({k for h in history for k in h if k.endswith(("loss", "nll", "error"))})
    groups = [[k for k in keys if not k.endswith("error")], [k for k in keys if k.endswith("error")]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 3.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=False):
        for k in group:
            pts = [(h["epoch"], h[k]) for h in history if k in h]
            ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=k)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
