"""dgm-predict: run dgm-dist's exported ONNX classifiers on a device with numpy and ONNX Runtime only
(no torch, Ray or MLflow; docs/export.md). `dgm-predict MODEL.onnx IMAGES...`.

Its own distribution (edge/pyproject.toml) for devices; dgm-dist ships it too, and its exporter
writes and reads the model card through `dgm_predict.card`, so the two cannot disagree.
"""

__version__ = "0.1.0"
