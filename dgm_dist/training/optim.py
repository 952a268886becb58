"""The optimizer and gradient clipping of the original codes, shared by the training loop and the
benchmarks (no Ray here, so a bare GPU machine can import it)."""

from __future__ import annotations

import torch


class LasagneRMSprop(torch.optim.Optimizer):
    """Lasagne's `rmsprop` (the RNN-SPN code's optimizer), update rule and constants:

        acc = rho * acc + (1 - rho) * g^2;   p -= lr * g / sqrt(acc + eps)

    with eps INSIDE the square root (docs/training.md). PyTorch's RMSprop adds eps outside,
    lr * g / (sqrt(acc) + eps): with eps = 1e-6 a parameter whose gradients are far below 1e-3 then
    takes steps of about lr / sqrt(1 - rho) whatever their size (a sign step); here such a
    parameter's steps shrink with its gradient (lr * g / sqrt(eps) at most)."""

    def __init__(self, params, lr: float, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, rho, eps, decay = group["lr"], group["rho"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if not decay else p.grad.add(p, alpha=decay)
                state = self.state[p]
                if not state:
                    state["acc"] = torch.zeros_like(p)
                acc = state["acc"]
                acc.mul_(rho).addcmul_(g, g, value=1 - rho)
                p.addcdiv_(g, acc.add(eps).sqrt_(), value=-lr)
        return loss


def make_optimizer(optim_cfg, params) -> torch.optim.Optimizer:
    if optim_cfg.optimizer == "rmsprop_lasagne":   # the RNN-SPN code's: rho 0.9, epsilon 1e-6 inside the root
        return LasagneRMSprop(params, lr=optim_cfg.lr, rho=0.9, eps=1e-6, weight_decay=optim_cfg.weight_decay)
    if optim_cfg.optimizer == "rmsprop":   # PyTorch's update rule with Lasagne's constants
        return torch.optim.RMSprop(params, lr=optim_cfg.lr, alpha=0.9, eps=1e-6, weight_decay=optim_cfg.weight_decay)
    kind = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optim_cfg.optimizer]
    return kind(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)


def clip_gradients(params, optim_cfg) -> torch.Tensor:
    """Total-norm constraint and elementwise clipping in the configured order (ADGM code: norm then
    value; RNN-SPN code: value then norm). Returns the total gradient norm before any clipping,
    which is non-finite when any gradient is, as a tensor on the gradients' device (reading it is
    left to the caller: on a GPU it is a host sync)."""
    params = [p for p in params if p.grad is not None]
    raw = torch.nn.utils.get_total_norm([p.grad for p in params])
    if optim_cfg.clip_order == "value_then_norm":
        if optim_cfg.clip_value:
            torch.nn.utils.clip_grad_value_(params, optim_cfg.clip_value)
        if optim_cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(params, optim_cfg.clip_norm)
    else:
        if optim_cfg.clip_norm:
            torch.nn.utils.clip_grads_with_norm_(params, optim_cfg.clip_norm, raw)   # reuses the norm
        if optim_cfg.clip_value:
            torch.nn.utils.clip_grad_value_(params, optim_cfg.clip_value)
    return raw
