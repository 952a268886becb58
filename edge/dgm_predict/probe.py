"""Load a graph in a child process before loading it here, for graphs that can crash ONNX Runtime.

An FP16 graph (`dgm-dist export --half`) made ONNX Runtime 1.31.1's CPU provider die of a
segmentation fault while creating the session, until export kept Transpose in float32
(docs/export.md, FP16); this stays as the safety net for other graphs and runtimes. A crash takes
the process with it, so no `except` can turn it into an error message; a child process that
creates the session and runs one batch can. Float32 and INT8 graphs are loaded directly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

_CHILD = """
import sys
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions()
so.log_severity_level = 3
sess = ort.InferenceSession(sys.argv[1], so, providers=sys.argv[2].split(","))
sess.run(None, {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                                 np.uint8 if "uint8" in i.type else np.float32) for i in sess.get_inputs()})
"""


def crash(model: Path, providers: list[str], timeout: float = 300) -> str | None:
    """None when a child process loads `model` on `providers` and runs a batch of zeros without
    dying of a signal; otherwise one line saying so. A Python-level error in the child is not a
    crash: loading it here raises it with its message."""
    import onnxruntime as ort

    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(model), ",".join(providers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{model}: ONNX Runtime {ort.__version__} did not load it on {', '.join(providers)} in {timeout:g} s"
    if done.returncode >= 0:
        return None
    try:
        name = signal.Signals(-done.returncode).name
    except ValueError:
        name = f"signal {-done.returncode}"
    return (f"{model}: ONNX Runtime {ort.__version__} crashed ({name}) loading it on "
            f"{', '.join(providers)}")
