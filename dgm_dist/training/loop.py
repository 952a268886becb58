"""The per-worker training loop: one function, run by every Ray Train worker (or in-process in
local mode), readable top to bottom.

What makes resume exact: every random draw of an epoch derives from (seed, epoch, rank)
(`data.epoch_seed`), the LR and KL warm-up are functions of the epoch and the optimizer step, and a
checkpoint at the end of an epoch holds the model, the optimizer, the epoch and the step. A run
restarted from it repeats what the uninterrupted run did, bit for bit on one CPU worker.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from dgm_dist.config import Config, to_dict
from dgm_dist.data import load_from_config
from dgm_dist.data.pixels import to_unit
from dgm_dist.errors import DivergedError
from dgm_dist.models.registry import build_model, model_spec
from dgm_dist.training import data as training_data
from dgm_dist.training import schedules, state
from dgm_dist.training.evaluation import evaluate_model
from dgm_dist.training.figures import write_figures
from dgm_dist.training.optim import clip_gradients, make_optimizer


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg: Config = config["cfg"]
    local_dir = Path(config["local_dir"]) if config.get("local_dir") else None   # local mode only
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    checkpoint = ray.train.get_checkpoint()          # once, at the top (docs/training.md)

    # ---- data and model -------------------------------------------------------------------------
    spec = model_spec(cfg.model.name)
    dataset = load_from_config(cfg.data, download=False)          # the driver has cached it
    data = training_data.prepare(dataset, cfg.data, spec.streams)
    torch.manual_seed(cfg.seed)                                   # same initial weights on every rank
    model = ray.train.torch.prepare_model(build_model(cfg.model, data.info))   # DDP when world > 1
    device = ray.train.torch.get_device()
    optimizer = make_optimizer(cfg.optim, model.parameters())
    steps_per_epoch = training_data.steps_per_epoch(data, cfg.optim.batch_size, world)
    warmup_total = schedules.warmup_steps(cfg.optim.warmup_epochs, steps_per_epoch)

    start_epoch, step, best = 0, 0, None
    checkpoint_dir = _local_latest(local_dir) if local_dir and checkpoint is None else None
    with ExitStack() as stack:
        if checkpoint is not None:
            checkpoint_dir = Path(stack.enter_context(checkpoint.as_directory()))
        if checkpoint_dir is not None:
            saved = state.load(checkpoint_dir)
            start_epoch, step = state.restore(saved, model, optimizer, generators={})
            best = saved["extra"].get("best")
            last = saved["extra"].get("metrics") or {}
            if start_epoch >= cfg.optim.epochs or last.get("stopped_early"):
                # the run had finished when its driver died (a Tune driver killed after the last
                # checkpoint, before Tune recorded the trial as done): report its final result again,
                # so the restarted driver sees it, instead of reporting nothing
                again = None
                if rank == 0:
                    again = _checkpoint_dir(local_dir, start_epoch - 1)
                    shutil.copytree(checkpoint_dir, again, dirs_exist_ok=True)
                _report(dict(last), again, config)
                return

    # ---- epochs ---------------------------------------------------------------------------------
    first_step_at, first_step_reported, out_of_time, report_due = None, False, False, True
    deadline = config.get("deadline") or math.inf      # --max-minutes, from the driver's start
    for epoch in range(start_epoch, cfg.optim.epochs):
        generator = torch.Generator().manual_seed(training_data.epoch_seed(cfg.seed, epoch, rank))
        torch.manual_seed(training_data.epoch_seed(cfg.seed, epoch, rank) + 1)       # dropout etc.
        lr = schedules.learning_rate(cfg.optim.lr, epoch, cfg.optim.lr_decay, cfg.optim.lr_decay_every,
                                     cfg.optim.lr_min, cfg.optim.lr_decay_start)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        if report_due:
            sums: dict[str, torch.Tensor] = {}             # train metrics since the last report
            seconds, epochs_since = 0.0, 0
        started = time.perf_counter()
        batches = training_data.epoch_batches(data, epoch, rank, world, cfg.optim.batch_size,
                                              cfg.optim.labelled_batch_size, cfg.seed)
        for i, batch in enumerate(batches):
            _maybe_kill(config.get("kill_at"), epoch, i, rank)
            batch = {k: _input(v, k, data.dynamic_binarize, generator).to(device) for k, v in batch.items()}
            examples = len(batch.get("x_unlabelled", batch["x"]))   # an epoch is a pass over this stream
            if spec.kl_weight:
                batch["kl_weight"] = schedules.kl_weight(step, warmup_total)
            loss, terms = model(**batch)          # forward = the loss, so DDP syncs gradients
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_gradients(model.parameters(), cfg.optim)
            nonfinite, out_of_time = _any_rank(
                [not (math.isfinite(loss.item()) and math.isfinite(grad_norm)), time.time() > deadline], world, device)
            if nonfinite:
                why = _describe_nonfinite(epoch + 1, step + 1, loss, grad_norm, terms)
                if config.get("raise_nonfinite"):          # a Tune trial: the trial fails, the study goes on
                    raise DivergedError(why)
                _report({"epoch": epoch + 1, "step": step, "nonfinite": why}, None, config)
                return                 # every rank stops here; the last good checkpoint stays
            optimizer.step()
            step += 1
            first_step_at = first_step_at or time.time()
            terms = {"loss_sum": loss.detach().double() * examples, "examples": examples, **terms}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + torch.as_tensor(v, dtype=torch.float64, device=device)
            if out_of_time:
                break                  # the budget is spent: a final evaluation and checkpoint follow
        seconds += time.perf_counter() - started
        epochs_since += 1
        last = epoch + 1 == cfg.optim.epochs or out_of_time
        evaluate_now = (epoch + 1) % cfg.scaling.checkpoint_every == 0 or last
        report_due = evaluate_now or (epoch + 1) % cfg.scaling.report_every == 0
        if not report_due:
            continue                   # same decision on every rank: reports are barriers

        metrics = {"epoch": epoch + 1, "step": step, "lr": lr, "epoch_seconds": seconds / epochs_since,
                   **_train_metrics(sums, world, seconds, device)}
        if first_step_at and not first_step_reported:
            metrics["first_step_at"], first_step_reported = first_step_at, True
        if out_of_time:
            metrics["stopped_at_budget"] = 1
        checkpoint_out = None
        stop_early = False
        if evaluate_now:
            metrics.update(evaluate(model, data, cfg.optim.batch_size, device))
            best = track_best(best, metrics, spec)
            if best:
                metrics.update(best["metrics"])
                stop_early = bool(cfg.optim.patience) and epoch + 1 - best["epoch"] >= cfg.optim.patience
            if stop_early:
                metrics["stopped_early"] = 1
            if rank == 0:                                      # only rank 0 writes; all ranks report
                checkpoint_out = _checkpoint_dir(local_dir, epoch)
                saved = state.capture(model, optimizer, epoch=epoch, global_step=step, generators={}, extra={
                    "config": to_dict(cfg), "data_info": to_dict(data.info), "metrics": metrics,
                    "warmup_steps": warmup_total, "best": best})
                state.save(saved, checkpoint_out)
                if last or stop_early:
                    write_figures(state.unwrap(model), data, checkpoint_out / "figures", device, metrics)
        _report(metrics, checkpoint_out, config)
        if out_of_time or stop_early:
            return


# ---- pieces of the loop --------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, data: training_data.TrainingData, batch_size: int, device) -> dict[str, float]:
    """Full validation and test sets, sharded over the workers without padding, all-reduced."""
    net = state.unwrap(model)
    if hasattr(net, "prepare_evaluation"):         # e.g. batch-norm statistics of the full training set
        net.prepare_evaluation(training_data.training_inputs(data).to(device))
    net.eval()
    out = {}
    for split, (x, y) in data.eval_sets.items():
        sums = evaluate_model(net, x, y, max(batch_size, 500), device)
        out.update({f"{split}_{k}": v for k, v in sums.items()})
    return out


def track_best(best: dict | None, metrics: dict[str, float], spec) -> dict | None:
    """The epoch with the best validation figure so far, and its validation and test figures
    (`best_epoch`, `best_valid_<metric>`, `best_test_<metric>`), which early stopping and model
    selection read. Runs without a validation set have none."""
    key = f"valid_{spec.main_metric}"
    if key not in metrics:
        return best
    value = metrics[key]
    better = best is None or (value < best["value"] if spec.mode == "min" else value > best["value"])
    if not better:
        return best
    test = metrics.get(f"test_{spec.main_metric}")
    return {"value": value, "epoch": metrics["epoch"], "metrics": {
        "best_epoch": metrics["epoch"], f"best_{key}": value,
        **({f"best_test_{spec.main_metric}": test} if test is not None else {})}}


def _input(x: torch.Tensor, key: str, dynamic_binarize: bool, generator: torch.Generator) -> torch.Tensor:
    if key == "y":
        return x
    x = to_unit(x)
    return torch.bernoulli(x, generator=generator) if dynamic_binarize else x


def _any_rank(flags: list[bool], world: int, device) -> list[bool]:
    """Each flag true on every rank if it is true on any (so all ranks stop at the same step).
    Collectives run on the worker's device: NCCL (GPU workers) reduces CUDA tensors only."""
    if world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _describe_nonfinite(epoch: int, step: int, loss, grad_norm: float, terms: dict) -> str:
    values = ", ".join(f"{k}={float(v):.6g}" for k, v in terms.items())
    return (f"non-finite loss at epoch {epoch}, step {step}: loss={loss.item():.6g}, "
            f"gradient norm={grad_norm:.6g} (this worker's batch: {values})")


def _train_metrics(sums: dict[str, torch.Tensor], world: int, seconds: float, device) -> dict[str, float]:
    keys = sorted(sums)
    packed = torch.stack([sums[k].double().to(device) for k in keys]) if keys else \
        torch.zeros(0, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(packed)                  # on the device: NCCL reduces CUDA tensors only
    totals = dict(zip(keys, packed.tolist(), strict=True))
    n = totals.pop("examples", 0) or 1
    out = {f"train_{k.removesuffix('_sum')}": v / n for k, v in totals.items()}
    out["throughput"] = n / seconds if seconds > 0 else 0.0      # examples/s over all workers
    return out


def _report(metrics: dict[str, Any], checkpoint_dir: Path | None, config: dict[str, Any]) -> None:
    """Every rank calls this the same number of times (`ray.train.report` is a barrier)."""
    sink = config.get("sink")
    if sink is not None:                                   # local mode: the driver is this process
        sink(metrics, str(checkpoint_dir) if checkpoint_dir else None)
        ray.train.report(metrics)
        return
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                     if checkpoint_dir else None)
    if checkpoint_dir is not None:     # uploaded to the run's storage by now (synchronous report)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _checkpoint_dir(local_dir: Path | None, epoch: int) -> Path:
    if local_dir is None:              # Ray copies it into the run's storage; see _report
        return Path(tempfile.mkdtemp(prefix="dgm-checkpoint-"))
    path = local_dir / f"checkpoint_epoch={epoch + 1:06d}"
    for old in sorted(local_dir.glob("checkpoint_epoch=*"))[:-1]:   # keep this one and the previous
        shutil.rmtree(old)
    return path


def _local_latest(local_dir: Path) -> Path | None:
    found = sorted(p for p in local_dir.glob("checkpoint_epoch=*") if (p / state.STATE_FILE).exists())
    return found[-1] if found else None


def _maybe_kill(kill_at, epoch: int, step_in_epoch: int, rank: int) -> None:
    """Fault drill: SIGKILL this worker once at (epoch, step, rank); `marker` records that it happened."""
    if not kill_at:
        return
    (e, s, r), marker = kill_at["at"], Path(kill_at["marker"])
    if (epoch + 1, step_in_epoch, rank) == (e, s, r) and not marker.exists():
        marker.write_text(f"killed rank {rank} at epoch {epoch + 1}, step {step_in_epoch}\n")
        os.kill(os.getpid(), signal.SIGKILL)
