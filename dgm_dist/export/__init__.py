"""ONNX export of trained dgm-dist classifiers, ONNX Runtime validation, INT8 quantization and
MLflow registration (needs torch). What runs on a device without torch is the separate `dgm_predict`
package (edge/, docs/export.md): the model card reader, the PNG decoder and `dgm-predict`.

Nothing here is imported at package import: the CLI loads these modules only for `export`/`validate`.
"""
