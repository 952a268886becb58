"""The papers' models as their presets build them, with one training step and one evaluation batch
each, on inputs of the right shape and kind (random: values do not change the cost of these
models). Shared by the profiler (`profile_step.py`) and the GPU check (`gpu_check.py`), so both
measure what the training loop does: the preset's optimizer, gradient clipping and batch sizes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from dgm_dist.config import load_config
from dgm_dist.models.registry import DataInfo, build_model, model_spec
from dgm_dist.training.optim import clip_gradients, make_optimizer

SINGLE = DataInfo((28, 28), 10, None, 50_000, 100)
SEQUENCE = DataInfo((100, 100), 10, 3)
PRESETS = {            # family: (preset, data) -- the papers' sizes and recipes
    "adgm": ("adgm-mnist100", SINGLE),
    "sdgm": ("sdgm-mnist100", SINGLE),
    "lvae": ("lvae-bn-wu-mnist-5l", SINGLE),
    "rnn_spn": ("rnn-spn-seq3", SEQUENCE),
}


@dataclass
class Workload:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    optim_cfg: object
    batch: dict[str, torch.Tensor]                 # what the loop passes to model(**batch)
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    examples: int = field(init=False)              # examples per step (the stream an epoch passes over)

    def __post_init__(self):
        self.examples = len(self.batch.get("x_unlabelled", self.batch["x"]))

    def train_step(self, model: torch.nn.Module | None = None) -> torch.Tensor:
        """One step as the loop takes it; `model` may be a compiled wrapper of `self.model`."""
        loss, _ = (self.model if model is None else model)(**self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.model.parameters(), self.optim_cfg)
        self.optimizer.step()
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, torch.Tensor]:
        return self.model.eval_sums(self.eval_x, self.eval_y)


def build(name: str, device: str | torch.device = "cpu", eval_batch: int = 500, overrides=()) -> Workload:
    preset, info = PRESETS[name]
    cfg = load_config(preset, overrides=list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg.model, info).to(device)
    g = torch.Generator().manual_seed(0)
    n = cfg.optim.batch_size

    def images(k):          # binarized for the single-image models (dynamic binarization), grey for sequences
        x = torch.rand(k, *info.image_shape, generator=g)
        return x.bernoulli(generator=g) if info.sequence_length is None else x

    def labels(k):
        shape = (k,) if info.sequence_length is None else (k, info.sequence_length)
        return torch.randint(0, info.num_classes, shape, generator=g)

    streams = model_spec(cfg.model.name).streams
    if streams == "semi_supervised":
        batch = {"x": images(cfg.optim.labelled_batch_size), "y": labels(cfg.optim.labelled_batch_size),
                 "x_unlabelled": images(n)}
    else:
        batch = {"x": images(n), "y": labels(n)}
    if model_spec(cfg.model.name).kl_weight:
        batch["kl_weight"] = 0.5
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    model.train()
    return Workload(name, model, make_optimizer(cfg.optim, model.parameters()), cfg.optim, batch,
                    images(eval_batch).to(device), labels(eval_batch).to(device))


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def rate(fn, examples: int, steps: int, device="cpu") -> float:
    """Examples/s of `steps` calls of `fn` (after the caller's warm-up)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return steps * examples / (time.perf_counter() - start)
