"""Run a study: Ray Tune over the training engine, one `TorchTrainer` per trial (docs/training.md).

Each trial is a function that builds the trial's run config (the study's base with the sampled
parameters), a `TorchTrainer` named after the trial (a restarted trial resumes from its Train
checkpoints) and fits it; `TuneReportCallback` forwards every report to Tune, so the scheduler
(ASHA by default, on the `epoch` metric) sees the validation figure, and Train waits until Tune has
taken each report (`_in_step_with_tune`). Trial drivers take a small
custom resource (`dgm_trial_driver`) instead of a CPU, so trials' workers get the cores.

MLflow is written by the driver only: one parent run for the study and, through a Tune callback,
one child run per trial (tagged `mlflow.parentRunId`) with the trial's whole config as params, its
metrics per epoch, and a terminal status — FINISHED (also when ASHA stopped it, tagged so) or
FAILED (a diverged or crashed trial; the study goes on). The best trial's metrics and checkpoint go
on the parent run. An interrupted study (Ctrl-C, SIGTERM) saves Tune's state; `--resume` restores it:
finished trials are not re-run, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from dgm_dist.config import flatten
from dgm_dist.data import load_from_config
from dgm_dist.errors import ConfigError, DgmError
from dgm_dist.models.registry import model_spec
from dgm_dist.tracking import RESUME_TAG, RunTracker, check_reachable, resolve_uri, tracked_run
from dgm_dist.training import data as training_data
from dgm_dist.training.launcher import RaySession, _explain, check_every, make_trainer, storage_path, validate
from dgm_dist.training.resources import check_model_memory
from dgm_dist.tuning.space import Study, grid_points, to_tune_space
from dgm_dist.tuning.status import StatusTable, figure

DRIVER_RESOURCE = "dgm_trial_driver"
STUDY_TAG = "dgm.study"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "dgm.trial_id"


@dataclass
class StudyResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool
    seconds: float


def study_dirs(study: Study) -> tuple[str, str]:
    """(Tune's experiment directory, the directory of the trials' Train runs)."""
    storage = storage_path(study.base_config)
    return f"{storage.rstrip('/')}/{study.name}", f"{storage.rstrip('/')}/{study.name}.trials"


def run_trial(config: dict[str, Any], study: Study) -> None:
    """One Tune trial = one Train driver (runs in a Ray actor)."""
    import ray.train
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from dgm_dist.training.loop import LoopOptions

    trial_id = tune.get_context().get_trial_id()
    cfg = study.trial_config(config["params"])
    options = LoopOptions(cfg, raise_nonfinite=True, check_every=check_every(cfg))
    trainer = make_trainer(cfg, f"trial-{trial_id}", study_dirs(study)[1], options,
                           callbacks=[_in_step_with_tune(TuneReportCallback)()])
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise _explain(e) from None


def _in_step_with_tune(report_callback):
    """Ray's `TuneReportCallback`, waiting after each report until Tune has taken it (docs/tuning.md,
    *Train in step with Tune*). Tune takes a trial's next result only after deciding on the one
    before, so Train runs at most one report ahead of the scheduler: the checkpoint of the result
    on which ASHA stops a trial is always among the two Train keeps, and a stopped trial trains at
    most one report's worth more. Without the wait, Train ran two reports ahead on a busy driver
    and deleted that checkpoint (CI, 2026-12-07), and a Train run that ended with its last report
    still in the queue left the trial's actor blocked in Ray for good (the study hung)."""

    class InStepWithTune(report_callback):
        def after_report(self, run_context, metrics, checkpoint):
            super().after_report(run_context, metrics, checkpoint)
            try:
                while not self._training_actor_item_queue.empty():
                    time.sleep(0.01)
            except Exception:  # noqa: BLE001 - the trial (and its queue) is gone: Tune stopped it
                pass

    return InStepWithTune


def check_trials(study: Study) -> None:
    """Every grid point makes a valid run on its data (batch split, model vs data), checked before Ray
    starts; each distinct data config is loaded (and cached) once here."""
    infos = {}
    for point in grid_points(study) or [{}]:
        cfg = study.trial_config(point)
        validate(cfg)
        key = json.dumps(flatten(cfg.data), sort_keys=True, default=str)
        if key not in infos:
            infos[key] = training_data.prepare(load_from_config(cfg.data), cfg.data,
                                               model_spec(cfg.model.name).streams).info
        # the model against its data and this machine's memory (a cluster's nodes are not checked)
        check_model_memory(cfg, infos[key], 0 if cfg.scaling.address or os.environ.get("RAY_ADDRESS") else
                           cfg.scaling.workers)


def run_study(study: Study, resume: bool = False, verbose: bool = False, out=print) -> StudyResult:
    from ray import tune

    started = time.time()
    base = study.base_config
    uri = resolve_uri(base.tracking)
    check_reachable(uri)
    experiment_dir, _ = study_dirs(study)
    exists = tune.Tuner.can_restore(experiment_dir) if "://" not in experiment_dir else resume
    if resume and not exists:
        raise ConfigError(f"no study '{study.name}' to resume at {experiment_dir}; run it without --resume first")
    if not resume and Path(experiment_dir).exists():
        raise ConfigError(f"a study named '{study.name}' already exists at {experiment_dir}; continue it with "
                          f"--resume, or give the new one another name (study: in {study.path})")
    check_trials(study)

    parent = RunTracker(uri, base.tracking.experiment, study.name, base.tracking.root, {
        "study.file": str(study.path), "study.base": study.base, "study.metric": study.metric,
        "study.description": study.description[:500],
        "study.mode": study.mode, "study.samples": study.samples, "study.scheduler": json.dumps(study.scheduler),
        "study.parameters": json.dumps({p.key: {p.kind: list(p.values)} for p in study.parameters}),
        "study.report": json.dumps(study.report), "study.resources": json.dumps(study.resources)},
        tags={STUDY_TAG: study.name, RESUME_TAG: experiment_dir, "dgm.model": base.model.name,
              "dgm.dataset": base.data.dataset}, resume_key=experiment_dir)
    if out:
        again = " (resumed)" if parent.resumed else ""
        out(f"study {study.name}: {study.trials_planned()} trial(s) from {study.path}, {study.concurrent} at a "
            f"time, {study.scheduler['type']} on {study.metric} ({study.mode}); MLflow parent run "
            f"{parent.run_id}{again} at {uri}")
    tracking = TrialTracking(study, uri, parent.run_id, experiment_dir, json_mode=out is not print)
    interrupted = False
    with tracked_run(parent, "interrupted (SIGINT or SIGTERM); resume with --resume", sigterm="sigint",
                     before_end=tracking.close_open_runs) as outcome:
        with RaySession(base.scaling, verbose, resources={DRIVER_RESOURCE: 1000}, dashboard=True):
            grid = _tuner(study, tracking, resume, experiment_dir).fit()
        trials = collect_trials(uri, parent.run_id)
        # unfinished trials (neither terminated nor errored), or trials never created: Ctrl-C / SIGTERM
        interrupted = any(t["status"] == "RUNNING" or t.get("interrupted") for t in trials) or \
            len(grid) < study.trials_planned() or grid.num_terminated + grid.num_errors < len(grid)
        best = best_trial(trials, study) if trials else None
        if best:
            parent.client.log_batch(parent.run_id, metrics=_metrics({
                f"best_{k}": v for k, v in best["metrics"].items()       # the best trial's final figures
                if isinstance(v, (int, float)) and not k.startswith("best_")}))
            parent.set_tags({"dgm.best_trial": best["trial_id"], "dgm.best_run_id": best["run_id"],
                             "dgm.best_checkpoint": best.get("checkpoint") or ""})
        if interrupted:
            parent.set_tags({"dgm.stopped": "interrupted; resume with dgm-dist tune FILE --resume"})
        else:
            from dgm_dist.tuning.report import write_report

            write_report(study.name, uri, base.tracking.experiment, Path(base.tracking.root) / "studies", log=True)
            outcome.status = "FINISHED"
    return StudyResult(study.name, parent.run_id, uri, trials, best, interrupted, time.time() - started)


def _tuner(study: Study, tracking, resume: bool, experiment_dir: str):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")    # with verbose=0: no Tune tables, our lines only
    if not logging.getLogger("ray").isEnabledFor(logging.INFO):      # not --verbose: a failed trial is
        for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):   # one line of ours, no traceback
            logging.getLogger(name).setLevel(logging.CRITICAL)
    driver = {DRIVER_RESOURCE: 1} if ray.cluster_resources().get(DRIVER_RESOURCE) else {"CPU": 0.01}
    trainable = tune.with_resources(tune.with_parameters(run_trial, study=study), driver)
    if resume:
        return tune.Tuner.restore(experiment_dir, trainable=trainable, resume_unfinished=True, resume_errored=False)
    s = study.scheduler
    scheduler = ASHAScheduler(time_attr="epoch", max_t=s["max_epochs"], grace_period=s["grace_period"],
                              reduction_factor=s["reduction_factor"]) if s["type"] == "asha" else FIFOScheduler()
    return tune.Tuner(
        trainable, param_space=to_tune_space(study),
        tune_config=tune.TuneConfig(metric=study.metric, mode=study.mode, num_samples=study.samples,
                                    max_concurrent_trials=study.concurrent, scheduler=scheduler),
        run_config=tune.RunConfig(name=study.name, storage_path=str(Path(experiment_dir).parent)
                                  if "://" not in experiment_dir else experiment_dir.rsplit("/", 1)[0],
                                  callbacks=[tracking], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)))


def _metrics(values: dict[str, float]):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in sorted(values.items())]




class TrialTracking(Callback):
    """A Tune callback (in the study's driver): one MLflow child run per trial."""

    def __init__(self, study: Study, uri: str, parent_run_id: str, experiment_dir: str, json_mode: bool):
        import sys

        self.study, self.uri, self.parent_run_id = study, uri, parent_run_id
        self.experiment_dir, self.json_mode = experiment_dir, json_mode
        self.runs: dict[str, RunTracker] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.stopped: set[str] = set()                 # trials the scheduler stopped early
        stream = sys.stderr if json_mode else sys.stdout
        # a terminal gets one status table, redrawn in place; anything else the plain lines below
        self.table = StatusTable(study.name, study.metric, study.mode, study.max_epochs, study.scheduler["type"],
                                 study.trials_planned(), stream) if stream.isatty() else None

    def __getstate__(self):          # Tune pickles its callbacks with the experiment state
        return {**self.__dict__, "runs": {}, "last": {}, "table": None}

    def _say(self, line: str) -> None:
        import sys

        if self.table is None:
            print(line, file=sys.stderr if self.json_mode else sys.stdout, flush=True)

    def on_step(self, iteration, trials, **info):
        if self.table is not None:
            self.table.maybe_draw(trials, self.stopped)

    def on_experiment_end(self, trials, **info):
        if self.table is not None:
            self.table.draw(trials, self.stopped)

    def _run(self, trial) -> RunTracker:
        if trial.trial_id not in self.runs:
            cfg = self.study.trial_config(trial.config["params"])
            params = flatten(cfg)
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in trial.config["params"].items())
            self.runs[trial.trial_id] = RunTracker(
                self.uri, cfg.tracking.experiment, f"{self.study.name}-{trial.trial_id}", cfg.tracking.root, params,
                tags={PARENT_TAG: self.parent_run_id, STUDY_TAG: self.study.name, TRIAL_TAG: trial.trial_id,
                      "dgm.trial_params": json.dumps(trial.config["params"], default=str), "dgm.trial_label": label,
                      "dgm.model": cfg.model.name, "dgm.dataset": cfg.data.dataset,
                      RESUME_TAG: f"{self.experiment_dir}#{trial.trial_id}"},
                resume_key=f"{self.experiment_dir}#{trial.trial_id}")
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        run = self._run(trial)
        if run.resumed:
            run.set_tags({"dgm.stopped": ""})
        self._say(f"trial {trial.trial_id} started: {', '.join(f'{k}={v}' for k, v in trial.config['params'].items())}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" not in result:
            return
        run = self._run(trial)
        metrics = {k: v for k, v in result.items() if k not in ("first_step_at", "timestamp", "time_this_iter_s")
                   and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and not k.startswith(("time_", "iterations_", "training_iteration", "pid", "done"))}
        run.log_epoch(int(result["epoch"]), metrics)
        self.last[trial.trial_id] = result
        shown = self.study.metric
        self._say(f"trial {trial.trial_id} epoch {int(result['epoch'])}: {shown} {figure(shown, result.get(shown))}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        run = self._run(trial)
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        epoch = int(result.get("epoch", 0))
        tags = {"dgm.checkpoint": str(result.get("checkpoint_path", "")), "dgm.epochs": str(epoch)}
        if epoch < self.study.max_epochs and not result.get("stopped_early") and not result.get("stopped_at_budget"):
            tags["dgm.stopped_by"] = f"{self.study.scheduler['type']} scheduler after epoch {epoch}"
            self.stopped.add(trial.trial_id)
        run.set_tags(tags)
        run.end("FINISHED")
        self.runs.pop(trial.trial_id)
        self._say(f"trial {trial.trial_id} finished after epoch {epoch}" +
                  (f" ({tags['dgm.stopped_by']})" if "dgm.stopped_by" in tags else ""))

    def on_trial_error(self, iteration, trials, trial, **info):
        run = self._run(trial)
        reason = _trial_error(trial)
        run.set_tags({"dgm.error": reason[:5000]})
        run.end("FAILED")
        self.runs.pop(trial.trial_id)
        self._say(f"trial {trial.trial_id} FAILED: {reason.splitlines()[-1] if reason else '?'}")

    def close_open_runs(self) -> None:
        """Trials still running when the study stopped (interrupted): FAILED, tagged; `--resume`
        reopens and continues them."""
        for run in self.runs.values():
            run.set_tags({"dgm.stopped": "interrupted; the study can be resumed"})
            run.end("FAILED")
        self.runs.clear()


def _trial_error(trial) -> str:
    """The trial's own error message (a `DgmError` such as a divergence) from the error Tune saved
    beside the trial, else the last line of its traceback."""
    import ray.cloudpickle as cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # noqa: BLE001 - not written, or not unpicklable here: fall back to the text file
        error = None
    cause = error
    while cause is not None and not isinstance(cause, DgmError):
        cause = getattr(cause, "cause", None) or cause.__cause__
    if cause is not None:
        return str(cause).strip()
    try:
        text = Path(trial.error_file).read_text().strip()
    except (OSError, TypeError):
        return "the trial failed (no error recorded)"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "the trial failed (no error recorded)"


def collect_trials(uri: str, parent_run_id: str) -> list[dict[str, Any]]:
    """Every child run of a study: its trial id, parameters, status, last metrics, checkpoint."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              max_results=10_000, order_by=["attributes.start_time ASC"])
    out = []
    for r in runs:
        tags = r.data.tags
        out.append({"trial_id": tags.get(TRIAL_TAG), "run_id": r.info.run_id, "status": r.info.status,
                    "params": json.loads(tags.get("dgm.trial_params", "{}")), "metrics": dict(r.data.metrics),
                    "checkpoint": tags.get("dgm.checkpoint") or None, "stopped_by": tags.get("dgm.stopped_by"),
                    "error": tags.get("dgm.error"), "interrupted": bool(tags.get("dgm.stopped"))})
    return out


def best_trial(trials: list[dict[str, Any]], study_or_metric, mode: str | None = None) -> dict[str, Any] | None:
    """The finished trial with the best final value of the study's metric."""
    metric = study_or_metric if isinstance(study_or_metric, str) else study_or_metric.metric
    mode = mode or study_or_metric.mode
    done = [t for t in trials if t["status"] == "FINISHED" and isinstance(t["metrics"].get(metric), float)]
    if not done:
        return None
    pick = min if mode == "min" else max
    return pick(done, key=lambda t: t["metrics"][metric])
