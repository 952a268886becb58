"""The optimizer and gradient clipping of the original codes, shared by the training loop and the
benchmarks (no Ray here, so a bare GPU machine can import it)."""

from __future__ import annotations

import torch


def make_optimizer(optim_cfg, params) -> torch.optim.Optimizer:
    if optim_cfg.optimizer == "rmsprop":   # Lasagne's rmsprop (the RNN-SPN code): rho 0.9, epsilon 1e-6
        return torch.optim.RMSprop(params, lr=optim_cfg.lr, alpha=0.9, eps=1e-6, weight_decay=optim_cfg.weight_decay)
    kind = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optim_cfg.optimizer]
    return kind(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)


def clip_gradients(params, optim_cfg) -> float:
    """Total-norm constraint and elementwise clipping in the configured order (ADGM code: norm then
    value; RNN-SPN code: value then norm). Returns the total gradient norm before any clipping,
    which is non-finite when any gradient is."""
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
    return raw.item()
