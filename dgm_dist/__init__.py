"""dgm-dist: the DTU deep generative models (ADGM/SDGM, Ladder VAE, RNN-SPN), trained with Ray,
tracked with MLflow, exported to ONNX."""

__version__ = "0.1.0"
