"""`dgm-dist tune`: real Ray Tune over Ray Train on a local Ray, real MLflow on sqlite, tiny data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from formats import write_mnist_dir

from dgm_dist.cli import main
from dgm_dist.training import state
from dgm_dist.tuning.study import TrialTracking

pytestmark = pytest.mark.slow      # starts Ray, Tune, exports or benchmarks: not in `make test-fast`


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mnist_dir(tmp_path_factory.mktemp("data") / "mnist", n_train=600, n_test=130)


def study_file(tmp_path, name, data_dir, parameters, scheduler, epochs=3, concurrent=2, **more) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**more,
        "study": name, "base": "mlp", "description": f"what {name} can show",
        "set": {"data.dataset": "mnist", "data.data_dir": str(data_dir), "data.validation": 100,
                "model.hidden": [16], "optim.batch_size": 50, "optim.epochs": epochs},
        "parameters": parameters, "scheduler": scheduler, "concurrent": concurrent,
        "resources": {"workers": 1, "cpus_per_worker": 1}}))
    return path


def children(root, parent_run_id):
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    parent = client.get_run(parent_run_id)
    return client, client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def test_an_asha_study_logs_a_parent_and_finished_children_and_picks_the_best(tmp_path, data_dir, capsys,
                                                                               monkeypatch):
    root = tmp_path / "runs"
    # on the validation NLL after epoch 1 (deterministic; the error of 100 images is not): lr 0.03
    # 2.34, 0.003 2.25, 1e-7 2.32 nats. Trials 0 and 1 reach rung 1 first, in either order, and
    # trial 2 (lr 1e-7) after them: ASHA stops trial 0 (after 1) or trial 2 (after 0 and 1)
    path = study_file(tmp_path, "three", data_dir, {"optim.lr": {"grid": [0.03, 0.003, 1e-7]}},
                      {"type": "asha", "grace_period": 1, "reduction_factor": 2}, metric="valid_nll", mode="min")
    # a slow driver (a busy machine, a remote MLflow): Tune decides on epoch 1 while Train goes on
    # training. Without Train in step with Tune (docs/tuning.md), the stopped trial's checkpoint of
    # epoch 1 was gone (Train had saved two newer ones and kept two: the CI failure of 2026-12-07),
    # and a trial whose Train finished before Tune took its last report hung the study in Ray
    slow = TrialTracking.on_trial_result
    monkeypatch.setattr(TrialTracking, "on_trial_result", lambda *a, **k: (time.sleep(2), slow(*a, **k)))
    assert main(["tune", str(path), "--set", f"tracking.root={root}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    client, runs = children(root, summary["parent_run_id"])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    stopped = [r for r in runs if r.data.tags.get("dgm.stopped_by")]
    assert stopped and all(int(r.data.metrics["epoch"]) == 1 for r in stopped)
    for r in runs:                     # every trial's checkpoint is there, and is the epoch Tune saw
        saved = state.load(Path(r.data.tags["dgm.checkpoint"]))
        assert saved["extra"]["metrics"]["epoch"] == r.data.metrics["epoch"]
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"
    final = {r.data.tags["dgm.trial_id"]: r.data.metrics["valid_nll"] for r in runs}
    assert summary["best"]["trial_id"] == min(final, key=final.get)
    assert all(float(r.data.params["optim.lr"]) in (0.03, 0.003, 1e-7) for r in runs)    # whole config as params
    assert all(len(client.get_metric_history(r.info.run_id, "epoch")) == int(r.data.metrics["epoch"]) for r in runs)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.metrics["best_valid_nll"] == min(final.values())
    assert Path(parent.data.tags["dgm.best_checkpoint"], "state.pt").exists()
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {"report/report.md",
                                                                                    "report/report.png"}
    # the report again, on demand: the table names every trial and marks the best
    assert main(["tune", "report", "three", "--set", f"tracking.root={root}"]) == 0
    table = capsys.readouterr().out
    assert all(t in table for t in final) and f"`{summary['best']['trial_id']}` **best**" in table
    assert "what three can show" in table                                   # the study file's description
    # `export --study` takes the study's best trial and registers it
    assert main(["export", "--study", "three", "--set", f"tracking.root={root}", "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["checkpoint"] == parent.data.tags["dgm.best_checkpoint"]
    assert exported["source"]["study"] == "three" and exported["source"]["mlflow_run_id"] == summary["best"]["run_id"]
    assert exported["registered"][0]["champion"] and exported["registered"][0]["registered_model"] == "dgm-mlp-mnist"


def test_a_diverging_trial_fails_and_the_study_goes_on(tmp_path, data_dir, capsys):
    root = tmp_path / "runs"
    path = study_file(tmp_path, "nan", data_dir, {"optim.lr": {"grid": [1e-3, 1e30]}}, {"type": "fifo"}, epochs=1)
    assert main(["tune", str(path), "--set", f"tracking.root={root}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    _, runs = children(root, summary["parent_run_id"])
    status = {float(r.data.params["optim.lr"]): (r.info.status, r.data.tags.get("dgm.error", "")) for r in runs}
    assert status[1e-3] == ("FINISHED", "")
    assert status[1e30][0] == "FAILED" and "non-finite loss at epoch 1" in status[1e30][1]
    assert summary["best"]["params"] == {"optim.lr": 0.001}


def test_an_interrupted_study_resumes_without_rerunning_finished_trials(tmp_path, data_dir, capsys):
    root = tmp_path / "runs"
    # two trials: one finished before the interrupt, one not (a third would only add time)
    path = study_file(tmp_path, "resume", data_dir, {"optim.lr": {"grid": [0.01, 0.003]}}, {"type": "fifo"},
                      epochs=2, concurrent=1)
    proc = subprocess.Popen([sys.executable, "-m", "dgm_dist.cli", "tune", str(path), "--set", f"tracking.root={root}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    before = []
    try:
        for line in proc.stdout:
            before.append(line)
            if " finished after epoch" in line:          # the first trial is done: stop the study
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "--resume" in rest and "Traceback" not in rest
    first = next(line.split()[1] for line in before if " finished after epoch" in line)
    trial_dir = next((root / "ray" / "resume.trials").glob(f"trial-{first}"))
    checkpoints = {p: p.stat().st_mtime_ns for p in trial_dir.rglob("state.pt")}
    assert checkpoints

    assert main(["tune", str(path), "--resume", "--set", f"tracking.root={root}", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert f"trial {first} started" not in captured.err                      # not re-run
    assert {p: p.stat().st_mtime_ns for p in trial_dir.rglob("state.pt")} == checkpoints
    client, runs = children(root, summary["parent_run_id"])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:                                                            # each epoch logged once
        assert [m.step for m in client.get_metric_history(r.info.run_id, "epoch")] == [1, 2]
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"
