"""What keeps the embedded local Ray private to this user on this machine (docs/reliability.md,
*What listens*): every server on 127.0.0.1, and token authentication with a token file only the
user can read. Ray's own options confine only the dashboard; the rest is here."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
from pathlib import Path

# Ray's single-machine mode (its default on macOS and Windows): the node address stays 127.0.0.1,
# and Ray binds its GCS, raylet, workers and agents to the node address. On Linux Ray otherwise
# replaces a loopback address with the machine's reachable one and listens on every interface.
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_node():
    """Start the embedded Ray inside this block: its node is 127.0.0.1. Ray reads the switch when it
    is imported, so the driver's copy is set as well; the environment carries it to the processes
    Ray starts (they start inside the block and keep it)."""
    from ray._private import ray_constants

    previous_env, previous_flag = os.environ.get(SINGLE_MACHINE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous_flag
        if previous_env is None:
            os.environ.pop(SINGLE_MACHINE, None)
        else:
            os.environ[SINGLE_MACHINE] = previous_env


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a server of the embedded Ray whose default port another Ray
    on this machine may hold (the GCS, the dashboard: launcher.RaySession)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token_path() -> Path | None:
    """The token file a new local Ray uses, or None when authentication is off or the token comes
    from the environment (RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH: Ray's variables)."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def private_token() -> Path | None:
    """Make the token file readable by its owner only. Ray creates it with the process umask (0644:
    every local user could read it and then run code on the cluster), so a missing one is created
    here first, 0600, with Ray's own format (256 random bits, hex); an existing one of ours that
    others can read is made 0600."""
    path = token_path()
    if path is None:
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # written whole under another name, then linked into place: two runs starting at once
        # (e.g. the test suite's two processes) never read a half-written token, and the first wins
        part = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(part, path)
        except FileExistsError:
            pass
        finally:
            part.unlink()
        return path
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        path.chmod(0o600)
    return path
