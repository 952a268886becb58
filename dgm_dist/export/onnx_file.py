"""Writing an inference graph to one ONNX file with a dynamic batch axis and the card as metadata.

torch 2.13's exporter is the dynamo one (needs onnxscript). `external_data=False` keeps the weights
inside the one file (the default writes `.onnx` + `.onnx.data`, and a copied `.onnx` alone breaks).
AffineGrid and GridSample need opset 20 (18 works for GridSample too); GRU maps to the native op.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from dgm_dist.export.graphs import INPUT
from dgm_predict.card import metadata

MAX_BATCH = 65_536


def export_graph(graph: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = 20,
                 static: int | None = None) -> Path:
    """`graph(example)` as ONNX at `path`; the batch axis (0) is dynamic, or fixed at `static`
    images (for runtimes that want static shapes). A dynamic export's example batch must hold at
    least 2 inputs, so the exporter does not specialise the graph to batch 1."""
    if static:
        example = example[torch.arange(static) % len(example)]
    elif len(example) < 2:
        raise ValueError("the example batch must hold at least 2 inputs")
    dynamic = None if static else ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    tmp = path.with_name(path.name + ".part")
    # the exporter prints progress lines and warns about torchvision ops it cannot find: not ours
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnxscript", "torch.export"):
            logging.getLogger(name).setLevel(logging.ERROR)
        torch.onnx.export(graph, (example,), str(tmp), input_names=[INPUT], output_names=list(graph.outputs),
                          dynamic_shapes=dynamic, opset_version=opset, external_data=False, dynamo=True,
                          verbose=False)
    os.replace(tmp, path)
    return path


def set_card(path: Path, card: dict[str, Any]) -> None:
    """Write the card into the file's metadata (replacing any earlier card)."""
    model = onnx.load(str(path))
    props = metadata(card)
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "dgm-dist"
    tmp = path.with_name(path.name + ".part")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def read_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
