"""The one conversion from stored pixels to model inputs: uint8 0..255 -> float32 0..1.

Datasets are stored as uint8 (docs/data.md); training, evaluation, figures and the exported graphs
(which divide by 255 inside, docs/export.md) all scale the same way.
"""

from __future__ import annotations

import numpy as np
import torch


def to_unit(x):
    """uint8 pixels -> float32 in [0, 1], for numpy arrays and torch tensors; float input as float32."""
    if isinstance(x, torch.Tensor):
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
