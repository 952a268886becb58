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
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgm_dist.errors import ConfigError, DgmError, TrackingError
from dgm_dist.orphans import DRIVER_TAG, ORPHANED_TAG, driver_tag, end_orphans

SERVER_HINT = ("start one with `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 "
               "--port 5000`, fix MLFLOW_TRACKING_URI, or unset it to log to a local sqlite file")


RESUME_TAG = "dgm.resume_key"     # <storage path>/<run name>: Ray Train's resume key
EPOCH_METRIC = "epoch"             # logged with every report; its steps are the logged epochs


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


def fail_fast_http() -> None:
    """MLflow's HTTP client retries 7 times with backoff and waits 120 s a request by default, which
    would stall training for minutes when a server goes away; ours give up in seconds (and the
    tracker queues the call). A user's own settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


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
        fail_fast_http()
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.uri, self.experiment, self.run_name, self.root, self.params = uri, experiment, run_name, root, params
        self.client = MlflowClient(tracking_uri=uri)
        self.pending: list[tuple[str, Any]] = []          # calls queued during an outage, in order
        self.history: list[list] = []                      # every metric batch, for a local fallback
        self.tags: dict[str, str] = dict(tags or {})
        self.notices: list[str] = []                       # what the user should hear about tracking
        self.lost: list[str] = []
        self.spooled: list[tuple[Path, str | None]] = []   # artifacts kept during an outage, not yet uploaded
        self.outage_since: float | None = None
        self.retry_at = 0.0
        self.fallback_run_id: str | None = None
        self.say = None                                    # where outage notices are printed as they happen
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                # an absolute artifact root: workers and later processes may run in another cwd
                location = (Path(root).expanduser().resolve() / "mlartifacts").as_uri() \
                    if uri.startswith("sqlite:") else None
                exp_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            ended = end_orphans(self.client, [exp_id], by=f"dgm-dist (run {run_name})")
            run = self._resumed_run(exp_id, run_name, resume_key)
            self.resumed = run is not None
            if run is None:
                run = self.client.create_run(exp_id, run_name=run_name, tags={**(tags or {}), DRIVER_TAG: driver_tag()})
            else:
                self.client.set_tag(run.info.run_id, DRIVER_TAG, driver_tag())
                if ORPHANED_TAG in run.data.tags:
                    self.client.delete_tag(run.info.run_id, ORPHANED_TAG)
        except Exception as e:  # MLflow raises many types (MlflowException, requests, sqlalchemy)
            raise TrackingError(f"MLflow at {uri} refused to create a run ({type(e).__name__}: {e})") from None
        if ended:
            self.notices.append(f"ended {len(ended)} run(s) of experiment {experiment} left RUNNING by a driver "
                                f"that had died, as KILLED: {', '.join(ended)}")
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

    # ---- logging that survives an outage of the tracking server ---------------------------------
    # Training never waits on MLflow: a failed call is kept in memory and sent again, in order, with
    # the next call after RETRY_SECONDS. A run that ends while the server is still away writes
    # everything to the local sqlite store instead and says where (`notices`).
    RETRY_SECONDS = 20.0

    def _send(self, action: str, call) -> bool:
        """Run `call` unless the server is in an outage (then queue it); False if it was queued."""
        if self.pending and not self._flush():
            self.pending.append((action, call))
            return False
        try:
            call()
            return True
        except Exception as e:  # MlflowException, requests' ConnectionError/Timeout, ...
            self._outage(e)
            self.pending.append((action, call))
            return False

    def _flush(self, force: bool = False) -> bool:
        if not force and time.time() < self.retry_at:
            return False
        while self.pending:
            try:
                self.pending[0][1]()
            except Exception as e:  # still away
                self._outage(e)
                return False
            self.pending.pop(0)
        if self.outage_since is not None:
            self.notices.append(f"MLflow at {self.uri} is back after {time.time() - self.outage_since:.0f} s; "
                                f"the metrics kept meanwhile are logged")
            self.outage_since = None
        return True

    def _outage(self, error: Exception) -> None:
        if self.outage_since is None:
            self.outage_since = time.time()
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            self.notices.append(f"MLflow at {self.uri} failed ({reason}); training goes on and its metrics are "
                                f"kept and sent when the server is back")
            if self.say:
                self.say(self.notices[-1])
        self.retry_at = time.time() + self.RETRY_SECONDS

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Log one report's numeric metrics at step `epoch`; a repeated epoch (re-run after a restart
        from an older checkpoint; identical by exact resume) is skipped. Returns whether it logged
        (or queued it during an outage)."""
        from mlflow.entities import Metric

        if epoch in self.logged_epochs:
            return False
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in sorted(metrics.items())
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.history.append(batch)
        self._send(f"metrics of epoch {epoch}", lambda: self.client.log_batch(self.run_id, metrics=batch))
        self.logged_epochs.add(epoch)
        return True

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a directory's files, under `artifact_path`. During an outage a copy is kept in
        `<tracking.root>/mlflow-spool/` (the original may be temporary) and uploaded in order when
        the server is back, or to the local fallback run."""
        path = Path(path)
        if self.pending:
            self._spool(path, artifact_path)
            return
        try:
            self._upload(self.client, self.run_id, path, artifact_path)
        except Exception as e:  # an outage (or a full artifact store)
            self._outage(e)
            self._spool(path, artifact_path)

    @staticmethod
    def _upload(client, run_id: str, path: Path, artifact_path: str | None) -> None:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path)

    def _spool(self, path: Path, artifact_path: str | None) -> None:
        try:
            self._spool_dir().mkdir(parents=True, exist_ok=True)
            copy = Path(tempfile.mkdtemp(prefix="artifact-", dir=self._spool_dir())) / path.name
            shutil.copytree(path, copy) if path.is_dir() else shutil.copy2(path, copy)
        except OSError as e:
            self.lost.append(f"{path} ({e.strerror or e})")
            return
        self.spooled.append((copy, artifact_path))

        def upload(copy=copy, artifact_path=artifact_path):
            self._upload(self.client, self.run_id, copy, artifact_path)
            self.spooled.remove((copy, artifact_path))
            shutil.rmtree(copy.parent, ignore_errors=True)
        self.pending.append((f"artifact {path.name}", upload))

    def _spool_dir(self) -> Path:
        return Path(self.root).expanduser().resolve() / "mlflow-spool" / self.run_id

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)
        for k, v in tags.items():
            self._send(f"tag {k}", lambda k=k, v=v: self.client.set_tag(self.run_id, k, v))

    def end(self, status: str) -> None:
        self._send("end", lambda: self.client.set_terminated(self.run_id, status=status))
        if self.pending and not self._flush(force=True):
            self._write_locally(status)
        if self.lost:
            self.notices.append(f"not logged to MLflow (the server was away): {', '.join(self.lost)}")

    def _write_locally(self, status: str) -> None:
        """The server is still away at the end: params, every metric, tags and status go to a run in
        the local sqlite store, so nothing is lost; `notices` says where."""
        local = f"sqlite:///{Path(self.root).expanduser().resolve() / 'mlflow.db'}"
        try:
            fallback = RunTracker(local, self.experiment, self.run_name, self.root, self.params,
                                  tags={**self.tags, "dgm.tracking_fallback": f"{self.uri} unreachable; run "
                                        f"{self.run_id} there is incomplete"})
            for batch in self.history:
                fallback.client.log_batch(fallback.run_id, metrics=batch)
            for copy, artifact_path in self.spooled:
                self._upload(fallback.client, fallback.run_id, copy, artifact_path)
            fallback.client.set_terminated(fallback.run_id, status=status)
            shutil.rmtree(self._spool_dir(), ignore_errors=True)
        except Exception as e:  # the local disk failed too: say so, the checkpoints are still there
            self.notices.append(f"MLflow at {self.uri} stayed away and the local store failed too "
                                f"({type(e).__name__}: {e}); the run's checkpoints hold its results")
            return
        self.notices.append(f"MLflow at {self.uri} stayed away until the end: this run's params, metrics and "
                            f"status were written to the local store {local}, run {fallback.run_id}")
        self.fallback_run_id = fallback.run_id


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


def log_evaluation(uri: str, checkpoint, result: dict) -> None:
    """Add the figures to the MLflow run that produced the checkpoint, suffixed with k."""
    from mlflow import MlflowClient

    suffix = f"_k{result['metrics']['iw_samples']}" if "iw_samples" in result["metrics"] else "_offline"
    if result["examples"] < result["split_size"]:           # a part of the split: never mistaken for all of it
        suffix += f"_n{result['examples']}"
    run_id = run_for_checkpoint(uri, checkpoint)
    if run_id:
        client = MlflowClient(uri)
        for k, v in result["metrics"].items():
            if k != "iw_samples" and isinstance(v, (int, float)):
                client.log_metric(run_id, k + suffix, float(v))
        result["mlflow_run_id"] = run_id


def end_orphaned_runs(uri: str, experiment: str) -> dict[str, str]:
    """`dgm-dist runs orphans`: end the experiment's runs whose driver on this host died
    (orphans.py); {run id: run name} of those ended."""
    quiet_mlflow()
    fail_fast_http()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return {}
        return end_orphans(client, [exp.experiment_id], by="dgm-dist runs orphans")
    except Exception as e:  # MLflow raises many types (MlflowException, requests, sqlalchemy)
        raise TrackingError(f"MLflow at {uri} could not be searched ({type(e).__name__}: {e})") from None


@dataclass
class Outcome:
    status: str = "FAILED"             # the body sets "FINISHED" when it completed


@contextmanager
def tracked_run(tracker: RunTracker, stopped: str, sigterm: str = "raise",
                before_end: Callable[[], None] | None = None) -> Iterator[Outcome]:
    """The lifecycle every tracked driver shares (a training run, a study, a pipeline): SIGTERM
    unwinds like Ctrl-C (`sigterm="raise"`; `"sigint"` re-sends it as SIGINT for Tune, whose own
    handler saves the study's state), an interrupt or a user error is recorded on the run as a tag
    (`dgm.stopped` = `stopped`, `dgm.error`), and the run always ends: FINISHED when the body set
    `outcome.status`, FAILED otherwise."""
    outcome = Outcome()
    restore = _sigterm_as_interrupt(sigterm)
    try:
        yield outcome
    except KeyboardInterrupt:
        tracker.set_tags({"dgm.stopped": stopped})
        raise
    except DgmError as e:
        tracker.set_tags({"dgm.error": str(e)[:5000]})
        raise
    finally:
        restore()
        if before_end is not None:
            before_end()
        tracker.end(outcome.status)


def _sigterm_as_interrupt(mode: str) -> Callable[[], None]:
    """Install the SIGTERM handler; returns the function that restores the previous one."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def interrupt(signum, frame):
        if mode == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)
