"""`dgm-dist validate MODEL.onnx`: is the exported file the trained model, and how fast is it?

1. `onnx.checker` (full check).
2. ONNX Runtime vs the inference graph in eager PyTorch (rebuilt from the checkpoint the card names)
   on real test images at batch 1, 7 and 64: fp32 within 1e-5 (1e-3 on CUDA) in the class
   probabilities and theta, or 10x the graph's own float32 rounding where larger (see `checks`),
   with identical argmax.
3. The full test set: fp32 metrics equal to PyTorch's; INT8 may lose at most `int8_max_drop` points.
4. Latency and throughput of ONNX Runtime vs PyTorch eager, batch 1 and 64, same thread count.
5. Which provider ran each node; with onnxruntime-gpu, a CUDA session that fell back to the CPU, or
   nodes left on the CPU (e.g. GridSample), are reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgm_dist.errors import DataError
from dgm_dist.export import checks
from dgm_dist.export.exporter import load_classifier, ort_fn, torch_fn
from dgm_dist.export.graphs import GraphOptions, build_graph
from dgm_dist.export.onnx_file import read_metadata
from dgm_predict.card import from_metadata
from dgm_predict.measure import batch_sizes

CUDA_TOLERANCE = 1e-3
FP32_TOLERANCE = 1e-5


def validate_model(path: Path, data_dir: str | None = None, dataset: str | None = None,
                   checkpoint: str | None = None, provider: str = "auto", threads: int | None = None,
                   int8_max_drop: float = 0.5, latency: bool = True, out=print,
                   fp16_max_drop: float = 0.2) -> dict[str, Any]:
    started = time.time()
    if not path.is_file():
        raise DataError(f"{path}: no such file; give the .onnx file that `dgm-dist export` wrote")
    checks.check_onnx(path)
    card = from_metadata(read_metadata(path))
    if card is None:
        raise DataError(f"{path}: not a dgm-dist export (its metadata has no model card); validate checks files "
                        f"written by `dgm-dist export`")
    source = Path(checkpoint or card["source"]["checkpoint"])
    if not (source / "state.pt").exists():
        raise DataError(f"{path}: its PyTorch checkpoint {source} is not on this machine; copy it here and pass "
                        f"--checkpoint DIR")
    loaded = load_classifier(source, data_dir, dataset)
    graph = build_graph(loaded.model, GraphOptions(**card["graph_options"]))
    x, y = loaded.test
    threads = threads or torch.get_num_threads()
    fp16 = card["quantization"].startswith("fp16")
    int8 = card["quantization"] != "none" and not fp16
    results: list[dict[str, Any]] = [{"check": "onnx.checker (full)", "passed": True}]

    providers = checks.providers_for(provider)
    sess = checks.session(path, providers, threads, probe=fp16)
    used = sess.get_providers()
    on_cuda = used[0] == checks.CUDA
    if providers[0] == checks.CUDA:
        results.append({"check": "CUDA provider in use", "passed": on_cuda,
                        "detail": f"session providers: {used}" + ("" if on_cuda else
                                  " — CUDA was requested and ONNX Runtime fell back to the CPU "
                                  "(CUDA 13 / cuDNN 9 libraries missing?)")})
    out(f"{path.name}: {card['model']} on {card['dataset']}, {card['quantization']}, providers {used}")

    tolerance = checks.FP16_TOLERANCE if fp16 else CUDA_TOLERANCE if on_cuda else FP32_TOLERANCE
    static = card.get("static_batch")                 # a graph exported with a fixed batch axis
    sizes = batch_sizes(static, checks.PARITY_BATCHES)
    at = "/".join(map(str, sizes))
    rows = checks.parity(graph, sess, x[np.arange(static) % len(x)] if static else x, sizes)
    passed, worst, allowed = checks.parity_passes(rows, tolerance)
    agreement = min(r["argmax_agreement"] for r in rows)
    if int8:
        results.append({"check": f"INT8 argmax agreement with fp32 PyTorch at batch {at}", "passed": True,
                        "detail": f"{100 * agreement:.1f} % (not required: INT8 is judged on the test set)",
                        "rows": rows})
    elif fp16:                                        # float16 keeps 11 bits: judged against a stated bound
        results.append({"check": f"FP16 = fp32 PyTorch at batch {at} (probabilities and theta within {tolerance:g})",
                         "passed": worst <= tolerance,
                         "detail": f"max abs diff {worst:.2e}, argmax agreement {100 * agreement:.1f} %", "rows": rows})
    else:
        rounding = max(r["float32_rounding"] for r in rows)
        results.append({"check": f"ORT = PyTorch at batch {at} (probabilities and theta within {tolerance:g}, "
                                 f"or 10x PyTorch's own float32 rounding; argmax 100 %)", "passed": passed,
                        "detail": f"max abs diff {worst:.2e} (allowed {allowed:.1e}; PyTorch float32 vs float64: "
                                  f"{rounding:.1e}), argmax agreement {100 * agreement:.1f} %", "rows": rows})

    onnx_pred = checks.predict_all(ort_fn(sess), x, static)
    torch_pred = checks.predict_all(torch_fn(graph), x)
    m_onnx, m_torch = checks.metrics(onnx_pred, y), checks.metrics(torch_pred, y)
    metric = card["metric"]
    same = float((onnx_pred.argmax(-1) == torch_pred.argmax(-1)).mean())
    if int8 or fp16:
        drop = 100 * (m_onnx[metric] - m_torch[metric])
        kind, allowed_drop = ("FP16", fp16_max_drop) if fp16 else ("INT8", int8_max_drop)
        results.append({"check": f"{kind} test {metric} within {allowed_drop:g} points of fp32 PyTorch",
                        "passed": drop <= allowed_drop,
                        "detail": f"{100 * m_onnx[metric]:.2f} % vs {100 * m_torch[metric]:.2f} % "
                                  f"({drop:+.2f} points; predictions agree on {100 * same:.2f} %)"})
    else:
        results.append({"check": f"full test set ({len(x):,}): ORT {metric} = PyTorch's",
                        "passed": m_onnx == m_torch,
                        "detail": f"{100 * m_onnx[metric]:.2f} % vs {100 * m_torch[metric]:.2f} %; "
                                  f"predictions agree on {100 * same:.2f} %"})

    placed = checks.placement(path, providers, x, static)
    if on_cuda:
        left = placed.get(checks.CPU, {})
        results.append({"check": "every node on CUDA", "passed": True,
                        "detail": "all nodes on CUDA" if not left else
                                  f"on CPU: {', '.join(f'{k} x{v}' for k, v in left.items())} "
                                  f"(reported, not failed; export with --opset 18 if GridSample is among them)"})

    timing = _latency(graph, sess, x, threads, batch_sizes(static)) if latency else None
    passed = all(r["passed"] for r in results)
    return {"model": str(path), "card": {k: card[k] for k in ("model", "dataset", "quantization", "inference")},
            "passed": passed, "checks": results, "test_metrics": {"onnxruntime": m_onnx, "pytorch": m_torch},
            "providers": used, "placement": placed, "threads": threads, "latency": timing,
            "test_examples": len(x), "seconds": round(time.time() - started, 1)}


def _latency(graph, sess, x, threads: int, sizes: tuple[int, ...] = (1, 64)) -> list[dict[str, Any]]:
    """ms per call and images/s at batch 1 and 64 (a static-batch graph: its batch); torch and ORT on
    the same number of threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = []
        for b in sizes:
            batch = x[np.arange(b) % len(x)]
            t_ort = checks.latency_ms(ort_fn(sess), batch)
            t_torch = checks.latency_ms(torch_fn(graph), batch)
            rows.append({"batch": len(batch), "onnxruntime_ms": round(t_ort, 3), "pytorch_ms": round(t_torch, 3),
                         "onnxruntime_images_per_s": round(1000 * len(batch) / t_ort, 1),
                         "pytorch_images_per_s": round(1000 * len(batch) / t_torch, 1),
                         "speedup": round(t_torch / t_ort, 2)})
        return rows
    finally:
        torch.set_num_threads(previous)


def format_report(result: dict[str, Any]) -> str:
    lines = []
    for r in result["checks"]:
        detail = f": {r['detail']}" if "detail" in r else ""
        lines.append(f"{'PASS' if r['passed'] else 'FAIL'}  {r['check']}{detail}")
    if result["latency"]:
        lines.append(f"latency ({result['threads']} threads; ms per call, images/s):")
        for row in result["latency"]:
            lines.append(f"  batch {row['batch']:>2}: ONNX Runtime {row['onnxruntime_ms']:.2f} ms "
                         f"({row['onnxruntime_images_per_s']:,.0f}/s), PyTorch {row['pytorch_ms']:.2f} ms "
                         f"({row['pytorch_images_per_s']:,.0f}/s): {row['speedup']:.2f}x")
    placed = "; ".join(f"{p}: {sum(c.values())} nodes" for p, c in result["placement"].items())
    lines.append(f"placement: {placed}")
    lines.append("passed" if result["passed"] else "FAILED")
    return "\n".join(lines)

