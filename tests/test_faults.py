"""Fault drills: the MLflow server stops mid-run (stopped, then back; or gone for good), the training
driver is SIGKILLed while it writes a checkpoint, and the Tune driver is SIGKILLed mid-study. (A
SIGKILLed rank 0 of a 2-worker run is drilled in test_train_ray.py.)"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from formats import write_mnist_dir

from dgm_dist.config import load_config
from dgm_dist.training import state
from dgm_dist.training.launcher import train

# slow: not in `make test-fast`; one xdist group: the module's MLflow server is started once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults")]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (sqlite backend, no job runner)."""
    root = tmp_path_factory.mktemp("server")
    port = _port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the MLflow server did not start in 120 s")
    yield uri, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mnist_dir(tmp_path_factory.mktemp("data") / "mnist", n_train=400, n_test=100)


def _cfg(root, data_dir, uri, epochs=6):
    return load_config(None, overrides=[
        "model.name=mlp", "data.dataset=mnist", f"data.data_dir={data_dir}", "data.validation=100",
        "model.hidden=16", "optim.batch_size=50", f"optim.epochs={epochs}", "scaling.workers=0",
        f"tracking.root={root}", f"tracking.tracking_uri={uri}"])


def _on_epoch(actions: dict[int, callable], lines: list[str]):
    def out(line: str) -> None:
        lines.append(line)
        for epoch in list(actions):
            if line.startswith(f"epoch {epoch}/"):
                actions.pop(epoch)()
    return out


def _every_metric_and_artifact_logged(client, run_id, history):
    """Every numeric metric of every epoch the run saw is in MLflow with its value, and so are the
    learning curve and the final checkpoint."""
    for report in history:
        for key, value in report.items():      # first_step_at: a wall-clock stamp the monitor keeps, not logged
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "first_step_at":
                logged = {m.step: m.value for m in client.get_metric_history(run_id, key)}
                assert logged.get(report["epoch"]) == pytest.approx(value, rel=1e-6), (key, report["epoch"])
    artifacts = {a.path for a in client.list_artifacts(run_id)} | \
        {a.path for a in client.list_artifacts(run_id, "checkpoint")}
    assert {"learning_curve.png", "checkpoint/state.pt"} <= artifacts, artifacts


def test_training_goes_on_while_the_mlflow_server_is_stopped_and_logs_everything_after(
        server, data_dir, tmp_path, monkeypatch):
    uri, proc = server
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")     # a stopped server: fail in seconds
    lines: list[str] = []
    out = _on_epoch({2: lambda: os.killpg(proc.pid, signal.SIGSTOP),
                     5: lambda: os.killpg(proc.pid, signal.SIGCONT)}, lines)
    result = train(_cfg(tmp_path, data_dir, uri), run_name="outage", out=out)
    assert result.metrics["epoch"] == 6
    said = "\n".join(lines)
    assert f"MLflow at {uri} failed" in said and "training goes on" in said
    assert f"MLflow at {uri} is back" in said
    client = mlflow.MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "train_loss")] == [1, 2, 3, 4, 5, 6]
    _every_metric_and_artifact_logged(client, result.mlflow_run_id, result.history)
    assert run.data.tags.get("dgm.checkpoint") == result.checkpoint
    assert result.mlflow_fallback_run_id is None


def test_a_server_that_never_returns_leaves_the_run_in_the_local_store(server, data_dir, tmp_path, monkeypatch):
    uri, proc = server
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    lines: list[str] = []

    def kill():
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result = train(_cfg(tmp_path, data_dir, uri, epochs=4), run_name="gone", out=_on_epoch({2: kill}, lines))
    assert result.metrics["epoch"] == 4
    local = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert any(f"written to the local store {local}" in line for line in lines)
    client = mlflow.MlflowClient(local)
    run = client.get_run(result.mlflow_fallback_run_id)
    assert run.info.status == "FINISHED" and run.data.params["optim.epochs"] == "4"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3, 4]
    # the artifacts logged while the server was away (the end of the run) reach the fallback run
    _every_metric_and_artifact_logged(client, run.info.run_id, result.history)
    assert run.data.tags["dgm.tracking_fallback"].startswith(f"{uri} unreachable")
    assert not any((tmp_path / "mlflow-spool").rglob("*.png"))              # the spool is emptied


def test_a_sigkilled_tune_driver_resumes_without_rerunning_finished_trials(tmp_path, data_dir, capsys):
    from test_tune import children, study_file

    from dgm_dist.cli import main

    root = tmp_path / "runs"
    # two trials: one finished, one killed after its first epoch (a third would only add time)
    path = study_file(tmp_path, "killed", data_dir, {"optim.lr": {"grid": [0.01, 0.003]}}, {"type": "fifo"},
                      epochs=2, concurrent=1)
    proc = subprocess.Popen([sys.executable, "-m", "dgm_dist.cli", "tune", str(path), "--set", f"tracking.root={root}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
                            start_new_session=True)
    first = second = None
    try:
        for line in proc.stdout:
            if " finished after epoch" in line:            # one trial done
                first = line.split()[1]
            elif first and line.startswith("trial ") and " epoch 1:" in line:
                # the next trial has its epoch-1 checkpoint: the driver dies without a word
                second = line.split()[1]
                os.killpg(proc.pid, signal.SIGKILL)         # the driver and the Ray it started
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert first and second and proc.returncode == -signal.SIGKILL
    trial_dir = next((root / "ray" / "killed.trials").glob(f"trial-{first}"))
    checkpoints = {p: p.stat().st_mtime_ns for p in trial_dir.rglob("state.pt")}

    assert main(["tune", str(path), "--resume", "--set", f"tracking.root={root}", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    # the finished trial trains no epoch again: Tune either recorded it as done (then it is not
    # started) or had not (then it starts, finds its final checkpoint and reports that result)
    assert f"trial {first} epoch 1:" not in captured.err          # (its final checkpoint is untouched: below)
    # the unfinished trial continues from its last checkpoint: epoch 2 runs, epoch 1 does not again
    assert f"trial {second} epoch 1:" not in captured.err and f"trial {second} epoch 2:" in captured.err
    final = max(checkpoints)                                                  # the trial's last checkpoint, untouched
    assert final.stat().st_mtime_ns == checkpoints[final]
    client, runs = children(root, summary["parent_run_id"])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:                                                            # each epoch logged once
        assert [m.step for m in client.get_metric_history(r.info.run_id, "epoch")] == [1, 2]
        assert Path(r.data.tags["dgm.checkpoint"], "state.pt").exists()
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"


KILL_MID_WRITE = """
import io, os, signal, sys
import torch
real, calls = torch.save, []
def save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2 and hasattr(f, "write"):   # the second checkpoint: half of it, then the driver dies
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)
torch.save = save
from dgm_dist.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_driver_sigkilled_while_writing_a_checkpoint_resumes_by_name_bitwise(tmp_path, data_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    whole = train(_cfg(tmp_path, data_dir, uri, epochs=3), run_name="whole", out=None)
    args = ["train", "mlp", "--workers", "0", "--run-name", "parts", "--data-dir", str(data_dir),
            *(a for o in ("data.dataset=mnist", "data.validation=100", "model.hidden=16", "optim.batch_size=50",
                          "optim.epochs=3", f"tracking.root={tmp_path}", f"tracking.tracking_uri={uri}")
              for a in ("--set", o))]
    killed = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, *args], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    parts = Path(whole.storage_path) / "parts"
    assert list(parts.glob("checkpoint_epoch=*/.state.pt.*.tmp")), "the driver died mid-write"     # half a file
    assert len(list(parts.glob("checkpoint_epoch=*/state.pt"))) == 1                            # epoch 1's only
    resumed = train(_cfg(tmp_path, data_dir, uri, epochs=3), run_name="parts", out=None)
    assert [h["epoch"] for h in resumed.history] == [2, 3]          # epoch 1 came from its checkpoint
    a, b = state.load(whole.checkpoint), state.load(resumed.checkpoint)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    timing = ("epoch_seconds", "throughput", "first_step_at")
    assert {k: v for k, v in whole.metrics.items() if k not in timing} == \
        {k: v for k, v in resumed.metrics.items() if k not in timing}
    client = mlflow.MlflowClient(uri)
    assert client.get_run(resumed.mlflow_run_id).info.status == "FINISHED"
