"""The RNN-SPN paper's models on cluttered 3-digit sequences, and each sized for 2 CPU cores
(docs/models.md, *Spatial transformers*; docs/papers.md §3).

Lasagne's RMSprop 5e-4 (rho 0.9, eps 1e-6 inside the square root: optim.optimizer=rmsprop_lasagne),
batch 100, up to 300 epochs, LR / 1.5 every 10 epochs after 30, early stop after 50 epochs without a
better validation error. RNN-SPN: elementwise clip 1 then total-norm 5, GRU 256, 32-channel classifier
shared over the glimpses, downsample 3 (33x33 glimpses). CNN-SPN (the original's FFN-SPN): total-norm 5
only, localisation dense 200, 96-channel classifier, downsample 2. The CNN baseline (not in the
original code) is the CNN-SPN with theta fixed at the identity (its 50x50 glimpse), models/cnn.py.
"""

from dgm_dist.config import register_preset

_OPTIM = {"optimizer": "rmsprop_lasagne", "lr": 5e-4, "batch_size": 100, "epochs": 300, "patience": 50,
          "clip_value": 1.0, "clip_norm": 5.0, "clip_order": "value_then_norm",
          "lr_decay": 1 / 1.5, "lr_decay_every": 10, "lr_decay_start": 30}
_NORM_CLIP_ONLY = {**_OPTIM, "clip_value": None}
_RNN_SPN = {"name": "rnn_spn", "channels": [32, 32, 32], "hidden": [400], "downsample": 3.0, "loc_hidden": 256}
_CNN_SPN = {"name": "cnn_spn", "channels": [96, 96, 96], "hidden": [400], "downsample": 2.0, "loc_hidden": 200}
_CNN = {"name": "cnn", "channels": [96, 96, 96], "hidden": [400], "downsample": 2.0}


def _paper(model: dict, optim: dict) -> dict:
    return {"data": {"dataset": "cluttered-mnist", "binarize": "none"}, "model": model, "optim": optim}


def _cpu(model: dict, optim: dict) -> dict:
    """The same architecture on 20 000 cluttered Fashion-MNIST sequences (2 000 for validation, the
    full 10 000 for test), early stop after 10 epochs; meant to run with --max-minutes."""
    return {"data": {"dataset": "cluttered-fashion-mnist", "binarize": "none",
                     "cluttered": {"n_train": 20_000, "n_valid": 2_000, "n_test": 10_000}},
            "model": model, "optim": {**optim, "epochs": 100, "patience": 10}, "scaling": {"cpus_per_worker": 2}}


_SEQ, _CPU = "on cluttered 3-digit MNIST sequences", "on 20k cluttered Fashion-MNIST sequences, " \
    "sized for 2 CPU cores (use with --max-minutes)"
register_preset("rnn-spn-seq3", f"RNN-SPN (paper: 1.5 %) {_SEQ}", _paper(_RNN_SPN, _OPTIM))
register_preset("cnn-spn-seq3", f"CNN-SPN (paper: 2.0 %) {_SEQ}", _paper(_CNN_SPN, _NORM_CLIP_ONLY))
register_preset("cnn-seq3", f"CNN baseline (paper: 2.9 %) {_SEQ}", _paper(_CNN, _NORM_CLIP_ONLY))
register_preset("rnn-spn-seq3-cpu", f"RNN-SPN {_CPU}", _cpu(_RNN_SPN, _OPTIM))
register_preset("cnn-spn-seq3-cpu", f"CNN-SPN {_CPU}", _cpu(_CNN_SPN, _NORM_CLIP_ONLY))
register_preset("cnn-seq3-cpu", f"CNN baseline {_CPU}", _cpu(_CNN, _NORM_CLIP_ONLY))
