"""The supervised MLP: a short Fashion-MNIST run, and the labels-only baseline of the ADGM paper."""

from dgm_dist.config import register_preset

register_preset("mlp-fashion", "MLP 784-500-500-10 on all Fashion-MNIST labels (a short supervised run)", {
    "data": {"dataset": "fashion-mnist", "binarize": "none", "validation": 10_000},
    "model": {"name": "mlp", "hidden": [500, 500]},
    "optim": {"optimizer": "adam", "lr": 1e-3, "batch_size": 100, "epochs": 5},
})

# An epoch of the labels-only baselines is one step of the 100 labelled images.
register_preset("mlp-mnist100", "labelled-data-only baseline of the ADGM paper: MLP on 100 MNIST labels", {
    "data": {"dataset": "mnist", "labels": 100, "binarize": "dynamic", "validation": 10_000},
    "model": {"name": "mlp", "hidden": [500, 500]},
    "optim": {"optimizer": "adam", "lr": 3e-4, "batch_size": 100, "epochs": 200},
    "scaling": {"checkpoint_every": 50, "report_every": 10},
})

register_preset("mlp-fashion100", "labelled-data-only baseline: MLP on 100 Fashion-MNIST labels", {
    "data": {"dataset": "fashion-mnist", "labels": 100, "binarize": "dynamic"},
    "model": {"name": "mlp", "hidden": [500, 500]},
    "optim": {"optimizer": "adam", "lr": 3e-4, "batch_size": 100, "epochs": 1000},
    "scaling": {"checkpoint_every": 100, "report_every": 20},
})
