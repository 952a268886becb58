"""Runs whose driver died: found and ended as KILLED (docs/reliability.md, *Training runs*).

Only the driver ends a run (tracking.py). A driver killed with SIGKILL, or by the OOM killer or a
lost machine, cannot, and its run would stay RUNNING forever. So every run records which process
drives it (`dgm.driver`: host, pid, and the process's identity — the boot and the start time, so a
reused pid is not mistaken for it), and whenever dgm-dist opens an experiment it ends the RUNNING
runs of this host whose driver is gone, with a note (`dgm.orphaned`). Runs driven from another host
cannot be checked from here; `dgm-dist runs orphans` on that host ends them."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

DRIVER_TAG = "dgm.driver"          # "<host> <pid> <identity>"
ORPHANED_TAG = "dgm.orphaned"      # why the run was ended by someone other than its driver


def identity(pid: int) -> str | None:
    """A process's identity across pid reuse: boot id and start time (Linux /proc); None if the
    process does not exist. Without /proc only existence is known ("alive")."""
    if Path("/proc/self/stat").exists():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
        boot = Path("/proc/sys/kernel/random/boot_id")
        return f"{boot.read_text().strip() if boot.exists() else '-'}:{fields[19]}"     # field 22: starttime
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "alive"


def driver_tag() -> str:
    """This process, as a run's driver."""
    return f"{socket.gethostname()} {os.getpid()} {identity(os.getpid())}"


def is_orphan(tag: str) -> bool:
    """The run's driver ran on this host and is gone (a driver elsewhere is never judged from here)."""
    try:
        host, pid, ident = tag.split(" ", 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    now = identity(pid)
    return now is None or (now != "alive" and ident != "alive" and now != ident)


def end_orphans(client, experiment_ids: list[str], by: str) -> dict[str, str]:
    """End as KILLED every RUNNING run of these experiments whose driver on this host is gone; the
    note names the driver and what found it. Returns {run id: run name} of those ended."""
    ended = {}
    runs = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        tag = run.data.tags.get(DRIVER_TAG)
        if tag and is_orphan(tag):
            host, pid, _ = tag.split(" ", 2)
            client.set_tag(run.info.run_id, ORPHANED_TAG,
                           f"its driver (pid {pid} on {host}) was gone when {by} opened the experiment at "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; ended as KILLED")
            client.set_terminated(run.info.run_id, status="KILLED")
            ended[run.info.run_id] = run.info.run_name
    return ended
