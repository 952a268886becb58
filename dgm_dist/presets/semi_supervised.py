"""M2, ADGM and SDGM: the released SDGM MNIST script's recipe, and the 2-core recipe (docs/models.md,
*Presets and options*; docs/papers.md §1).

The paper recipe: 2x500 ReLU MLPs, a = z = 100, Adam 3e-4 x0.75 every 200 epochs (floor 3e-5), norm
clip 5 then value clip 1, 100 unlabelled images + the whole labelled set (100) per step,
alpha = 0.1 N / N_l, 5 MC samples with q(y|a,x) averaged over them (mc_average=probabilities) and
independent per-class draws of z, dynamic binarization, test error with q(y|a,x) averaged over 100
draws of a, evaluated every 10 epochs, the N(0, 1) weight prior, no batch norm (the original's
produced NaN). 10 000 training images are held out for validation (data.validation=0 reproduces the
original's 60 000).
"""

from dgm_dist.config import register_preset

_MODEL = {"hidden": [500, 500], "latent": [100], "aux": 100, "mc_samples": 5, "eval_samples": 100,
          "alpha": 0.1, "batch_norm": "off", "weight_prior": True, "shared_noise": False,
          "mc_average": "probabilities"}
_OPTIM = {"optimizer": "adam", "lr": 3e-4, "batch_size": 100, "labelled_batch_size": 100, "epochs": 1000,
          "clip_norm": 5.0, "clip_value": 1.0, "clip_order": "norm_then_value",
          "lr_decay": 0.75, "lr_decay_every": 200, "lr_min": 3e-5}
# The 2-core recipe (docs/results.md §1.1): shared class noise, PyTorch's initialisation (the largest
# measured gain in the generative model's own class vote), 1 MC sample, 10 test draws of a, an
# evaluation every epoch; the same architecture.
_CPU_MODEL = {"mc_samples": 1, "eval_samples": 10, "shared_noise": True, "mc_average": "bounds", "init": "torch"}
_CPU_SCALING = {"checkpoint_every": 1, "cpus_per_worker": 2}


def _mnist100(model: str) -> dict:
    return {"data": {"dataset": "mnist", "labels": 100, "binarize": "dynamic"},
            "model": {**_MODEL, "name": model}, "optim": _OPTIM, "scaling": {"checkpoint_every": 10}}


def _fashion100_cpu(model: str) -> dict:
    return {"data": {"dataset": "fashion-mnist", "labels": 100, "binarize": "dynamic"},
            "model": {**_MODEL, "name": model, **_CPU_MODEL},
            "optim": {**_OPTIM, "epochs": 200}, "scaling": _CPU_SCALING}


def _labels1000(model: str, dataset: str, cpu: bool = False) -> dict:
    """SVHN and small NORB with 1000 labels: Gaussian likelihood, pixels scaled to [0, 1]."""
    return {"data": {"dataset": dataset, "labels": 1000, "binarize": "none", "validation": 5000},
            "model": {**_MODEL, "name": model, "output": "gaussian", **(_CPU_MODEL if cpu else {})},
            "optim": {**_OPTIM, "epochs": 50} if cpu else _OPTIM,
            "scaling": _CPU_SCALING if cpu else {"checkpoint_every": 10}}


_CPU = "sized for 2 CPU cores (Fashion-MNIST; use with --max-minutes)"
register_preset("m2-mnist100", "M2 on MNIST with 100 labels", _mnist100("m2"))
register_preset("adgm-mnist100", "ADGM (paper: 0.96 %) on MNIST with 100 labels", _mnist100("adgm"))
register_preset("sdgm-mnist100", "SDGM (paper: 1.32 %) on MNIST with 100 labels", _mnist100("sdgm"))
register_preset("m2-mnist100-cpu", f"M2 with 100 labels {_CPU}", _fashion100_cpu("m2"))
register_preset("adgm-mnist100-cpu", f"ADGM with 100 labels {_CPU}", _fashion100_cpu("adgm"))
register_preset("sdgm-mnist100-cpu", f"SDGM with 100 labels {_CPU}", _fashion100_cpu("sdgm"))

register_preset("sdgm-svhn1000", "SDGM on SVHN with 1000 labels", _labels1000("sdgm", "svhn"))
register_preset("adgm-norb1000", "ADGM on NORB with 1000 labels", _labels1000("adgm", "norb"))
register_preset("sdgm-norb1000", "SDGM on NORB with 1000 labels", _labels1000("sdgm", "norb"))
register_preset("sdgm-svhn1000-cpu", "SDGM on SVHN, 1000 labels, sized for 2 CPU cores",
                _labels1000("sdgm", "svhn", cpu=True))
register_preset("adgm-norb1000-cpu", "ADGM on NORB, 1000 labels, sized for 2 CPU cores",
                _labels1000("adgm", "norb", cpu=True))
register_preset("sdgm-norb1000-cpu", "SDGM on NORB, 1000 labels, sized for 2 CPU cores",
                _labels1000("sdgm", "norb", cpu=True))
