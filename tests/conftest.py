import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# tests/ssh changes the machine (sshd, a user): collected only when asked for, never skipped silently
collect_ignore = [] if os.environ.get("DGM_SSH_TESTS") == "1" else ["ssh"]

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
HAS_FASHION = (FASHION_DIR / "train-images-idx3-ubyte.gz").exists()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own cache; no test reads the user's data dir or the network."""
    monkeypatch.setenv("DGM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DGM_DATA_DIR", raising=False)
    monkeypatch.setenv("DGM_DOWNLOAD", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
    yield
