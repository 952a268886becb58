"""What a real embedded run listens on, and who it lets in (docs/reliability.md, *What listens*):
during a 1-worker `dgm-dist train`, every listening socket of the run's whole process tree is on
loopback; the token file is the user's only; the GCS refuses a client with a wrong token and
accepts one with the right token (the control that makes the refusal mean something)."""

import os
import subprocess
import sys
import time

import psutil
import pytest
from drivers import stop, trains
from formats import write_mnist_dir

# slow: not in `make test-fast`; one xdist group: the embedded run the tests inspect is started once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("listeners")]

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    return [proc, *proc.children(recursive=True)]


def _listeners(procs) -> list[tuple[str, int, str]]:
    found = []
    for p in procs:
        try:
            found += [(c.laddr.ip, c.laddr.port, p.name()) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.Error:        # a process that ended meanwhile
            pass
    return found


def _connect(port: int, token: str, home) -> subprocess.CompletedProcess:
    # a client on this machine joins the loopback node as the run did (training/embedded_ray.py)
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    code = f"import ray; ray.init(address='127.0.0.1:{port}', log_to_driver=False); print('connected')"
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        # a refused client goes on retrying, on a loaded machine past any timeout (a CI run saw it):
        # killed, it counts as not connected, with what it printed so far
        text = [b.decode(errors="replace") if isinstance(b, bytes) else (b or "") for b in (e.stdout, e.stderr)]
        return subprocess.CompletedProcess(e.cmd, -9, *text)


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """A 1-worker run that trains until stopped, with a fresh home (so a fresh token) and Ray's
    default authentication (RAY_AUTH_MODE unset). Yields (driver process, home) once its worker trains."""
    tmp = tmp_path_factory.mktemp("listen")
    data = write_mnist_dir(tmp / "mnist", n_train=600, n_test=100)
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(home), DGM_CACHE_DIR=str(tmp / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgm_dist.cli", "train", "mlp", "--workers", "1", "--data-dir", str(data),
         "--set", "data.dataset=mnist", "--set", "data.validation=100", "--set", "model.hidden=16",
         "--set", "optim.epochs=100000", "--set", f"tracking.root={tmp / 'runs'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    driver = psutil.Process(proc.pid)
    deadline = time.time() + 180
    while not trains(driver):
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no Ray Train worker within 3 minutes"
        time.sleep(1)
    time.sleep(3)            # the worker's own servers and the dashboard agent
    yield driver, home
    stop(proc)


def test_every_listener_of_an_embedded_run_is_on_loopback(embedded_run):
    driver, _ = embedded_run
    found = _listeners(_tree(driver))
    names = {name for _, _, name in found}
    assert {"gcs_server", "raylet"} <= names, f"the control: Ray's core servers are in the tree ({names})"
    exposed = [f for f in found if f[0] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_the_token_is_private_and_the_gcs_refuses_a_wrong_one(embedded_run):
    driver, home = embedded_run
    token = home / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
    gcs = [port for _, port, name in _listeners(_tree(driver)) if name == "gcs_server"]
    accepted = [port for port in gcs if _connect(port, token.read_text().strip(), home).returncode == 0]
    assert accepted, "the control: a client with the run's token connects to the GCS"
    refused = _connect(accepted[0], "0" * 64, home)
    assert refused.returncode != 0 and "connected" not in refused.stdout
    assert "auth" in refused.stderr.lower(), refused.stderr[-1500:]
