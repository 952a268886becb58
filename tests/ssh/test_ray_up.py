"""Opt-in (DGM_SSH_TESTS=1, as root on a Debian machine): the cluster launcher end to end with the
local provider over SSH to 127.0.0.1 — `ray up`, `ray submit cluster.yaml submit.py -- train ...`,
`ray down` — as a user would run them against a real cluster (docs/data.md, "Clusters for the SSH tests").

What it sets up, idempotently (it changes the machine; that is why it is opt-in):
- Debian packages openssh-server, rsync, python3-venv;
- a user `dgmray` whose login shell finds a venv built from the system Python with the project
  installed (`pip install torch==2.13.0`, then `-e ~/dgm-dist[cpu]`; ~/dgm-dist is what `ray up`
  copies there through file_mounts), and RAY_ADDRESS pointing at the cluster it starts;
- an sshd on 127.0.0.1:22 with its own host key, key-only login for that user.
It needs port 22 on 127.0.0.1 free (or already that sshd) and network access to a package index.
"""

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USER, HOME = "dgmray", Path("/home/dgmray")
RAY = str(Path(sys.executable).with_name("ray"))


def sh(*cmd, check=True, timeout=900, **kw):
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode:
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


def as_user(script: str, timeout=900):
    return sh("runuser", "-u", USER, "--", "bash", "-c", script, timeout=timeout)


@pytest.fixture(scope="module")
def ssh_node(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("DGM_SSH_TESTS=1 needs root: it installs sshd and creates a user")
    work = tmp_path_factory.mktemp("sshd")
    if not (shutil.which("sshd") or Path("/usr/sbin/sshd").exists()) or not shutil.which("rsync") \
            or not shutil.which("tmux"):
        sh("apt-get", "install", "-y", "-q", "openssh-server", "rsync", "python3-venv", "tmux",
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if sh("id", USER, check=False).returncode:
        sh("useradd", "-m", "-s", "/bin/bash", USER)
    sh("usermod", "-p", "*", USER)                         # no password, but not locked (key login)
    # the node installs from the same package sources as this machine (its pip config and PIP_* settings)
    pip_conf = Path.home() / ".config" / "pip" / "pip.conf"
    if pip_conf.exists():
        (HOME / ".config" / "pip").mkdir(parents=True, exist_ok=True)
        shutil.copy(pip_conf, HOME / ".config" / "pip" / "pip.conf")
        sh("chown", "-R", f"{USER}:{USER}", str(HOME / ".config"))
    pip_env = "".join(f"export {k}={v}\n" for k, v in os.environ.items() if k.startswith("PIP_"))
    if not (HOME / "venv" / "bin" / "ray").exists():
        as_user("/usr/bin/python3 -m venv ~/venv && ~/venv/bin/pip install -q 'ray[default]==2.60.0'")
    bashrc = HOME / ".bashrc"
    if "dgm-dist-env" not in bashrc.read_text():
        # first in the file: Debian's .bashrc returns early for non-interactive shells
        bashrc.write_text("# dgm-dist-env\nexport PATH=$HOME/venv/bin:$PATH\nexport RAY_AUTH_MODE=token\n"
                          + pip_env + bashrc.read_text())
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host_key"))
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "client_key"))
    ssh_dir = HOME / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text((work / "client_key.pub").read_text())
    sh("chown", "-R", f"{USER}:{USER}", str(ssh_dir))
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    (work / "sshd_config").write_text(
        f"Port 22\nListenAddress 127.0.0.1\nHostKey {work}/host_key\nPidFile {work}/sshd.pid\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"PermitRootLogin no\nAllowUsers {USER}\nUsePAM no\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    sh("/usr/sbin/sshd", "-f", str(work / "sshd_config"))
    time.sleep(1)
    yield work
    pid = (work / "sshd.pid").read_text().strip() if (work / "sshd.pid").exists() else None
    if pid:
        sh("kill", pid, check=False)


def test_ray_up_submit_down_over_ssh(ssh_node):
    work = ssh_node
    token = work / "auth_token"            # the user's token, handed to the node as cluster.yaml does
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    (work / "local.yaml").write_text(f"""
cluster_name: dgm-local-smoke
provider: {{type: local, head_ip: 127.0.0.1, worker_ips: []}}
auth: {{ssh_user: {USER}, ssh_private_key: {work}/client_key}}
max_workers: 0
file_mounts: {{"~/dgm-dist": "{ROOT}", "~/.ray/auth_token": "{token}"}}
rsync_exclude: ["**/.git/**", "**/.venv/**", "**/runs/**", "**/__pycache__/**"]
setup_commands:
  - chmod 600 ~/.ray/auth_token
  - python -c "import dgm_dist" 2>/dev/null || (pip install -q torch==2.13.0 && pip install -q -e "$HOME/dgm-dist[cpu]")
head_start_ray_commands:
  - ray stop
  - grep -q RAY_ADDRESS ~/.bashrc || echo "export RAY_ADDRESS=$(hostname -I | awk '{{print $1}}'):6390" >> ~/.bashrc
  - >-
    export RAY_AUTH_MODE=token; ray start --head --port=6390 --num-cpus=2
    --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands:
  - ray stop
  - export RAY_AUTH_MODE=token; ray start --address=$RAY_HEAD_IP:6390
""")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    config = str(work / "local.yaml")
    # a checkout from before tune_spaces/ became a link blocks rsync from replacing it (docs/cluster.md)
    stale = HOME / "dgm-dist" / "tune_spaces"
    if stale.is_dir() and not stale.is_symlink():
        shutil.rmtree(stale)
    sh(RAY, "up", "-y", "--no-config-cache", config, env=env, timeout=1200)
    try:
        done = sh(RAY, "submit", config, str(ROOT / "submit.py"), "--", "train", "mlp-fashion", "--workers", "1",
                  "--epochs", "1", "--set", "data.validation=50000", env=env)
        assert "epoch 1/1" in done.stdout and "done in" in done.stdout and "test_error" in done.stdout
        assert (HOME / "runs" / "mlflow.db").exists()           # tracked on the head, as the user
        # the cluster runs with token authentication: a client without the token is refused
        gcs = "$(hostname -I | awk '{print $1}'):6390"
        refused = as_user(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN={'0' * 64} timeout 60 ~/venv/bin/python -c "
                          f"\"import ray; ray.init(address='{gcs}')\" 2>&1 || echo REFUSED", timeout=120)
        assert "REFUSED" in refused.stdout and "auth" in refused.stdout.lower()
        # detached: `ray submit --tmux` returns at once and its SSH session ends; the job runs on in
        # tmux on the head and finishes (a dropped connection would end a foreground submit)
        started = time.time()
        sh(RAY, "submit", "--tmux", config, str(ROOT / "submit.py"), "--", "train", "mlp-fashion", "--workers", "1",
           "--epochs", "1", "--run-name", "detached", "--set", "data.validation=50000", env=env, timeout=120)
        assert time.time() - started < 60                            # it did not wait for the training
        status = HOME / "run_status.py"                                # the run's status in the head's MLflow
        status.write_text("import os, mlflow\n"
                          "c = mlflow.MlflowClient('sqlite:///' + os.path.expanduser('~/runs/mlflow.db'))\n"
                          "e = c.get_experiment_by_name('dgm-dist')\n"
                          "runs = c.search_runs([e.experiment_id], \"attributes.run_name = 'detached'\") if e else []\n"
                          "print(runs[0].info.status if runs else 'NONE')\n")
        sh("chown", f"{USER}:{USER}", str(status))
        finished = None
        while time.time() - started < 600 and finished not in ("FINISHED", "FAILED", "KILLED"):
            time.sleep(5)
            finished = sh("runuser", "-u", USER, "--", str(HOME / "venv" / "bin" / "python"), str(status),
                          check=False, timeout=120, cwd=HOME).stdout.strip()
        assert finished == "FINISHED"
    finally:
        sh(RAY, "down", "-y", config, env=env, check=False)
    # `ray down` stopped the cluster: no Ray process of the user's is left
    assert sh("pgrep", "-u", USER, "raylet", check=False).returncode == 1
