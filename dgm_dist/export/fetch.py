"""From the registry to the device: a registered model's ONNX file, its card and its test bundle in
one directory, ready for `dgm-predict` (docs/export.md, *From the registry to the device*).

The ONNX file comes from the registered MLflow model; the card and the bundle from the export run
that registered it (export logs them there). The card inside the ONNX file must equal the card
file: a mismatch means the two were not exported together, and nothing is written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from dgm_dist.errors import DgmError, TrackingError
from dgm_dist.fileio import atomic_write
from dgm_dist.tracking import quiet_mlflow
from dgm_predict.bundle import BUNDLE_NAME
from dgm_predict.card import from_metadata

CARD_FILES = ("model_card.json", "model.int8.card.json", "model.fp16.card.json")


def parse(model: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS`, `models:/NAME/VERSION` or `NAME` (its champion) -> (name, alias, version)."""
    rest = model.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, None, version
    return rest, "champion", None


def fetch_model(uri: str, model: str, out_dir: Path) -> dict[str, Any]:
    quiet_mlflow()
    import mlflow
    import onnx

    from dgm_dist.export.registry import fluent_uri

    name, alias, version = parse(model)
    if not name:
        raise DgmError(f"{model}: give a registered model as models:/NAME@ALIAS, models:/NAME/VERSION or NAME")
    client = mlflow.MlflowClient(uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as e:  # MlflowException: no such model, alias or version
        raise TrackingError(f"{model}: not in the registry at {uri} ({str(e).splitlines()[0][:200]}); "
                            f"`mlflow models` lists what is registered, or export one with `dgm-dist export`") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with fluent_uri(uri):
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}",
                                                                 dst_path=f"{tmp}/model"))
            run_files = {a.path for a in client.list_artifacts(mv.run_id)}
            card_name = next((c for c in CARD_FILES if c in run_files), None)
            if card_name is None:
                raise TrackingError(f"{model}: its export run {mv.run_id} holds no model card; export it again")
            card_file = Path(client.download_artifacts(mv.run_id, card_name, tmp))
            bundle = Path(client.download_artifacts(mv.run_id, BUNDLE_NAME, tmp)) if BUNDLE_NAME in run_files else None
        except TrackingError:
            raise
        except Exception as e:  # MLflow's many error types (MlflowException, requests, OSError)
            raise TrackingError(f"{model}: MLflow at {uri} could not hand over its files "
                                f"({type(e).__name__}: {str(e)[:200]})") from None
        onnx_file = local / "model.onnx"
        card = json.loads(card_file.read_text())
        inside = from_metadata({p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False)
                                .metadata_props})
        if inside != card:
            raise DgmError(f"{model}: the card inside its ONNX file differs from the card its export run logged; "
                           f"nothing was written. Export the model again")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = {"model": out_dir / "model.onnx", "card": out_dir / "model_card.json"}
        if bundle is not None:
            written["bundle"] = out_dir / BUNDLE_NAME
        sources = {"model": onnx_file, "card": card_file, "bundle": bundle}
        for key, target in written.items():
            atomic_write(target, lambda f, src=sources[key]: f.write(Path(src).read_bytes()))
    return {"model_uri": f"models:/{name}/{mv.version}", "name": name, "version": str(mv.version),
            "alias": alias, "run_id": mv.run_id, "files": {k: str(v) for k, v in written.items()},
            "test_metrics": card.get("test_metrics"), "bundle": "bundle" in written}
