"""Named configs: the papers' settings and quick variants for a 2-core CPU budget.

`dgm-dist train NAME` takes one of these (or a bare model name). Model families add theirs here.
"""

from __future__ import annotations

from dgm_dist.config import register_preset

register_preset("mlp-fashion", "MLP 784-500-500-10 on all Fashion-MNIST labels (a short supervised run)", {
    "data": {"dataset": "fashion-mnist", "binarize": "none", "validation": 10_000},
    "model": {"name": "mlp", "hidden": [500, 500]},
    "optim": {"optimizer": "adam", "lr": 1e-3, "batch_size": 100, "epochs": 5},
})

register_preset("mlp-mnist100", "labelled-data-only baseline of the ADGM paper: MLP on 100 MNIST labels", {
    "data": {"dataset": "mnist", "labels": 100, "binarize": "dynamic", "validation": 10_000},
    "model": {"name": "mlp", "hidden": [500, 500]},
    "optim": {"optimizer": "adam", "lr": 3e-4, "batch_size": 100, "epochs": 200},
})

# The RNN-SPN recipe (papers.md 3.3): RMSprop 5e-4, batch 100, LR / 1.5 every 10 epochs after 30.
# The CNN baseline sees the image resized by 2 (the CNN-SPN's glimpse size), see models/cnn.py.
_SEQ_OPTIM = {"optimizer": "rmsprop", "lr": 5e-4, "batch_size": 100, "clip_value": 1.0, "clip_norm": 5.0,
              "clip_order": "value_then_norm",
              "lr_decay": 1 / 1.5, "lr_decay_every": 10, "lr_decay_start": 30}
register_preset("cnn-seq3", "CNN baseline on cluttered 3-digit MNIST sequences (RNN-SPN paper: 2.9 %)", {
    "data": {"dataset": "cluttered-mnist", "binarize": "none"},
    "model": {"name": "cnn", "channels": [96, 96, 96], "hidden": [400], "downsample": 2.0},
    "optim": {**_SEQ_OPTIM, "epochs": 300},
})
register_preset("cnn-seq3-cpu", "CNN baseline on 10k cluttered Fashion-MNIST sequences, sized for 2 CPU cores", {
    "data": {"dataset": "cluttered-fashion-mnist", "binarize": "none",
             "cluttered": {"n_train": 10_000, "n_valid": 2_000, "n_test": 2_000}},
    "model": {"name": "cnn", "channels": [32, 32, 32], "hidden": [200], "downsample": 2.0},
    "optim": {**_SEQ_OPTIM, "epochs": 3},
})
