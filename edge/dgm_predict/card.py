"""The model card: what an exported classifier takes, returns and was measured at.

It is written twice: as `model_card.json` beside the `.onnx` file, and inside the ONNX file's
metadata (key `dgm.card`, plus flat keys for tools that show metadata), so a copied `.onnx` alone
still says what it is. Plain JSON only: the edge predictor reads it without torch or onnx.
"""

from __future__ import annotations

import json
from typing import Any

FORMAT = "dgm-dist-onnx/1"
CARD_KEY = "dgm.card"
PREPROCESSING = "pixels / 255 (uint8 0..255 -> float32 0..1), inside the graph"
FLAT_KEYS = ("model", "dataset", "task", "preprocessing", "quantization")


def metadata(card: dict[str, Any]) -> dict[str, str]:
    """ONNX `metadata_props` (string to string) for a card."""
    props = {CARD_KEY: json.dumps(card, sort_keys=True)}
    props.update({f"dgm.{k}": str(card[k]) for k in FLAT_KEYS if k in card})
    props["dgm.classes"] = json.dumps(card.get("classes", []))
    props["dgm.input"] = json.dumps(card.get("input", {}))
    props["dgm.outputs"] = json.dumps(card.get("outputs", []))
    return props


def from_metadata(props: dict[str, str]) -> dict[str, Any] | None:
    """The card in a model's metadata, or None when the model was not exported by dgm-dist."""
    raw = props.get(CARD_KEY)
    if raw is None:
        return None
    try:
        card = json.loads(raw)
    except ValueError:
        return None
    return card if isinstance(card, dict) and card.get("format") == FORMAT else None
