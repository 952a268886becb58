"""The Ladder VAE paper's ablation rows (VAE, + BN, + BN + WU, LVAE + BN + WU) on MNIST, OMNIGLOT and
NORB, and each sized for 2 CPU cores (docs/models.md; docs/papers.md §2).

The paper recipe: 5 stochastic layers 64-32-16-8-4 with 2-layer leaky-ReLU MLPs of 512-256-128-64-32,
Adam 2e-4 (the command in the LVAE code's README), batch 256, 2000 epochs, warm-up over 200 epochs,
total-norm clip 4 then elementwise 0.9, batch-norm statistics from the full training set at
evaluation. The periodic evaluations use k = 100 importance samples; the paper's 5000-sample figure
is `dgm-dist evaluate RUN --iw-samples 5000` (not part of a budgeted run). The LVAE's p(z_i|z_{i+1})
shares q's top-down networks, as the paper (`share`; the released code's default, false, gives p
networks of its own).
"""

from dgm_dist.config import register_preset

_MODEL = {"latent": [64, 32, 16, 8, 4], "hidden": [512, 256, 128, 64, 32], "iw_samples": 100, "share": True}
_OPTIM = {"optimizer": "adam", "lr": 2e-4, "batch_size": 256, "epochs": 2000, "clip_norm": 4.0,
          "clip_value": 0.9, "clip_order": "norm_then_value"}
_DATA = {"mnist": {"dataset": "mnist", "binarize": "dynamic", "eval_binarize": True},
         "omniglot": {"dataset": "omniglot", "binarize": "dynamic", "eval_binarize": True},
         "norb": {"dataset": "norb", "binarize": "none", "norb_stereo": "left_duplicated", "norb_resize": "bicubic"}}


def _row(model: str, batch_norm: str, warmup: bool, data: str) -> dict:
    return {"data": _DATA[data],
            "model": {**_MODEL, "name": model, "batch_norm": batch_norm,
                      "output": "gaussian" if data == "norb" else "bernoulli"},
            "optim": {**_OPTIM, "warmup_epochs": 200 if warmup else 0}, "scaling": {"checkpoint_every": 100}}


def _row_cpu(model: str, batch_norm: str, warmup: bool, data: str) -> dict:
    """20 epochs with warm-up over 5, 2 000 images held out, Adam 2e-3 (the code's default), k = 100,
    evaluated at the end; the MNIST row runs on Fashion-MNIST (the data this machine has)."""
    paper = _row(model, batch_norm, warmup, data)
    return {"data": {**paper["data"], "dataset": "fashion-mnist" if data == "mnist" else data, "validation": 2000},
            "model": paper["model"],
            "optim": {**_OPTIM, "lr": 2e-3, "epochs": 20, "warmup_epochs": 5 if warmup else 0},
            "scaling": {"checkpoint_every": 20, "cpus_per_worker": 2}}


_PAPER, _CPU = "(LVAE paper table)", "sized for 2 CPU cores"
_FASHION = "the MNIST row on Fashion-MNIST, sized for 2 CPU cores"
register_preset("vae-mnist-5l", f"VAE 5 layers on MNIST {_PAPER}", _row("vae", "off", False, "mnist"))
register_preset("vae-bn-mnist-5l", f"VAE + BN 5 layers on MNIST {_PAPER}", _row("vae", "full_train", False, "mnist"))
register_preset("vae-bn-wu-mnist-5l", f"VAE + BN + WU 5 layers on MNIST {_PAPER}",
                _row("vae", "full_train", True, "mnist"))
register_preset("lvae-bn-wu-mnist-5l", f"LVAE + BN + WU 5 layers on MNIST {_PAPER}",
                _row("lvae", "full_train", True, "mnist"))
register_preset("vae-omniglot-5l", f"VAE 5 layers on OMNIGLOT {_PAPER}", _row("vae", "off", False, "omniglot"))
register_preset("vae-bn-omniglot-5l", f"VAE + BN 5 layers on OMNIGLOT {_PAPER}",
                _row("vae", "full_train", False, "omniglot"))
register_preset("vae-bn-wu-omniglot-5l", f"VAE + BN + WU 5 layers on OMNIGLOT {_PAPER}",
                _row("vae", "full_train", True, "omniglot"))
register_preset("lvae-bn-wu-omniglot-5l", f"LVAE + BN + WU 5 layers on OMNIGLOT {_PAPER}",
                _row("lvae", "full_train", True, "omniglot"))
register_preset("vae-norb-5l", f"VAE 5 layers on NORB {_PAPER}", _row("vae", "off", False, "norb"))
register_preset("vae-bn-norb-5l", f"VAE + BN 5 layers on NORB {_PAPER}", _row("vae", "full_train", False, "norb"))
register_preset("vae-bn-wu-norb-5l", f"VAE + BN + WU 5 layers on NORB {_PAPER}",
                _row("vae", "full_train", True, "norb"))
register_preset("lvae-bn-wu-norb-5l", f"LVAE + BN + WU 5 layers on NORB {_PAPER}",
                _row("lvae", "full_train", True, "norb"))

register_preset("vae-mnist-5l-cpu", f"VAE 5 layers, {_FASHION}", _row_cpu("vae", "off", False, "mnist"))
register_preset("vae-bn-mnist-5l-cpu", f"VAE + BN 5 layers, {_FASHION}", _row_cpu("vae", "full_train", False, "mnist"))
register_preset("vae-bn-wu-mnist-5l-cpu", f"VAE + BN + WU 5 layers, {_FASHION}",
                _row_cpu("vae", "full_train", True, "mnist"))
register_preset("lvae-bn-wu-mnist-5l-cpu", f"LVAE + BN + WU 5 layers, {_FASHION}",
                _row_cpu("lvae", "full_train", True, "mnist"))
register_preset("vae-omniglot-5l-cpu", f"VAE 5 layers on OMNIGLOT, {_CPU}", _row_cpu("vae", "off", False, "omniglot"))
register_preset("vae-bn-omniglot-5l-cpu", f"VAE + BN 5 layers on OMNIGLOT, {_CPU}",
                _row_cpu("vae", "full_train", False, "omniglot"))
register_preset("vae-bn-wu-omniglot-5l-cpu", f"VAE + BN + WU 5 layers on OMNIGLOT, {_CPU}",
                _row_cpu("vae", "full_train", True, "omniglot"))
register_preset("lvae-bn-wu-omniglot-5l-cpu", f"LVAE + BN + WU 5 layers on OMNIGLOT, {_CPU}",
                _row_cpu("lvae", "full_train", True, "omniglot"))
register_preset("vae-norb-5l-cpu", f"VAE 5 layers on NORB, {_CPU}", _row_cpu("vae", "off", False, "norb"))
register_preset("vae-bn-norb-5l-cpu", f"VAE + BN 5 layers on NORB, {_CPU}",
                _row_cpu("vae", "full_train", False, "norb"))
register_preset("vae-bn-wu-norb-5l-cpu", f"VAE + BN + WU 5 layers on NORB, {_CPU}",
                _row_cpu("vae", "full_train", True, "norb"))
register_preset("lvae-bn-wu-norb-5l-cpu", f"LVAE + BN + WU 5 layers on NORB, {_CPU}",
                _row_cpu("lvae", "full_train", True, "norb"))
