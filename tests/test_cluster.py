"""The cluster side: cluster.yaml against Ray's own schema (offline), the `ray submit` entry script,
and DDP across two Ray nodes (two raylets on localhost)."""

import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomllib
import yaml
from drivers import stop, trains
from formats import write_mnist_dir

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted(p for p in ROOT.glob("*.yaml"))        # cluster.yaml and any other launcher config at the top


def validate(raw: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(raw))           # merges the provider's defaults, as `ray up` does
    validate_config(cfg)                               # Ray's ray-schema.json + head/worker checks
    return cfg


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_cluster_yaml_passes_rays_own_schema_offline(path):
    cfg = validate(yaml.safe_load(path.read_text()))
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_cluster_yaml_is_the_gpu_cluster_the_readme_describes():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert raw["provider"]["type"] == "aws" and raw["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    workers = [t for n, t in raw["available_node_types"].items() if n != raw["head_node_type"]]
    assert len(workers) == 1 and workers[0]["min_workers"] == 0 and workers[0]["resources"]["GPU"] == 1
    assert raw["available_node_types"][raw["head_node_type"]]["resources"]["GPU"] == 0
    setup = "\n".join(raw["setup_commands"])
    assert "pip install -q -e \"$HOME/dgm-dist[gpu,postgres]\"" in setup and "torch==2.13.0" in setup
    assert "DGM_STORAGE_PATH=s3://" in setup                                  # shared storage for Train/Tune
    text = (ROOT / "cluster.yaml").read_text()
    head = "\n".join(raw["head_start_ray_commands"])
    assert "mlflow server --host 127.0.0.1 " in head and "0.0.0.0" not in text   # the head's loopback only
    assert "MLFLOW_TRACKING_URI=${DGM_TRACKING_URI:-http://127.0.0.1:5000}" in head
    assert "dashboard-host" not in text                                        # the dashboard stays on 127.0.0.1
    for secret in ("aws_access_key_id", "aws_secret_access_key", "AKIA", "password", "token:"):
        assert secret.lower() not in text.lower()


def test_the_tracking_backend_comes_from_the_users_file():
    """The user's ~/.dgm-dist/tracking.env names the backend store (PostgreSQL: it outlives the
    cluster) or an MLflow server of theirs; empty, the head's sqlite (which `ray down` deletes)."""
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert raw["file_mounts"]["~/.dgm-dist/tracking.env"] == "~/.dgm-dist/tracking.env"
    head = "\n".join(raw["head_start_ray_commands"])
    assert '--backend-store-uri "${DGM_MLFLOW_BACKEND:-sqlite:///$HOME/mlflow/mlflow.db}"' in head
    assert '[ -n "$DGM_TRACKING_URI" ] ||' in head                   # an external server: none on the head
    assert "set -a; . ~/.dgm-dist/tracking.env; set +a" in "\n".join(raw["setup_commands"])   # every shell
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["postgres"] == ["psycopg2-binary==2.9.13"]


def test_every_node_runs_ray_with_token_authentication_and_the_users_token():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"     # from the user's machine
    assert "chmod 600 ~/.ray/auth_token ~/.dgm-dist/tracking.env" in raw["setup_commands"]
    assert "export RAY_AUTH_MODE=token" in "\n".join(raw["setup_commands"])   # every shell: submit.py, ray CLI
    for starts in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        start = next(c for c in starts if "ray start" in c)
        assert "export RAY_AUTH_MODE=token;" in start
    assert "disabled" not in (ROOT / "cluster.yaml").read_text()


def test_the_validator_rejects_a_misspelled_key_and_a_fractional_resource():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    typo = copy.deepcopy(raw)
    typo["available_node_types"]["gpu_worker"]["min_wokers"] = 0
    with pytest.raises(Exception, match="min_wokers"):
        validate(typo)
    fraction = copy.deepcopy(raw)
    fraction["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(Exception, match="is not of type 'integer'"):
        validate(fraction)


def test_submit_runs_dgm_dist_where_it_is_installed():
    done = subprocess.run([sys.executable, str(ROOT / "submit.py"), "--version"], capture_output=True, text=True,
                          cwd="/", timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("dgm-dist ")


def test_submit_finds_the_source_tree_where_it_is_not_installed(tmp_path):
    """`python -S`: no site-packages, so no installed dgm_dist (what a bare node sees)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DGM_PY_MODULES")}
    script = tmp_path / "submit.py"                           # ray submit copies the file alone
    script.write_text((ROOT / "submit.py").read_text())
    found = subprocess.run([sys.executable, "-S", str(script), "--version"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=60, env={**env, "DGM_PROJECT_DIR": str(ROOT)})
    assert found.returncode == 0 and found.stdout.startswith("dgm-dist "), found.stderr
    missing = subprocess.run([sys.executable, "-S", str(script), "--version"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=60, env={**env, "DGM_PROJECT_DIR": str(tmp_path / "none")})
    assert missing.returncode == 2 and "dgm-dist is not installed on this node" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


# ---- two Ray nodes on one machine -----------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ray(*args, env):
    ray = Path(sys.executable).with_name("ray")
    return subprocess.run([str(ray), *args], capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture
def two_nodes(tmp_path):
    """A head and a second raylet, 1 CPU each, each with a custom resource naming it."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port = _port()
    head = _ray("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                "--resources={\"node_a\": 1}", "--include-dashboard=false", f"--dashboard-port={_port()}",
                "--disable-usage-stats", env=env)       # not Ray's default port: see users_ray below
    assert head.returncode == 0, head.stderr
    try:
        worker = _ray("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                      "--resources={\"node_b\": 1}", "--disable-usage-stats", env=env)
        assert worker.returncode == 0, worker.stderr
        yield f"127.0.0.1:{port}", env
    finally:
        _stop(port)


def _stop(port: int) -> None:
    """Stop this cluster's processes only (`ray stop` would stop every Ray of the user's)."""
    import psutil

    def ours(p) -> bool:
        args = p.info["cmdline"] or []
        return any(a.endswith((f":{port}", f"_port={port}")) for a in args)     # its GCS address or port
    procs = [p for p in psutil.process_iter(["cmdline"]) if ours(p)]
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()
    # `ray start` recorded this cluster as the machine's current one; a later bare ray.init() would
    # try to join it (what `ray stop` cleans up)
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip().endswith(f":{port}"):
        current.unlink()


@pytest.mark.slow
def test_ddp_across_two_nodes_matches_a_single_node_run(two_nodes, tmp_path):
    address, env = two_nodes
    data = write_mnist_dir(tmp_path / "mnist", n_train=400, n_test=100)
    args = ["train", "mlp", "--dataset", "mnist", "--data-dir", str(data), "--workers", "2", "--epochs", "2",
            "--set", "data.validation=100", "--set", "model.hidden=16", "--set", "optim.batch_size=50", "--json"]

    def train(*extra, where):
        done = subprocess.run([sys.executable, "-m", "dgm_dist.cli", *args, *extra,
                               "--set", f"tracking.root={tmp_path / where}"],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    # two 1-CPU workers on two 1-CPU nodes, strictly spread: one worker on each raylet
    spread = train("--address", address, "--set", "scaling.placement_strategy=STRICT_SPREAD", where="two")
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
    assert len(nodes) == 2 and all(n["Resources"]["CPU"] == 1 for n in nodes)
    assert {r for n in nodes for r in n["Resources"]} >= {"node_a", "node_b"}
    single = train(where="one")                                   # the embedded single-node Ray
    for k in ("test_error", "test_nll", "valid_error", "valid_nll", "train_loss"):
        assert spread["metrics"][k] == pytest.approx(single["metrics"][k], rel=1e-6), k


# ---- another Ray on the same machine (docs/training.md, two Rays on one machine) ---------------------
@pytest.fixture
def users_ray():
    """`start()` starts the user's own `ray start --head` on this machine, its dashboard where Ray
    puts it by default (port 8265; on 127.0.0.1 here), and returns once the dashboard serves."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port, started = _port(), []

    def start():
        assert not _listening(8265), "port 8265 is taken: this test needs it free"
        head = _ray("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-agent-listen-port={_port()}", "--disable-usage-stats", env=env)
        started.append(port)
        assert head.returncode == 0, head.stderr
        deadline = time.time() + 90
        while not _listening(8265):
            assert time.time() < deadline, "the dashboard of `ray start` did not come up on 8265 in 90 s"
            time.sleep(1)

    yield env, start
    if started:
        _stop(port)


@pytest.mark.slow
def test_an_embedded_run_beside_another_rays_dashboard_keeps_its_workers(users_ray, tmp_path):
    # Ray Train's placement-group cleaner asks the dashboard address our GCS records whether our
    # controller lives. With Ray's default port, free when our Ray started, another Ray's dashboard
    # that took the port later answered "not found", and the cleaner removed the live run's workers
    # ("its placement group was removed"): a CI run of bench/host_sync.py beside a Tune test
    import psutil

    env, start_users_ray = users_ray
    data = write_mnist_dir(tmp_path / "mnist", n_train=400, n_test=100)
    with open(tmp_path / "log", "w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dgm_dist.cli", "train", "mlp", "--dataset", "mnist", "--data-dir", str(data),
             "--workers", "2", "--epochs", "100000", "--set", "data.validation=100", "--set", "model.hidden=16",
             "--set", "optim.batch_size=50", "--set", f"tracking.root={tmp_path}"],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        try:
            deadline = time.time() + 180
            while not trains(psutil.Process(proc.pid)):
                assert proc.poll() is None, out.seek(0) or out.read()[-3000:]
                assert time.time() < deadline, "no Ray Train worker within 3 minutes"
                time.sleep(1)
            start_users_ray()                       # while our workers train
            time.sleep(20)                          # the cleaner asks every second
            alive = proc.poll() is None
        finally:
            if proc.poll() is None:                 # the run would train on
                stop(proc)
        out.seek(0)
        log = out.read()
    assert alive, log[-3000:]
    assert "placement group was removed" not in log and "epoch" in log, log[-3000:]


# ---- Ray Jobs: the second way in (docs/cluster.md) ----------------------------------------------------
@pytest.fixture
def jobs_cluster(tmp_path):
    """A head with the dashboard (Ray's job server) on 127.0.0.1 and a second raylet, 1 CPU each."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port, dashboard = _port(), _port()
    head = _ray("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                f"--dashboard-agent-listen-port={_port()}", "--disable-usage-stats", env=env)
    assert head.returncode == 0, head.stderr
    try:
        worker = _ray("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                      f"--dashboard-agent-listen-port={_port()}", "--disable-usage-stats", env=env)
        assert worker.returncode == 0, worker.stderr
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop(port)


@pytest.mark.slow
def test_a_ray_job_trains_on_the_cluster_and_is_tracked(jobs_cluster, tmp_path):
    import mlflow

    url, env = jobs_cluster
    data = write_mnist_dir(tmp_path / "mnist", n_train=300, n_test=80)
    root = tmp_path / "runs"
    entry = [sys.executable, "-m", "dgm_dist.cli", "train", "mlp", "--dataset", "mnist", "--data-dir", str(data),
             "--workers", "1", "--epochs", "1", "--run-name", "from-a-job", "--set", "data.validation=100",
             "--set", "model.hidden=16", "--set", f"tracking.root={root}"]
    deadline = time.time() + 90                 # the job server starts with the dashboard, a little after `ray start`
    while True:
        submitted = _ray("job", "submit", "--address", url, "--submission-id", "dgm-job-1", "--no-wait", "--",
                         *entry, env=env)
        if submitted.returncode == 0 or time.time() > deadline or "already exists" in submitted.stderr:
            break
        time.sleep(3)
    assert submitted.returncode == 0, submitted.stderr
    logs = _ray("job", "logs", "--address", url, "--follow", "dgm-job-1", env=env)        # until the job ends
    assert "epoch 1/1" in logs.stdout and "test_error" in logs.stdout, logs.stdout[-3000:] + logs.stderr[-3000:]
    status = _ray("job", "status", "--address", url, "dgm-job-1", env=env)
    assert "Job 'dgm-job-1' succeeded" in status.stdout, status.stdout + status.stderr
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("dgm-dist").experiment_id],
                                "attributes.run_name = 'from-a-job'")
    assert run.info.status == "FINISHED" and "test_error" in run.data.metrics
