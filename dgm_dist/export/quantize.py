"""INT8 with ONNX Runtime's quantizer, and FP16 with its float16 converter.

- Convolutional models (CNN, CNN-SPN, RNN-SPN): static QDQ, per-channel weights, activation ranges
  calibrated (MinMax) on training images. GridSample and GRU stay float: ORT has no INT8 kernels
  for them.
- Dense models (MLP, M2/ADGM/SDGM): dynamic quantization of the MatMul/Gemm weights; activations
  are quantized per batch at run time, so no calibration is needed.
Pre-processing (`quant_pre_process`: shape inference, graph optimisation) comes first, as ORT
recommends. FP16 (`--half`): every float initializer and operation in float16, the uint8 input and
the float32 outputs kept (`keep_io_types`), ops ORT has no float16 kernel for left in float32 by
the converter. The accuracy change is checked by `dgm-dist validate`, not assumed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx

from dgm_dist.export.graphs import INPUT

# The layers with weights. Left out on purpose: the element-wise ops of AffineGrid, whose constant
# base grid (the glimpse's pixel coordinates) would otherwise be rounded to int8 too.
STATIC_OPS = ("Conv", "Gemm", "MatMul")


class _Batches:
    """The CalibrationDataReader protocol: one input dict per call, None at the end."""

    def __init__(self, images: np.ndarray, batch: int = 50, static: int | None = None):
        size = static or batch
        if static:                     # a static-batch graph takes exactly `static` images a call
            images = images[np.arange(max(static, len(images) // static * static)) % len(images)]
        self.it = iter([{INPUT: images[i:i + size]} for i in range(0, len(images), size)])

    def get_next(self):
        return next(self.it, None)


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray | None, static_batch: int | None = None) -> str:
    """Write the INT8 model of `fp32` to `out`; `calibration` (uint8 images) selects static
    quantization. Returns a description for the card."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("root").setLevel(logging.ERROR)      # ORT's quantizer logs to the root logger
    pre = out.with_name(out.stem + ".pre.onnx")
    try:
        # the exporter's intermediate shape annotations can disagree with ONNX's own shape inference
        # after it folds layers (a ShapeInferenceError in the quantizer): drop them, ORT re-infers
        model = onnx.load(str(fp32))
        del model.graph.value_info[:]
        onnx.save(model, str(pre))
        quant_pre_process(str(pre), str(pre), skip_symbolic_shape=True)
        if calibration is None:
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
            return "int8: dynamic (MatMul/Gemm weights int8, activations quantized per batch)"
        batches = _Batches(calibration, static=static_batch)
        quantize_static(str(pre), str(out), batches, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=list(STATIC_OPS))
        return f"int8: static QDQ, per-channel weights, MinMax calibration on {len(calibration)} training images"
    finally:
        for leftover in (pre, Path(str(pre) + ".data"), out.with_name("augmented_model.onnx")):
            if leftover.exists():
                os.remove(leftover)


FP16 = "fp16: weights and activations in float16 (uint8 in, float32 out; ONNX Runtime's converter)"
FLOAT32_OPS = ("Transpose",)       # kept in float32 besides the converter's own list (to_fp16)


def to_fp16(fp32: Path, out: Path) -> str:
    """Write the float16 model of `fp32` to `out`. Returns a description for the card."""
    import warnings

    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # the converter warns about values it clips to fp16's range
        # Transpose stays float32: with it in float16, ONNX Runtime 1.31.1's CPU layout optimisation
        # (level ORT_ENABLE_ALL, the default) crashes creating a session for the RNN-SPN's graph
        # (docs/export.md, FP16)
        half = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True,
                                        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FLOAT32_OPS])
    _topological_order(half.graph)
    tmp = out.with_name(out.name + ".part")
    onnx.save(half, str(tmp))
    os.replace(tmp, out)
    return FP16


def _topological_order(graph) -> None:
    """Reorder `graph`'s nodes so that each comes after the nodes it reads from. The converter
    appends the Cast nodes it puts around a blocked op at the end of the list, which onnx.checker
    and ONNX Runtime refuse ("Nodes in a graph must be topologically sorted")."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError("the float16 graph has a cycle or an input nothing produces")
        for n in ready:
            known.update(n.output)
        ordered += ready
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)
