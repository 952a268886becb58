"""The entry script of `ray submit`: runs `dgm-dist` on the cluster's head node.

    ray submit cluster.yaml submit.py -- pipeline --preset paper
    ray submit cluster.yaml submit.py -- tune tune_spaces/spn_downsample.yaml --concurrent 8

`ray submit` uploads this one file only (to ~/submit.py on the head) and runs it with `python`, so
the project must already be on the nodes: cluster.yaml's setup commands install it on every node
(`pip install -e ~/dgm-dist[gpu]`). Where it is not installed but its source tree is on the head
(DGM_PROJECT_DIR, default ~/dgm-dist), it is imported from there and shipped to the Ray workers
with the job (runtime_env py_modules). Neither: one clear error, exit status 2.
This file uses the standard library only until it has found the project.
"""

import os
import sys
from pathlib import Path

PACKAGES = ("dgm_dist", "edge/dgm_predict")     # paths in the source tree


def find_project() -> None:
    try:
        import dgm_dist  # noqa: F401
        return
    except ImportError:
        pass
    source = Path(os.environ.get("DGM_PROJECT_DIR", "~/dgm-dist")).expanduser()
    if not all((source / p / "__init__.py").is_file() for p in PACKAGES):
        sys.stderr.write(
            f"submit.py: error: dgm-dist is not installed on this node and its source is not at {source}. "
            f"Install it on every node (cluster.yaml: file_mounts '~/dgm-dist: .' and setup_commands "
            f"'pip install -e ~/dgm-dist[gpu]'; then `ray up cluster.yaml` again), or set DGM_PROJECT_DIR "
            f"to the checkout on the head node.\n")
        sys.exit(2)
    sys.path[:0] = [str(source), str(source / "edge")]
    # the Ray workers cannot import it either: ship the packages with the job
    os.environ["DGM_PY_MODULES"] = os.pathsep.join(str(source / p) for p in PACKAGES)


def cluster_address() -> str:
    """The cluster `ray start --head` started on this node (it records its address), else "auto".
    "auto" alone picks the newest Ray on the machine, which need not be the cluster's."""
    import tempfile

    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        return record.read_text().strip() or "auto"
    except OSError:
        return "auto"


def main() -> int:
    find_project()
    os.environ.setdefault("RAY_ADDRESS", cluster_address())    # join the cluster this head runs
    from dgm_dist.cli import main as dgm_dist

    return dgm_dist(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
