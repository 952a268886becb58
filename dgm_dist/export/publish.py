"""Export a checkpoint and register what was written: the one path from a trained classifier to a
registered ONNX model, used by `dgm-dist export` and by the pipeline (docs/export.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dgm_dist.export.exporter import ExportOptions, export_checkpoint


def registered_name(card: dict) -> str:
    """The default registered-model name: dgm-<model>-<dataset>."""
    return f"dgm-{card['model'].replace('_', '-')}-{card['dataset']}"


def export_and_register(checkpoint: Path, options: ExportOptions, source: dict[str, Any],
                        out: Callable[[str], Any], registry: tuple[str, str] | None, name: str | None = None,
                        run_name: str = "export") -> dict[str, Any]:
    """Export `checkpoint` (the fp32 graph, and INT8 when asked), then, when `registry` is
    (tracking URI, experiment), log and register every file: the INT8 and FP16 ones as `<name>-int8`, `<name>-fp16`. The
    `champion` alias moves only where `register` finds the new version better on the same test set.
    Returns the export's result with `registered` (one entry per file) and without the input example."""
    from dgm_dist.export.registry import register

    result = export_checkpoint(checkpoint, options, source, out)
    example = result.pop("example")
    result["registered"] = []
    if registry is None:
        return result
    uri, experiment = registry
    name = name or registered_name(result["card"])
    for path in map(Path, result["files"]):
        kind = next((k for k in ("int8", "fp16") if f".{k}." in path.name), None)
        card_path = path.with_name(f"model.{kind}.card.json" if kind else "model_card.json")
        reg = register(uri, experiment, path, json.loads(card_path.read_text()), example,
                       name + (f"-{kind}" if kind else ""), run_name, [card_path, Path(result["bundle"])])
        result["registered"].append(reg)
        out(f"registered {reg['registered_model']} version {reg['version']}: "
            + ("alias champion (" + reg["champion_reason"] + ")" if reg["champion"] else reg["champion_reason"]))
    return result
