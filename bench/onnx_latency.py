"""ONNX Runtime vs PyTorch eager, and INT8 vs fp32, for every exported classifier kind.

    python bench/onnx_latency.py [--quick] [--threads N]

Each classifier is built as its preset builds it (the papers' sizes; the weights are random, which
does not change the cost), exported as `dgm-dist export` does (the same inference graph, raw uint8
pixels in, opset 20), quantized as it does (dynamic for the dense models, static QDQ for the
convolutional ones), and timed at batch 1 and 64 on the same number of threads in both runtimes.
Timings are interleaved (torch, ORT fp32, ORT INT8, repeated) so all three see the same machine
state; the table shows medians and the ratios. Accuracy is not measured here: INT8's accuracy is
checked on the real test set by `dgm-dist validate`.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dgm_dist.config import load_config
from dgm_dist.export.checks import session
from dgm_dist.export.exporter import torch_fn
from dgm_dist.export.graphs import INPUT, GraphOptions, build_graph
from dgm_dist.export.onnx_file import export_graph
from dgm_dist.export.quantize import quantize_int8
from dgm_dist.models.registry import DataInfo, build_model

SINGLE = DataInfo((28, 28), 10, None, 50_000, 100)
SEQUENCE = DataInfo((100, 100), 10, 3)
CASES = {   # name: (preset, data, graph options)
    "MLP": ("mlp-fashion", SINGLE, GraphOptions()),
    "M2": ("m2-mnist100", SINGLE, GraphOptions()),
    "ADGM, a = mean": ("adgm-mnist100", SINGLE, GraphOptions(aux="mean")),
    "ADGM, S = 100": ("adgm-mnist100", SINGLE, GraphOptions(aux="sample", samples=100)),
    "SDGM, S = 100": ("sdgm-mnist100", SINGLE, GraphOptions(aux="sample", samples=100)),
    "CNN": ("cnn-seq3", SEQUENCE, GraphOptions()),
    "CNN-SPN": ("cnn-spn-seq3", SEQUENCE, GraphOptions()),
    "RNN-SPN (d=3)": ("rnn-spn-seq3", SEQUENCE, GraphOptions()),
}
QUICK = ("MLP", "ADGM, a = mean", "RNN-SPN (d=3)")


def export_case(name: str, tmp: Path):
    """(the inference graph, its fp32 ONNX file, 64 random uint8 images) for one kind."""
    preset, info, options = CASES[name]
    torch.manual_seed(0)
    graph = build_graph(build_model(load_config(preset).model, info), options)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, *info.image_shape), dtype=np.uint8)
    fp32 = export_graph(graph, torch.from_numpy(pixels[:2]), tmp / f"{len(list(tmp.iterdir()))}.onnx")
    return graph, fp32, pixels


def prepare(name: str, tmp: Path, threads: int):
    graph, fp32, pixels = export_case(name, tmp)
    int8 = fp32.with_suffix(".int8.onnx")
    dense = not any(isinstance(m, torch.nn.Conv2d) for m in graph.modules())
    quantize_int8(fp32, int8, None if dense else pixels)
    runs = {"torch": torch_fn(graph)}
    for label, path in (("ort", fp32), ("int8", int8)):
        sess = session(path, ["CPUExecutionProvider"], threads)
        runs[label] = (lambda s: lambda x: s.run(None, {INPUT: x}))(sess)
    return runs, pixels


def median_ms(runs, x: np.ndarray, rounds: int, seconds: float) -> dict[str, float]:
    times = {k: [] for k in runs}
    for fn in runs.values():
        fn(x)                                         # warm-up
    for _ in range(rounds):
        for k, fn in runs.items():
            n, start = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - start < seconds / rounds / len(runs):
                fn(x)
                n += 1
            times[k].append(1000 * (time.perf_counter() - start) / n)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three models, short timings (a smoke test)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for both runtimes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = QUICK if args.quick else tuple(CASES)
    seconds, rounds = (0.6, 3) if args.quick else (6.0, 5)
    print(f"{args.threads} threads, torch {torch.__version__}; ms per call (median of {rounds} interleaved rounds)")
    print("| model | batch | PyTorch ms | ORT fp32 ms | ORT/PyTorch speed-up | ORT INT8 ms | INT8/fp32 speed-up |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            runs, pixels = prepare(name, Path(tmp), args.threads)
            for batch in (1, 64):
                t = median_ms(runs, pixels[:batch], rounds, seconds)
                print(f"| {name} | {batch} | {t['torch']:.2f} | {t['ort']:.2f} | {t['torch'] / t['ort']:.2f}x | "
                      f"{t['int8']:.2f} | {t['ort'] / t['int8']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
