"""The GPU check (run by gpu_check.sh): CUDA and NCCL through Ray Train, training throughput of
ADGM, LVAE and RNN-SPN (eager and compiled), and ONNX Runtime's CUDA provider.

    python bench/gpu_check.py [--quick] [--device cuda|cpu] [--steps N] [--no-compile]

Sections, each reported even when another fails (exit 1 if any failed):
  1. environment: torch, CUDA, cuDNN, NCCL, the GPU, onnxruntime and its providers;
  2. Ray Train: a 1-worker TorchTrainer on the GPU (backend, an NCCL all-reduce on the device),
     then `dgm-dist train` for one epoch on it (examples/s, test error);
  3. training steps/s of the papers' ADGM, LVAE and RNN-SPN (`workloads.py`): eager, and
     `torch.compile(mode="reduce-overhead")` (inductor + CUDA graphs, which pays off for small MLPs
     whose steps are kernel-launch bound), and evaluation examples/s;
  4. ONNX: each classifier exported as `dgm-dist export` does, run with the CUDA provider: the
     providers the session really uses (a silent CPU fallback is a failure), parity with PyTorch,
     the nodes that ran on the CPU, and latency vs PyTorch eager on the GPU at batch 1 and 64.
`--device cpu` (what `--quick` uses on a machine without a GPU) runs the same code on the CPU with
gloo and the CPU provider: a smoke test of the script, not a GPU figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import workloads

FAILED: list[str] = []
FASHION = Path("/usr/share/datasets/fashion-mnist")


def section(title: str):
    """Run a section; a failure is printed and recorded, and the next section runs."""
    def wrap(fn):
        def run(*args, **kw):
            print(f"\n## {title}", flush=True)
            started = time.perf_counter()
            try:
                fn(*args, **kw)
            except Exception:
                FAILED.append(title)
                print(f"FAILED: {title}\n{traceback.format_exc()}", flush=True)
            print(f"({time.perf_counter() - started:.0f} s)", flush=True)
        return run
    return wrap


@section("1. environment")
def environment(device: str) -> None:
    import onnxruntime as ort

    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        nccl = torch.cuda.nccl.version()
        nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
        print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
              f"compute capability {p.major}.{p.minor}; CUDA runtime {torch.version.cuda}, "
              f"cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}")
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}), providers built in: {ort.get_available_providers()}")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (the MNIST format), gzipped."""
    code = 0x08                                       # unsigned bytes
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def data_overrides(tmp: Path) -> list[str]:
    """Fashion-MNIST where Debian's package is installed; otherwise random images in the MNIST
    format (a machine without a package index: the check is CUDA and NCCL, not accuracy)."""
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        return ["data.dataset=fashion-mnist"]
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12_000), ("t10k", 2_000)):
        write_idx(tmp / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    print("(Fashion-MNIST not installed: random images in the MNIST format)")
    return ["data.dataset=mnist", f"data.data_dir={tmp}", "data.validation=2000"]


def nccl_probe(config: dict) -> None:
    import ray.train
    import torch.distributed as dist

    device = ray.train.torch.get_device()
    t = torch.ones(4, device=device) * (dist.get_rank() + 1)
    dist.all_reduce(t)
    found = {"backend": dist.get_backend(), "device": str(device), "sum": float(t[0]),
             "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    with tempfile.TemporaryDirectory() as d:          # Train V2 keeps metrics with a checkpoint
        Path(d, "probe.json").write_text(json.dumps(found))
        ray.train.report(found, checkpoint=ray.train.Checkpoint.from_directory(d))


@section("2. Ray Train: a 1-worker TorchTrainer")
def ray_train(device: str, quick: bool) -> None:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from dgm_dist.config import load_config
    from dgm_dist.training.embedded_ray import free_port
    from dgm_dist.training.launcher import train

    gpu = device == "cuda"
    # one local Ray for the probe and the training (train() joins a Ray this process started)
    # the dashboard's port chosen, not Ray's default (docs/training.md, two Rays on one machine)
    ray.init(address="local", include_dashboard=False, dashboard_port=free_port(), log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = TorchTrainer(nccl_probe, scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=gpu),
                                  run_config=ray.train.RunConfig(storage_path=tmp, name="probe")).fit()
            m = json.loads(Path(result.checkpoint.path, "probe.json").read_text())
            print(f"probe: backend {m['backend']} on {m['device']} ({m['name']}), all-reduce {m['sum']:.0f} "
                  f"(expected 1)")
            assert m["backend"] == ("nccl" if gpu else "gloo") and m["sum"] == 1.0, m
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config("mlp-fashion", overrides=[
                "scaling.workers=1", f"scaling.use_gpu={'true' if gpu else 'false'}", "optim.epochs=1",
                f"tracking.root={tmp}/runs", *data_overrides(Path(tmp)),
                *(["data.labels=2000"] if quick else [])])
            run = train(cfg, out=None)
    finally:
        ray.shutdown()
    h = run.history[-1]
    print(f"dgm-dist train mlp-fashion, 1 epoch on {device}: {h['throughput']:,.0f} examples/s, "
          f"test error {100 * h['test_error']:.2f} %, start to first step {run.startup_seconds:.1f} s (Ray already up)")


@section("3. training throughput: eager vs torch.compile (CUDA graphs)")
def throughput(device: str, steps: int, compile_: bool) -> None:
    eval_batch = 100 if steps < 5 else 500
    modes = {"eager": None, **({"compiled": "reduce-overhead" if device == "cuda" else "default"} if compile_ else {})}
    print(f"examples/s over {steps} steps after warm-up; the papers' sizes and batches; evaluation "
          f"(eval_sums) on batches of {eval_batch}")
    extra = [m for m in modes if m != "eager"]
    header = ["model", "batch", "eager train"] + [c for m in extra for c in (f"{m} train", "vs eager")] + \
        ["eager eval"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name in ("adgm", "lvae", "rnn_spn"):
        rates, note = {}, ""
        for mode, how in modes.items():
            w = workloads.build(name, device, eval_batch=eval_batch)
            fn = w.model if how is None else torch.compile(w.model, mode=how)
            started = time.perf_counter()
            for _ in range(3):                              # warm-up (compilation, CUDA graph capture)
                w.train_step(fn)
            if how:
                note += f" {mode}: {time.perf_counter() - started:.0f} s to compile;"
            rates[mode] = workloads.rate(lambda w=w, fn=fn: w.train_step(fn), w.examples, steps, device)
            if mode == "eager":
                w.model.eval()
                w.evaluate()
                evals = workloads.rate(w.evaluate, len(w.eval_x), max(1, steps // 5), device)
        cells = [f"{rates[m]:,.0f} | {rates[m] / rates['eager']:.2f}x" for m in extra]
        print(" | ".join([f"| {name}", str(w.examples), f"{rates['eager']:,.0f}", *cells, f"{evals:,.0f} |"])
              + (f"  ({note.strip(' ;')})" if note else ""), flush=True)


@section("4. ONNX Runtime with the CUDA provider")
def onnx_cuda(device: str, quick: bool) -> None:
    from onnx_latency import export_case

    from dgm_dist.export.checks import CPU, CUDA, latency_ms, parity, parity_passes, placement, providers_for, session
    from dgm_dist.export.graphs import INPUT
    from dgm_dist.export.validator import CUDA_TOLERANCE, FP32_TOLERANCE

    providers = providers_for("cuda" if device == "cuda" else "cpu")     # also preloads pip's CUDA libraries
    names = ("ADGM, S = 100", "RNN-SPN (d=3)") if quick else ("MLP", "ADGM, S = 100", "SDGM, S = 100", "CNN",
                                                              "CNN-SPN", "RNN-SPN (d=3)")
    print("| model | providers used | max abs diff (allowed) | nodes on CPU | batch | ORT ms | PyTorch ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            graph, path, pixels = export_case(name, Path(tmp))
            sess = session(path, providers)
            used = sess.get_providers()
            if used[0] != providers[0]:
                failures.append(f"{name}: asked for {providers[0]}, the session uses {used}")
            passed, worst, allowed = parity_passes(parity(graph, sess, pixels),
                                                   CUDA_TOLERANCE if used[0] == CUDA else FP32_TOLERANCE)
            if not passed:
                failures.append(f"{name}: parity {worst:.1e} > {allowed:.1e}")
            cpu_nodes = placement(path, providers, pixels).get(CPU, {}) if used[0] == CUDA else {}
            on_cpu = ", ".join(f"{k} x{v}" for k, v in cpu_nodes.items()) or "none"
            net = graph.to(device)

            @torch.no_grad()
            def torch_run(x, net=net):           # numpy in, numpy out, as ONNX Runtime is timed
                out = net(torch.from_numpy(x).to(device))
                return [o.cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))]

            def ort_run(x, sess=sess):
                return sess.run(None, {INPUT: x})

            for b in (1, 64):
                x = pixels[:b]
                t_ort = latency_ms(ort_run, x, seconds=0.3 if quick else 2.0)
                t_torch = latency_ms(torch_run, x, seconds=0.3 if quick else 2.0)
                print(f"| {name} | {', '.join(p.replace('ExecutionProvider', '') for p in used)} | {worst:.1e} "
                      f"({allowed:.0e}) | {on_cpu} | {b} | {t_ort:.2f} | {t_torch:.2f} | {t_torch / t_ort:.2f}x |",
                      flush=True)
            graph.to("cpu")
    assert not failures, "; ".join(failures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few steps, two ONNX models (on a CPU: a smoke test)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per model (default 50; 2 quick)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (it needs a C++ compiler)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda, but torch sees no GPU (a CPU build of torch, or no driver); "
                 "run it on a GPU machine, or with --quick --device cpu as a smoke test")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    steps = args.steps or (2 if args.quick else 50)
    started = time.perf_counter()
    environment(args.device)
    ray_train(args.device, args.quick)
    throughput(args.device, steps, not args.no_compile and not (args.quick and args.device == "cpu"))
    onnx_cuda(args.device, args.quick)
    print(f"\n{'FAILED: ' + ', '.join(FAILED) if FAILED else 'all sections passed'} "
          f"({time.perf_counter() - started:.0f} s on {args.device})")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
