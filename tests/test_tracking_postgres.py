"""Tracking that outlives its server (docs/cluster.md, *Tracking that outlives the cluster*): MLflow
with a PostgreSQL backend store — a real PostgreSQL server started here on 127.0.0.1 (Debian's
`postgresql` package; `make test` installs it as root) — keeps a training run, a study with its child
runs and a registered model with its `champion` alias across a restart of the MLflow server."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from formats import write_mnist_dir
from test_tune import study_file

from dgm_dist.cli import main

pytestmark = pytest.mark.slow      # starts Ray, Tune, exports or benchmarks: not in `make test-fast`


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or ([shutil.which(name)] if shutil.which(name)
                                                                        else [])
    if not found:
        pytest.fail("PostgreSQL's server binaries are missing: apt-get install postgresql (make test does, as root)")
    return found[-1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own: a fresh data directory, 127.0.0.1 and a free port only, trust
    authentication (nothing else can reach it), run as `postgres` when the tests run as root
    (PostgreSQL refuses root)."""
    # not under pytest's 0700 temporary root: the `postgres` user must be able to reach it
    base = Path(tempfile.mkdtemp(prefix="dgm-pg-"))
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    port = _port()
    subprocess.run([*as_user, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    started = subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                              f"-h 127.0.0.1 -p {port} -k {sockets}", "start"], capture_output=True, text=True,
                             timeout=120)
    assert started.returncode == 0, started.stderr + (base / "log").read_text()
    try:
        subprocess.run([*as_user, _pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"      # psycopg2: the postgres extra
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _mlflow_server(backend: str, artifacts: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend,
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the MLflow server did not start in 120 s")


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_runs_a_study_and_the_champion_survive_a_restart_of_the_server(postgres, tmp_path, capsys):
    port = _port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(postgres, tmp_path / "artifacts", port)
    data = write_mnist_dir(tmp_path / "mnist", n_train=300, n_test=80)
    track = ["--set", f"tracking.root={tmp_path / 'runs'}", "--set", f"tracking.tracking_uri={uri}"]
    try:
        assert main(["train", "mlp", "--dataset", "mnist", "--data-dir", str(data), "--workers", "0", "--epochs", "1",
                     "--run-name", "durable", "--set", "data.validation=100", "--set", "model.hidden=16",
                     "--set", "data.binarize=none", *track, "--json"]) == 0
        trained = json.loads(capsys.readouterr().out)
        study = study_file(tmp_path, "durable-study", data, {"optim.lr": {"grid": [0.01, 0.001]}}, {"type": "fifo"},
                           epochs=1)
        assert main(["tune", str(study), *track, "--json"]) == 0
        tuned = json.loads(capsys.readouterr().out)
        assert main(["export", "durable", "--name", "durable-mlp", "--data-dir", str(data), *track, "--json"]) == 0
        exported = json.loads(capsys.readouterr().out)
    finally:
        _stop(server)
    server = _mlflow_server(postgres, tmp_path / "artifacts", port)        # the same store, a new server
    try:
        client = mlflow.MlflowClient(uri)
        run = client.get_run(trained["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.metrics["test_error"] == trained["test_error"]
        parent = client.get_run(tuned["parent_run_id"])
        children = client.search_runs([parent.info.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{tuned['parent_run_id']}'")
        assert parent.info.status == "FINISHED" and len(children) == 2
        assert {r.info.status for r in children} == {"FINISHED"}
        champion = client.get_model_version_by_alias("durable-mlp", "champion")
        assert str(champion.version) == exported["registered"][0]["version"] == "1"
    finally:
        _stop(server)
