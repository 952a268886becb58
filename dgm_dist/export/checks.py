"""Checks of an exported model with ONNX Runtime: the ONNX checker, parity with PyTorch, full-set
metrics, latency, and where each node runs.

Parity compares the same function twice: the inference graph in eager PyTorch and its ONNX file in
ONNX Runtime, on real test images, with the class scores compared as probabilities (a log-probability
of -12 is stored to 1e-6 in float32; its probability, 6e-6, is what an app reads). fp32 on the CPU
provider must agree to 1e-5, or, for a model whose own float32 rounding is larger, to 10 times that
rounding, measured against a float64 run of the same graph. The spatial transformers need this:
the glimpse moves with theta, and on a trained RNN-SPN theta's last-bit differences (7e-7) change
probabilities by 1.7e-5 even within PyTorch, while a real export error (a wrong GRU gate, a grid
off by half a pixel) shows at 1e-3 and above. The argmax must agree everywhere. INT8 is judged by
its metrics instead (weights are rounded on purpose).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dgm_dist.errors import DataError, DgmError
from dgm_dist.export.graphs import INPUT
from dgm_predict.measure import in_batches, latency_ms, metrics  # noqa: F401 -- shared with dgm-predict
from dgm_predict.probe import crash

PARITY_BATCHES = (1, 7, 64)
# An FP16 graph (export --half) against fp32 PyTorch, in probabilities and theta: float16 keeps 11
# significant bits, so a probability moves by up to ~1e-3 through a deep graph (2e-3 measured on
# the RNN-SPN); a wrong conversion shows at 0.1 and above.
FP16_TOLERANCE = 1e-2
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def check_onnx(path: Path) -> None:
    """`onnx.checker` with the full check (shape inference included); a `DataError` if it fails."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # the checker raises ValidationError, InferenceError, or DecodeError
        raise DataError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def providers_for(choice: str) -> list[str]:
    """`auto`: CUDA when this onnxruntime build has it (onnxruntime-gpu) and a GPU is visible, else
    CPU. (onnxruntime-gpu lists CUDA as available even on a machine without one.)"""
    import onnxruntime as ort
    import torch

    if choice == "cpu":
        return [CPU]
    if choice == "cuda" or CUDA in ort.get_available_providers() and torch.cuda.is_available():
        if hasattr(ort, "preload_dlls"):
            try:        # CUDA/cuDNN from pip wheels (torch's nvidia-* packages), not on the loader path
                ort.preload_dlls()
            except Exception:  # nothing to preload: the session reports what it found
                pass
        return [CUDA, CPU]
    return [CPU]


def session(path: Path, providers: list[str], threads: int | None = None, profile: str | None = None,
            probe: bool = False):
    """An ONNX Runtime session; with `probe` (FP16 graphs) loaded first in a child process, so that a
    crash of ONNX Runtime is a one-line error (dgm_predict/probe.py)."""
    import onnxruntime as ort

    if probe and (why := crash(path, providers)):
        raise DgmError(f"{why}; use the float32 or INT8 export instead (docs/export.md, FP16)")
    so = ort.SessionOptions()
    so.log_severity_level = 3                      # errors only; a CUDA fallback is reported by us
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        raise DataError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None


def _compare(names: list[str], ref, got) -> dict[str, float]:
    """Max abs difference per output; probabilities for `log_probs`."""
    out = {}
    for name, r, g in zip(names, ref, got, strict=True):
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        if name == "log_probs":
            r, g = np.exp(r), np.exp(g)
        out[name] = float(np.abs(r - g).max())
    return out


def parity(graph, sess, images: np.ndarray, batches=PARITY_BATCHES) -> list[dict]:
    """Per batch size: the max abs difference of every output between ORT and the graph in
    PyTorch, PyTorch's own float32 rounding (vs the graph in float64), and the argmax agreement."""
    import copy

    import torch

    exact = copy.deepcopy(graph).double()
    names = output_names(sess)
    rows = []
    for b in batches:
        x = images[:b]
        with torch.no_grad():
            ref = [o.numpy() for o in _outputs(graph(torch.from_numpy(x)))]
            truth = [o.numpy() for o in _outputs(exact(torch.from_numpy(x)))]
        got = sess.run(None, {INPUT: x})
        rows.append({"batch": len(x), "max_abs_diff": _compare(names, ref, got),
                     "float32_rounding": max(_compare(names, truth, ref).values()),
                     "argmax_agreement": float((ref[0].argmax(-1) == got[0].argmax(-1)).mean())})
    return rows


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


def parity_passes(rows: list[dict], tolerance: float) -> tuple[bool, float, float]:
    """(passed, worst difference, the tolerance applied: `tolerance`, or 10x PyTorch's float32
    rounding where that is larger)."""
    worst = max(d for r in rows for d in r["max_abs_diff"].values())
    allowed = max(tolerance, 10 * max(r["float32_rounding"] for r in rows))
    return worst <= allowed and all(r["argmax_agreement"] == 1 for r in rows), worst, allowed


def output_names(sess) -> list[str]:
    return [o.name for o in sess.get_outputs()]


def predict_all(fn: Callable, images: np.ndarray, static: int | None = None) -> np.ndarray:
    """log-probabilities of every image, in batches (of exactly `static` for a static-batch graph)."""
    return in_batches(fn, images, static)[0]


def placement(path: Path, providers: list[str], images: np.ndarray,
              static: int | None = None) -> dict[str, dict[str, int]]:
    """Which provider ran each kind of node, from one profiled run: {provider: {op_type: count}}.
    On a GPU node this shows what fell back to the CPU (e.g. GridSample on older ORT builds)."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, providers, profile=os.path.join(tmp, "ort"))
        sess.run(None, {INPUT: images[np.arange(static or 1) % len(images)]})
        events = json.loads(Path(sess.end_profiling()).read_text())
    placed: dict[str, Counter] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in args and e.get("name", "").endswith("_kernel_time"):
            placed.setdefault(args["provider"], Counter())[args.get("op_name", "?")] += 1
    return {p: dict(sorted(c.items())) for p, c in placed.items()}
