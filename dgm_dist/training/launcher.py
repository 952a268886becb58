"""Launch one training run: check everything a user can get wrong, start (or join) Ray, run the
per-worker loop under a `TorchTrainer`, and track the run in MLflow from the driver.

A run is named; running again with the same name and storage path resumes it from its latest
checkpoint (Ray Train V2's resume key, docs/training.md).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from dgm_dist.config import Config, flatten, resolve_paths, to_yaml
from dgm_dist.data import load_from_config
from dgm_dist.errors import ConfigError, DgmError, TrainingError
from dgm_dist.fileio import atomic_write
from dgm_dist.models.registry import model_spec
from dgm_dist.tracking import RESUME_TAG, RunTracker, check_reachable, learning_curve, resolve_uri, tracked_run
from dgm_dist.training import data as training_data
from dgm_dist.training import embedded_ray
from dgm_dist.training.resources import check_model_memory, shortfall


@dataclass
class TrainResult:
    run_name: str
    metrics: dict[str, Any]
    checkpoint: str | None
    tracking_uri: str
    mlflow_run_id: str
    storage_path: str
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    startup_seconds: float | None = None
    replayed_epochs: list[int] = field(default_factory=list)   # re-run after worker-group restarts
    tracking_notices: list[str] = field(default_factory=list)   # MLflow outages and where metrics went
    mlflow_fallback_run_id: str | None = None                   # a run in the local store, if the server stayed away

    def summary(self, cfg: Config) -> dict[str, Any]:
        """What `dgm-dist train --json` prints: the run, its main figures, where it is tracked."""
        m = self.metrics
        rates = [h["throughput"] for h in self.history if "throughput" in h]
        return {"run_name": self.run_name, "model": cfg.model.name, "dataset": cfg.data.dataset,
                "labels": cfg.data.labels, "workers": cfg.scaling.workers,
                "test_error": m.get("test_error", m.get("test_per_digit_error")), "epochs": m.get("epoch"),
                "steps": m.get("step"), "examples_per_s": round(sorted(rates)[len(rates) // 2], 1) if rates else None,
                "stopped_at_budget": bool(m.get("stopped_at_budget")), "stopped_early": bool(m.get("stopped_early")),
                "best_epoch": m.get("best_epoch"), "mlflow_run_id": self.mlflow_run_id,
                **({"iw_samples": cfg.model.iw_samples} if cfg.model.name in ("vae", "lvae") else {}),
                "metrics": {k: v for k, v in m.items() if k != "first_step_at"},
                "checkpoint": self.checkpoint,
                "mlflow": {"tracking_uri": self.tracking_uri, "run_id": self.mlflow_run_id},
                "tracking_notices": self.tracking_notices, "mlflow_fallback_run_id": self.mlflow_fallback_run_id,
                "seconds": round(self.seconds, 1),
                "startup_seconds": None if self.startup_seconds is None else round(self.startup_seconds, 1)}


def storage_path(cfg: Config) -> str:
    # DGM_STORAGE_PATH: a cluster's shared storage (cluster.yaml sets it on every node)
    path = cfg.tracking.storage_path or os.environ.get("DGM_STORAGE_PATH") or str(Path(cfg.tracking.root) / "ray")
    return path if "://" in path else str(Path(path).expanduser().resolve())


def drill_marker(storage: str, run_name: str) -> Path:
    """Where a fault drill records that it killed a worker (so the restarted worker is spared)."""
    path = Path(storage) / run_name / "drill-killed-worker"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def default_run_name(cfg: Config) -> str:
    return f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"


def check_resources(scaling) -> None:
    """Fail before Ray starts when the local machine cannot host the workers (a running cluster is
    checked once connected, in `_check_cluster`)."""
    if scaling.address or os.environ.get("RAY_ADDRESS"):
        return
    missing = shortfall(scaling.workers, scaling.cpus_per_worker, scaling.gpus_per_worker if scaling.use_gpu else 0)
    if missing and missing[0] == "GPUs":
        raise ConfigError(f"scaling.workers={scaling.workers} with use_gpu needs {missing[1]:g} GPUs; this machine "
                          f"has {missing[2]} (drop --gpus, use fewer workers, or --address a cluster)")
    if missing:
        raise ConfigError(f"scaling.workers={scaling.workers} x scaling.cpus_per_worker={scaling.cpus_per_worker} "
                          f"needs {missing[1]:g} CPUs; this machine has {missing[2]}")


def _check_cluster(scaling, out) -> None:
    import ray

    have = ray.cluster_resources()
    need_gpu = scaling.workers * scaling.gpus_per_worker if scaling.use_gpu else 0
    if need_gpu > have.get("GPU", 0) and out:
        out(f"note: the cluster has {have.get('GPU', 0):g} GPUs now and this run needs {need_gpu:g}; "
            f"it waits for the autoscaler to add GPU nodes")


def validate(cfg: Config) -> None:
    """Everything that can be checked without data or Ray."""
    spec = model_spec(cfg.model.name)
    check_resources(cfg.scaling)
    world = max(1, cfg.scaling.workers)
    training_data.per_worker(cfg.optim.batch_size, world)
    if spec.streams == "semi_supervised":
        training_data.per_worker(cfg.optim.labelled_batch_size, world, "optim.labelled_batch_size")
    if cfg.scaling.workers == 0 and cfg.scaling.use_gpu:
        raise ConfigError("scaling.use_gpu needs scaling.workers >= 1 (local mode runs on the CPU)")


def train(cfg: Config, run_name: str | None = None, verbose: bool = False, out=print,
          batches_hook=None) -> TrainResult:
    """Train `cfg` to the end and return its final metrics. `batches_hook` is a fault drill of
    `training/faults.py` (tests only)."""
    started = time.time()
    validate(resolve_paths(cfg))
    uri = resolve_uri(cfg.tracking)
    check_reachable(uri)
    spec = model_spec(cfg.model.name)
    dataset = load_from_config(cfg.data)                       # finds, checks and caches the data once
    data = training_data.prepare(dataset, cfg.data, spec.streams)
    # a model/data mismatch, or a model too big for this machine, fails here, before anything is allocated
    check_model_memory(cfg, data.info, 0 if cfg.scaling.address or os.environ.get("RAY_ADDRESS") else
                       max(1, cfg.scaling.workers))
    del data, dataset
    run_name = run_name or default_run_name(cfg)
    storage = storage_path(cfg)

    resume_key = f"{storage.rstrip('/')}/{run_name}"
    tracker = RunTracker(uri, cfg.tracking.experiment, run_name, cfg.tracking.root, flatten(cfg),
                         tags={"dgm.model": cfg.model.name, "dgm.dataset": cfg.data.dataset,
                               "dgm.ray_run_name": run_name, RESUME_TAG: resume_key}, resume_key=resume_key)
    if out:
        again = " (continued)" if tracker.resumed else ""
        out(f"run {run_name}: {cfg.model.name} on {cfg.data.dataset}, "
            f"{cfg.scaling.workers or 'in-process'} worker(s); MLflow run {tracker.run_id}{again} at {uri}")
    from dgm_dist.training.progress import RunMonitor

    tracker.say = out                      # an MLflow outage is reported as it happens
    _save_config(cfg, storage, run_name, tracker)
    monitor = RunMonitor(cfg.optim.epochs, started, log=tracker.log_epoch, out=out)
    said = len(tracker.notices)
    try:
        with tracked_run(tracker, "interrupted (SIGINT or SIGTERM)") as outcome:
            result = _fit(cfg, run_name, storage, monitor, verbose, out, batches_hook)
            if monitor.nonfinite:
                raise TrainingError(f"{monitor.nonfinite}. The run stopped; its last good checkpoint is "
                                    f"{monitor.latest_checkpoint or '(none yet)'}")
            _log_artifacts(tracker, monitor)
            outcome.status = "FINISHED"
    finally:
        for notice in tracker.notices[said:]:      # e.g. where an MLflow outage left the run
            if out:
                out(notice)
    return TrainResult(run_name=run_name, metrics=result, checkpoint=monitor.latest_checkpoint, tracking_uri=uri,
                       mlflow_run_id=tracker.run_id, storage_path=storage, history=monitor.history,
                       seconds=time.time() - started, startup_seconds=monitor.startup_seconds,
                       replayed_epochs=monitor.replayed, tracking_notices=list(tracker.notices),
                       mlflow_fallback_run_id=tracker.fallback_run_id)


def _fit(cfg: Config, run_name: str, storage: str, monitor, verbose: bool, out, batches_hook) -> dict[str, Any]:
    import ray

    from dgm_dist.training.loop import LoopOptions

    options = LoopOptions(cfg, batches_hook=batches_hook, check_every=check_every(cfg),
                          deadline=monitor.started + 60 * cfg.optim.max_minutes if cfg.optim.max_minutes else math.inf,
                          progress_seconds=float(os.environ.get("DGM_PROGRESS_SECONDS", 1.0)))
    if cfg.scaling.workers == 0:
        local_dir = Path(storage) / run_name
        local_dir.mkdir(parents=True, exist_ok=True)
        _quiet_ray(verbose)
        bar = monitor.progress if monitor.bar.tty else None
        make_trainer(cfg, run_name, storage, replace(options, local_dir=str(local_dir), sink=monitor,
                                                     progress=bar)).fit()
        return monitor.history[-1] if monitor.history else {}

    from ray.util.queue import Queue

    from dgm_dist.training.progress import ForwardReports, QueueDrain, QueueProgress

    with RaySession(cfg.scaling, verbose):
        _check_cluster(cfg.scaling, out)
        reports = Queue(actor_options={"num_cpus": 0})
        if monitor.bar.tty:                    # only a terminal shows the bar: no updates sent otherwise
            options = replace(options, progress=QueueProgress(reports))
        trainer = make_trainer(cfg, run_name, storage, options, callbacks=[ForwardReports(reports)])
        with QueueDrain(reports, monitor):
            try:
                trainer.fit()
            except ray.train.TrainingFailedError as e:
                raise _explain(e) from None
        return monitor.history[-1] if monitor.history else {}


def check_every(cfg: Config) -> int:
    """Steps between the workers' agreement on finiteness and the deadline: every step on CPUs
    (the exact failing step in the error; a host sync costs nothing there), every 50 on GPUs
    (no per-step wait for the device; the error names the range of steps)."""
    return 50 if cfg.scaling.use_gpu else 1


def make_trainer(cfg: Config, run_name: str, storage: str, options, callbacks: list = ()):
    """The `TorchTrainer` of one run: in-process (local mode, `scaling.workers=0`), on the embedded
    Ray or on a cluster (a training run, or one Tune trial)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from dgm_dist.training.loop import train_loop_per_worker
    from dgm_dist.training.rendezvous import BoundTorchConfig

    if cfg.scaling.workers == 0:
        return TorchTrainer(train_loop_per_worker, train_loop_config={"options": options},
                            scaling_config=ray.train.ScalingConfig(num_workers=0),
                            run_config=ray.train.RunConfig(name=run_name, storage_path=storage))

    # the controller collects reports when it polls the workers (every 2 s by default); a shorter
    # interval keeps short epochs from waiting on it (the user's own setting wins)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker, train_loop_config={"options": options}, torch_config=BoundTorchConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.workers, use_gpu=cfg.scaling.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.scaling.placement_strategy),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage, callbacks=list(callbacks),
            worker_runtime_env={"env_vars": worker_env()},
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))


def worker_env() -> dict[str, str]:
    """The driver's dgm-dist settings (data and cache locations, downloads) for the workers, which a
    running Ray started them without."""
    return {k: v for k, v in os.environ.items() if k in ("DGM_DATA_DIR", "DGM_CACHE_DIR", "DGM_DOWNLOAD")}


class RaySession:
    """Joins `scaling.address` / `RAY_ADDRESS`, or starts an embedded local Ray for the run (every
    server on 127.0.0.1, token authentication on, the token file private: training/embedded_ray.py)
    and shuts it down afterwards. A Ray already initialised in this process is reused."""

    def __init__(self, scaling, verbose: bool, resources: dict[str, float] | None = None, dashboard: bool = False):
        self.scaling, self.verbose, self.started = scaling, verbose, False
        self.resources = resources or {}      # custom resources of the embedded Ray (Tune's trial drivers)
        # Tune needs the dashboard: Train's placement groups of trials Tune stopped are freed by a
        # cleaner that reads the State API, which the dashboard serves (docs/training.md). 127.0.0.1 only.
        self.dashboard = dashboard or verbose

    def __enter__(self):
        import ray

        if ray.is_initialized():
            return self
        address = self.scaling.address or os.environ.get("RAY_ADDRESS")
        _quiet_ray(self.verbose)
        kwargs: dict[str, Any] = {"log_to_driver": self.verbose,
                                  "logging_level": logging.INFO if self.verbose else logging.WARNING}
        try:
            if address:
                # submit.py on a node where the project is not installed: ship its packages to the workers
                modules = [m for m in os.environ.get("DGM_PY_MODULES", "").split(os.pathsep) if m]
                ray.init(address=address, runtime_env={"py_modules": modules} if modules else None, **kwargs)
            else:
                # Ray Train's placement-group cleaner, inside a worker, finds its cluster by
                # RAY_ADDRESS or by scanning the machine, which fails when another Ray runs here;
                # so the GCS port is chosen first and every worker gets RAY_ADDRESS. The cleaner then asks
                # the State API at the dashboard address the GCS records, Ray's default port (8265)
                # even with the dashboard off; where another Ray's dashboard serves that port, our
                # controller is not found there, counted dead, and the live run's workers removed.
                # So the dashboard port is chosen too (docs/training.md, two Rays on one machine).
                port = embedded_ray.free_port()
                previous = os.environ.get("RAY_GCS_SERVER_PORT")
                os.environ["RAY_GCS_SERVER_PORT"] = str(port)
                try:
                    # address="local": a new Ray, even where `ray start` left a cluster running here;
                    # on 127.0.0.1 only, with a token only this user can read (training/embedded_ray.py)
                    embedded_ray.private_token()
                    with embedded_ray.loopback_node():
                        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=self.dashboard,
                                 dashboard_host="127.0.0.1", dashboard_port=embedded_ray.free_port(),
                                 resources=self.resources,
                                 runtime_env={"env_vars": {"RAY_ADDRESS": f"127.0.0.1:{port}"}}, **kwargs)
                finally:
                    if previous is None:
                        os.environ.pop("RAY_GCS_SERVER_PORT", None)
                    else:
                        os.environ["RAY_GCS_SERVER_PORT"] = previous
        except ConnectionError as e:
            raise ConfigError(f"cannot connect to the Ray cluster at {address}: {e}; check --address / "
                              f"RAY_ADDRESS, or drop it to run on an embedded local Ray") from None
        self.started = True
        return self

    def __exit__(self, *exc):
        import ray

        if self.started:
            ray.shutdown()


def _quiet_ray(verbose: bool) -> None:
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    level = logging.INFO if verbose else logging.WARNING
    for name in ("ray", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    # the embedded Ray keeps token authentication on (the safe default); its notice is not news
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        level if verbose else logging.ERROR)


def _explain(error: Exception) -> Exception:
    """A worker's own `DgmError` (bad data found on a node, say) as itself; anything else as a
    `TrainingError` naming the failed ranks."""
    failures = getattr(error, "worker_failures", None) or {}
    for exc in failures.values():
        seen = exc
        while seen is not None:
            if isinstance(seen, DgmError):
                return seen
            seen = getattr(seen, "cause", None) or seen.__cause__
    ranks = ", ".join(map(str, sorted(failures))) or "?"
    first = next(iter(failures.values()), error)
    return TrainingError(f"training failed on worker rank(s) {ranks} after the allowed restarts "
                         f"(scaling.max_failures): {str(first).strip().splitlines()[-1] if str(first) else first!r}")


def _save_config(cfg: Config, storage: str, run_name: str, tracker: RunTracker) -> None:
    """The run's whole config as `config.yaml`, beside its checkpoints (local storage) and in MLflow:
    `dgm-dist train MODEL --config config.yaml` runs it again (`dgm-dist config show` prints the same)."""
    text = to_yaml(cfg)
    if "://" not in storage:
        (Path(storage) / run_name).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(storage) / run_name / "config.yaml", lambda f: f.write(text.encode()))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(text)
        tracker.log_artifact(Path(tmp) / "config.yaml")


def _log_artifacts(tracker: RunTracker, monitor) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if monitor.history:
            tracker.log_artifact(learning_curve(monitor.history, Path(tmp) / "learning_curve.png"))
    if monitor.latest_checkpoint:
        ckpt = Path(monitor.latest_checkpoint)
        if ckpt.exists():           # a remote storage path (s3://) is referenced by a tag instead
            figures = ckpt / "figures"
            if figures.is_dir():
                tracker.log_artifact(figures, "figures")
            tracker.log_artifact(ckpt / "state.pt", "checkpoint")
        tracker.set_tags({"dgm.checkpoint": monitor.latest_checkpoint})
