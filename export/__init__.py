"""ONNX export of trained dgm-dist classifiers, ONNX Runtime validation, INT8 quantization, MLflow
registration, and an edge predictor (`export.predict`, numpy + onnxruntime only).

Nothing here is imported at package import: `export.predict` must run where torch is absent.
"""
