"""MLflow: the exported model logged with its signature and an input example, registered under a
model name, and the alias `champion` moved to it when it beats the current champion.

Each export is its own MLflow run (tagged with the source run and checkpoint), in the experiment of
the source run, so a finished training run or study is never reopened. Versions carry their test
metric as tags, which is what the champion comparison reads.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dgm_dist.errors import TrackingError
from dgm_dist.export.checks import providers_for
from dgm_dist.export.graphs import INPUT
from dgm_dist.tracking import quiet_mlflow

CHAMPION = "champion"
METRIC_TAG, VALUE_TAG, TEST_SET_TAG = "dgm.metric", "dgm.metric_value", "dgm.test_set"


def register(uri: str, experiment: str, onnx_path: Path, card: dict[str, Any], example: np.ndarray,
             name: str, run_name: str, artifacts: list[Path]) -> dict[str, Any]:
    """Log, register and maybe crown one model. Returns the run id, version and whether it is the
    champion now."""
    quiet_mlflow()
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")    # no package index needed
    import mlflow
    import mlflow.onnx
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    metric = card["metric"]
    value = card["test_metrics"][metric]
    try:
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {INPUT: example}), strict=True))
        tags = {"dgm.source_run": card["source"].get("mlflow_run_id") or "",
                "dgm.checkpoint": card["source"]["checkpoint"], "dgm.export": "onnx"}
        with fluent_uri(uri), mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags) as run:
            mlflow.log_params({"model": card["model"], "dataset": card["dataset"], "opset": card["opset"],
                               "quantization": card["quantization"], "inference": card["inference"]})
            mlflow.log_metrics({f"test_{k}": v for k, v in card["test_metrics"].items()})
            for path in artifacts:
                mlflow.log_artifact(str(path))
            info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", registered_model_name=name,
                                         signature=infer_signature({INPUT: example}, outputs),
                                         input_example={INPUT: example}, save_as_external_data=False,
                                         onnx_execution_providers=providers_for("auto"),
                                         pip_requirements=["onnxruntime==1.31.1", "onnx==1.23.2", "numpy"])
        version = str(info.registered_model_version)
        client.set_model_version_tag(name, version, METRIC_TAG, metric)
        client.set_model_version_tag(name, version, VALUE_TAG, repr(value))
        client.set_model_version_tag(name, version, TEST_SET_TAG, card["test_set_sha1"])
        champion, why = _crown(client, name, version, metric, value, card["test_set_sha1"])
    except TrackingError:
        raise
    except Exception as e:  # MLflow raises many types (MlflowException, requests, sqlalchemy)
        raise TrackingError(f"MLflow at {uri} refused the model ({type(e).__name__}: {e}); the ONNX file "
                            f"is written at {onnx_path} and can be registered again with the same command") from None
    return {"run_id": run.info.run_id, "registered_model": name, "version": version,
            "model_uri": f"models:/{name}/{version}", "champion": champion, "champion_reason": why}


@contextmanager
def fluent_uri(uri: str):
    """MLflow's fluent API (`start_run`, `log_model`) reads a process-global URI, and setting it also
    writes MLFLOW_TRACKING_URI into the environment; both are put back exactly as they were (a
    leaked URI sends later clients in the same process to the wrong store)."""
    from mlflow.tracking._tracking_service import utils

    env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with utils._use_tracking_uri(uri):
            yield
    finally:
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _crown(client, name: str, version: str, metric: str, value: float, tested_on: str) -> tuple[bool, str]:
    """Move `champion` to this version if there is none, or if it is better (lower error) than the
    current one on the same metric and the same test set. Returns (moved, why)."""
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no alias yet
        current = None
    if current is not None and str(current.version) != version:
        tags = current.tags or {}
        if tags.get(TEST_SET_TAG) != tested_on or tags.get(METRIC_TAG) != metric:
            return False, (f"version {current.version} stays champion: it was tested on another test set or "
                           f"metric, so the two are not compared (move the alias by hand if this one should serve)")
        if float(tags.get(VALUE_TAG, "inf")) <= value:
            return False, f"version {current.version} stays champion: its test {metric} is as good or better"
    client.set_registered_model_alias(name, CHAMPION, version)
    return True, f"test {metric} {value:.4f}" + ("" if current is None else f", better than version {current.version}")
