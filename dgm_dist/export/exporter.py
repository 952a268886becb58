"""`dgm-dist export`: a trained classifier's checkpoint -> a checked ONNX file, its model card, an
optional INT8 copy, and an MLflow model version (the alias `champion` on the best).

Nothing is registered unless ONNX Runtime reproduces PyTorch on real test images first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from dgm_dist.config import Config, apply, to_dict
from dgm_dist.data import load_from_config
from dgm_dist.errors import DataError, DgmError
from dgm_dist.export import checks
from dgm_dist.export.graphs import INPUT, GraphOptions, build_graph, run_graph
from dgm_dist.export.onnx_file import export_graph, set_card
from dgm_dist.export.quantize import quantize_int8, to_fp16
from dgm_dist.fileio import atomic_write
from dgm_dist.models.registry import model_spec
from dgm_dist.training import data as training_data
from dgm_dist.training.reevaluate import load_trained
from dgm_predict.bundle import BUNDLE_IMAGES, BUNDLE_NAME
from dgm_predict.card import FORMAT, PREPROCESSING
from dgm_predict.images import RESIZE
from dgm_predict.measure import batch_sizes

FP32_TOLERANCE = 1e-5
CALIBRATION_IMAGES = 500


@dataclass
class ExportOptions:
    out_dir: Path
    opset: int = 20
    quantize: str | None = None          # None or "int8"
    graph: GraphOptions = GraphOptions()
    data_dir: str | None = None
    static_batch: int | None = None      # a fixed batch axis of this many images (None: dynamic)
    half: bool = False                   # also write model.fp16.onnx


@dataclass
class Loaded:
    """A trained classifier and what it was trained and tested on."""

    cfg: Config
    model: torch.nn.Module
    epoch: int
    test: tuple[np.ndarray, np.ndarray]
    train_x: np.ndarray
    classes: list[str]


def load_classifier(checkpoint: Path, data_dir: str | None = None, dataset: str | None = None) -> Loaded:
    """The checkpoint's model with the test set it is judged on, as uint8 pixels."""
    cfg, model, saved = load_trained(checkpoint)
    spec = model_spec(cfg.model.name)
    if spec.streams == "unsupervised":
        raise DgmError(f"{checkpoint}: {cfg.model.name} is a generative model, not a classifier; export takes "
                       f"mlp, m2, adgm, sdgm, cnn, cnn_spn or rnn_spn")
    if cfg.data.binarize == "static" or cfg.data.eval_binarize:
        raise DgmError(f"{checkpoint}: the run was tested on binarized images (data.binarize={cfg.data.binarize}, "
                       f"eval_binarize={cfg.data.eval_binarize}); an exported classifier takes raw pixels, so "
                       f"export models trained with data.binarize=dynamic or none")
    changes = {k: v for k, v in (("data_dir", data_dir), ("dataset", dataset)) if v}
    if changes:
        cfg = apply(cfg, {"data": changes}, origin="export options")
    data = training_data.prepare(load_from_config(cfg.data, download=False), cfg.data, spec.streams)
    x, y = data.eval_sets["test"]
    if x.dtype != torch.uint8:
        raise DataError(f"{cfg.data.dataset}: exported classifiers take uint8 pixels, and this dataset's "
                        f"images are {x.dtype}")
    if tuple(x.shape[1:]) != tuple(data.info.image_shape) or data.info.image_shape != _trained_shape(saved):
        raise DataError(f"{cfg.data.dataset}: images of shape {tuple(x.shape[1:])}, but the model was trained on "
                        f"{_trained_shape(saved)}")
    classes = list(data.classes) or [str(i) for i in range(data.info.num_classes)]
    return Loaded(cfg, model.eval(), saved["epoch"] + 1, (x.numpy(), y.numpy()), data.train_x.numpy(), classes)


def _trained_shape(saved: dict[str, Any]) -> tuple[int, ...]:
    return tuple(saved["extra"]["data_info"]["image_shape"])


def torch_fn(graph: torch.nn.Module):
    """numpy pixels -> numpy outputs of the graph in eager PyTorch (what ONNX must reproduce)."""
    return lambda x: [o.numpy() for o in run_graph(graph, torch.from_numpy(x))]


def ort_fn(sess):
    return lambda x: sess.run(None, {INPUT: x})


def export_checkpoint(checkpoint: Path, options: ExportOptions, source: dict[str, Any],
                      out=print) -> dict[str, Any]:
    """Write `model.onnx` (and `model.int8.onnx`) with their cards into `options.out_dir`."""
    started = time.time()
    loaded = load_classifier(checkpoint, options.data_dir)
    cfg, (test_x, test_y) = loaded.cfg, loaded.test
    options = dataclasses.replace(options, graph=options.graph.for_model(loaded.model))
    graph = build_graph(loaded.model, options.graph)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = options.out_dir / "model.onnx"
    out(f"exporting {cfg.model.name} (epoch {loaded.epoch}) to {fp32} at opset {options.opset}")
    static = options.static_batch
    export_graph(graph, torch.from_numpy(test_x[:2]), fp32, options.opset, static)

    sess = checks.session(fp32, [checks.CPU])
    parity_batches = batch_sizes(static, checks.PARITY_BATCHES)
    parity_images = test_x[np.arange(static) % len(test_x)] if static else test_x
    rows = checks.parity(graph, sess, parity_images, parity_batches)
    passed, worst, allowed = checks.parity_passes(rows, FP32_TOLERANCE)
    if not passed:
        raise DgmError(f"the ONNX graph of {checkpoint} differs from PyTorch (max abs difference {worst:.2e} > "
                       f"{allowed:.1e} in probabilities or theta, or a different argmax); nothing was "
                       f"registered. Try --opset 18, and report it with the model")
    card = _card(loaded, graph, options, source, checkpoint)
    test_log_probs = checks.predict_all(ort_fn(sess), test_x, static)
    card["test_metrics"] = checks.metrics(test_log_probs, test_y)
    n = min(BUNDLE_IMAGES, len(test_x))              # the device's own check: dgm-predict --check
    card["bundle"] = {"file": BUNDLE_NAME, "examples": n, "metrics": checks.metrics(test_log_probs[:n], test_y[:n])}
    bundle_path = options.out_dir / BUNDLE_NAME
    atomic_write(bundle_path, lambda f: np.savez(f, pixels=test_x[:n], labels=test_y[:n]))
    card["parity"] = {"max_abs_diff": worst, "tolerance": allowed, "batches": list(parity_batches)}
    files = [_write(fp32, card)]
    batches = ", ".join(map(str, parity_batches))
    out(f"ONNX Runtime = PyTorch to {worst:.1e} (probabilities, theta) at batches {batches}; "
        f"test {_fmt(card['test_metrics'])} on {len(test_x):,} images")
    if options.quantize == "int8":
        int8 = options.out_dir / "model.int8.onnx"
        calibration = None if _is_dense(graph) else loaded.train_x[:CALIBRATION_IMAGES]
        how = quantize_int8(fp32, int8, calibration, static)
        card8 = dict(card, quantization=how, parity=None)
        int8_log_probs = checks.predict_all(ort_fn(checks.session(int8, [checks.CPU])), test_x, static)
        card8["test_metrics"] = checks.metrics(int8_log_probs, test_y)
        card8["bundle"] = dict(card["bundle"], metrics=checks.metrics(int8_log_probs[:n], test_y[:n]))
        files.append(_write(int8, card8))
        out(f"INT8 ({how}): test {_fmt(card8['test_metrics'])}")
    if options.half:
        fp16 = options.out_dir / "model.fp16.onnx"
        how = to_fp16(fp32, fp16)
        try:                                         # refused: the fp32 (and INT8) files stay, nothing registered
            sess16 = checks.session(fp16, [checks.CPU], probe=True)
            rows16 = checks.parity(graph, sess16, parity_images, parity_batches)
            worst16 = max(d for r in rows16 for d in r["max_abs_diff"].values())
            if worst16 > checks.FP16_TOLERANCE:
                raise DgmError(f"the FP16 graph of {checkpoint} differs from PyTorch by {worst16:.2e} in "
                               f"probabilities or theta (allowed {checks.FP16_TOLERANCE:g}); export it without --half")
        except DgmError:
            fp16.unlink()
            raise
        card16 = dict(card, quantization=how, parity={"max_abs_diff": worst16, "tolerance": checks.FP16_TOLERANCE,
                                                      "batches": list(parity_batches)})
        fp16_log_probs = checks.predict_all(ort_fn(sess16), test_x, static)
        card16["test_metrics"] = checks.metrics(fp16_log_probs, test_y)
        card16["bundle"] = dict(card["bundle"], metrics=checks.metrics(fp16_log_probs[:n], test_y[:n]))
        files.append(_write(fp16, card16))
        out(f"FP16: ONNX Runtime = PyTorch to {worst16:.1e} (allowed {checks.FP16_TOLERANCE:g}); "
            f"test {_fmt(card16['test_metrics'])}")
    return {"files": [str(f) for f in files], "bundle": str(bundle_path), "card": card,
            "seconds": round(time.time() - started, 1), "example": test_x[:2]}


def _is_dense(graph: torch.nn.Module) -> bool:
    return not any(isinstance(m, torch.nn.Conv2d) for m in graph.modules())


def _card(loaded: Loaded, graph, options: ExportOptions, source: dict[str, Any], checkpoint: Path) -> dict:
    cfg, spec = loaded.cfg, model_spec(loaded.cfg.model.name)
    shape = list(loaded.test[0].shape[1:])
    classes = len(loaded.classes)
    model = loaded.model
    b = options.static_batch or "batch"
    log_probs_shape = [b, classes] if spec.labels == "single" else [b, model.digits, classes]
    outputs = [{"name": "log_probs", "dtype": "float32", "shape": log_probs_shape,
                "meaning": "log-probability of each class" + ("" if spec.labels == "single" else ", per position")}]
    if "theta" in graph.outputs:
        outputs.append({"name": "theta", "dtype": "float32", "shape": [b, model.steps, 2, 3],
                        "meaning": "affine map of each glimpse: output (x, y) in [-1, 1]^2 of the glimpse "
                                   "samples the image at theta @ (x, y, 1), image corners at +-1 "
                                   "(align_corners=True)"})
    return {
        "format": FORMAT, "model": cfg.model.name, "description": spec.description,
        "task": spec.labels, "dataset": cfg.data.dataset, "classes": loaded.classes,
        "input": {"name": INPUT, "dtype": "uint8", "shape": [options.static_batch or "batch", *shape]},
        "static_batch": options.static_batch,
        "outputs": outputs, "preprocessing": PREPROCESSING, "resize": RESIZE,
        "inference": graph.inference.description,
        "graph_options": asdict(options.graph), "quantization": "none", "opset": options.opset,
        "metric": spec.main_metric, "test_examples": len(loaded.test[0]), "test_set_sha1": _fingerprint(loaded.test),
        "source": {"checkpoint": str(checkpoint), "epoch": loaded.epoch, **source},
        "data": to_dict(cfg.data),
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__,
                          "onnxruntime": onnxruntime.__version__},
    }


def _fingerprint(test: tuple[np.ndarray, np.ndarray]) -> str:
    """The test set's identity (images and labels): metrics are compared only between equal sets."""
    digest = hashlib.sha1()
    for array in test:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _write(path: Path, card: dict[str, Any]) -> Path:
    set_card(path, card)
    card_path = path.with_name(path.name.removesuffix(".onnx") + ".card.json") \
        if path.name != "model.onnx" else path.with_name("model_card.json")
    atomic_write(card_path, lambda f: f.write(json.dumps(card, indent=2).encode()))
    return path


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.2f} %" for k, v in metrics.items())

