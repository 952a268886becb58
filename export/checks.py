"""Checks of an exported model with ONNX Runtime: the ONNX checker, parity with PyTorch, full-set
metrics, latency, and where each node runs.

Parity compares the same function twice: the inference graph in eager PyTorch and its ONNX file in
ONNX Runtime, on real test images. fp32 on the CPU provider must agree to 1e-5 (max abs difference
of every output); INT8 is judged by its metrics instead (weights are rounded on purpose).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dgm_dist.errors import DataError
from export.graphs import INPUT

PARITY_BATCHES = (1, 7, 64)
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
        return [CUDA, CPU]
    return [CPU]


def session(path: Path, providers: list[str], threads: int | None = None, profile: str | None = None):
    import onnxruntime as ort

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


def parity(graph_fn: Callable, sess, images: np.ndarray, batches=PARITY_BATCHES) -> list[dict]:
    """Per batch size: the max abs difference of every output and the argmax agreement."""
    rows = []
    for b in batches:
        x = images[:b]
        ref = graph_fn(x)
        got = sess.run(None, {INPUT: x})
        diffs = {name: float(np.abs(r - g).max()) for name, r, g in zip(output_names(sess), ref, got, strict=True)}
        rows.append({"batch": len(x), "max_abs_diff": diffs,
                     "argmax_agreement": float((ref[0].argmax(-1) == got[0].argmax(-1)).mean())})
    return rows


def output_names(sess) -> list[str]:
    return [o.name for o in sess.get_outputs()]


def predict_all(fn: Callable, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """log-probabilities of every image, in batches."""
    return np.concatenate([fn(images[i:i + batch])[0] for i in range(0, len(images), batch)])


def metrics(log_probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The training loop's test metrics: `error` for one label per image; `per_digit_error` and
    `sequence_error` for sequences."""
    wrong = log_probs.argmax(-1) != labels
    if wrong.ndim == 1:
        return {"error": float(wrong.mean())}
    return {"per_digit_error": float(wrong.mean()), "sequence_error": float(wrong.any(-1).mean())}


def latency_ms(fn: Callable, x: np.ndarray, seconds: float = 1.0, min_runs: int = 5) -> float:
    """Median wall time of one call, after a warm-up call; runs for about `seconds`."""
    fn(x)
    times: list[float] = []
    budget = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < budget:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def placement(path: Path, providers: list[str], images: np.ndarray) -> dict[str, dict[str, int]]:
    """Which provider ran each kind of node, from one profiled run: {provider: {op_type: count}}.
    On a GPU node this shows what fell back to the CPU (e.g. GridSample on older ORT builds)."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, providers, profile=os.path.join(tmp, "ort"))
        sess.run(None, {INPUT: images[:1]})
        events = json.loads(Path(sess.end_profiling()).read_text())
    placed: dict[str, Counter] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in args and e.get("name", "").endswith("_kernel_time"):
            placed.setdefault(args["provider"], Counter())[args.get("op_name", "?")] += 1
    return {p: dict(sorted(c.items())) for p, c in placed.items()}
