"""No run left RUNNING (dgm_dist/orphans.py): a SIGKILLed driver's run is ended as KILLED, with a
note, by the next command that opens the experiment; a run whose driver is alive is left alone."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from formats import write_mnist_dir
from mlflow import MlflowClient

from dgm_dist import orphans

pytestmark = pytest.mark.slow      # two training subprocesses (no Ray), about a minute


def _train(data, root, name, epochs):
    return [sys.executable, "-m", "dgm_dist.cli", "train", "mlp", "--workers", "0", "--data-dir", str(data),
            "--run-name", name, "--set", "data.dataset=mnist", "--set", "data.validation=100",
            "--set", "model.hidden=8", "--set", f"optim.epochs={epochs}", "--set", f"tracking.root={root}"]


def root_exists(client) -> bool:
    return os.path.exists(client.tracking_uri.removeprefix("sqlite:///"))


def _running(client, name, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        experiments = [e.experiment_id for e in client.search_experiments()] if (root_exists(client)) else []
        runs = client.search_runs(experiments, f"attributes.run_name = '{name}'") if experiments else []
        if runs and runs[0].info.status == "RUNNING":
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"run {name} never RUNNING")


def test_a_sigkilled_drivers_run_is_ended_by_the_next_command_and_a_live_one_is_not(tmp_path):
    data = write_mnist_dir(tmp_path / "mnist", n_train=300, n_test=50)
    root = tmp_path / "runs"
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    doomed = subprocess.Popen(_train(data, root, "doomed", 100000), stderr=subprocess.PIPE, text=True)
    alive = None
    try:
        run = _running(client, "doomed", doomed)
        assert run.data.tags[orphans.DRIVER_TAG].split()[1] == str(doomed.pid)
        alive = subprocess.Popen(_train(data, root, "alive", 100000), stderr=subprocess.PIPE, text=True)
        live = _running(client, "alive", alive)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        assert client.get_run(run.info.run_id).info.status == "RUNNING"         # what a SIGKILL leaves
        # any command that opens the experiment: here a short run of its own
        done = subprocess.run([*_train(data, root, "next", 1), "--json"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert run.info.run_id in " ".join(json.loads(done.stdout)["tracking_notices"])   # it says so
        ended = client.get_run(run.info.run_id)
        assert ended.info.status == "KILLED"
        assert f"pid {doomed.pid}" in ended.data.tags[orphans.ORPHANED_TAG]
        assert client.get_run(live.info.run_id).info.status == "RUNNING"         # the control: left alone
        # on demand, with nothing left to end
        again = subprocess.run([sys.executable, "-m", "dgm_dist.cli", "runs", "orphans", "--set",
                                f"tracking.root={root}", "--json"], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and json.loads(again.stdout)["ended"] == {}, again.stderr
    finally:
        for proc in (doomed, alive):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_reused_pid_is_not_mistaken_for_the_driver():
    me = orphans.driver_tag()
    assert not orphans.is_orphan(me)                                   # this process is alive
    host, pid, ident = me.split(" ", 2)
    assert orphans.is_orphan(f"{host} {pid} {ident}0")                 # same pid, another process
    assert not orphans.is_orphan(f"another-host {pid} x:1")            # not judged from here
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert orphans.is_orphan(f"{host} {gone.pid} x:1") or os.path.exists(f"/proc/{gone.pid}")
