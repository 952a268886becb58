"""The per-worker training loop, run by every Ray Train worker (or in-process in local mode).

`train_loop_per_worker` reads top to bottom; the Ray integration points are numbered as in Ray's
own examples: (1) this worker's place in the group and the checkpoint to resume from, (2) the model
wrapped for DDP and the worker's device, (3) `ray.train.report` with a checkpoint, a barrier that
every rank reaches equally often. The per-epoch cadence — train, evaluate, checkpoint, report,
stop — is the small functions below it.

What makes resume exact: every random draw of an epoch derives from (seed, epoch, rank)
(`data.epoch_seed`), the LR and KL warm-up are functions of the epoch and the optimizer step, and a
checkpoint at the end of an epoch holds the model, the optimizer, the epoch and the step. A run
restarted from it repeats what the uninterrupted run did, bit for bit on one CPU worker.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
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
from dgm_dist.training import denormals, schedules, state
from dgm_dist.training.evaluation import evaluate_model
from dgm_dist.training.figures import write_figures
from dgm_dist.training.optim import clip_gradients, make_optimizer


@dataclass(frozen=True)
class LoopOptions:
    """What the driver hands every worker besides the config (`train_loop_config={"options": ...}`)."""

    cfg: Config
    deadline: float = math.inf            # --max-minutes: the time.time() at which the run stops
    raise_nonfinite: bool = False         # a Tune trial: a non-finite loss fails the trial (the study goes on)
    local_dir: str | None = None          # local mode: checkpoints are kept here ...
    sink: Callable[[dict, str | None], None] | None = None   # ... and each report goes to the driver's monitor
    batches_hook: Callable[..., Iterable] | None = None      # tests: wraps each epoch's batches (fault drills)
    check_every: int = 1                  # steps between the ranks' agreement on finiteness and the deadline
    progress: Callable[[dict], None] | None = None   # rank 0's position inside an epoch, for the driver's bar
    progress_seconds: float = 1.0         # at most one progress update this often (one host sync each)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    opts: LoopOptions = config["options"]
    cfg = opts.cfg
    # (1) Ray: this worker's place in the group, and the checkpoint to resume from (once, at the top:
    # docs/training.md)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    checkpoint = ray.train.get_checkpoint()

    # before any parallel op, so that the intra-op threads take the flags (docs/training.md)
    flushed = denormals.flush_denormals(cfg.scaling.flush_denormal)
    run = _Run.build(cfg, rank, world)                 # (2) Ray: prepare_model (DDP) and the device
    run.subnormals_flushed = bool(flushed)
    with ExitStack() as stack:
        resume_from = _checkpoint_to_resume(checkpoint, opts, stack)
        saved = state.load(resume_from) if resume_from is not None else None
        if saved is not None and run.resume(saved):
            _report_again(resume_from, saved, opts, rank)   # it had finished: report its result again
            return

    window = _Window()
    for epoch in range(run.epoch, cfg.optim.epochs):
        lr = run.start_epoch(epoch)
        problem, out_of_time = train_epoch(run, opts, epoch, window)
        if problem:
            if opts.raise_nonfinite:
                raise DivergedError(problem)
            _report({"epoch": epoch + 1, "step": run.step, "nonfinite": problem}, None, opts)
            return                     # every rank stops here; the last good checkpoint stays
        last = epoch + 1 == cfg.optim.epochs or out_of_time
        evaluate_now = (epoch + 1) % cfg.scaling.checkpoint_every == 0 or last
        if not (evaluate_now or (epoch + 1) % cfg.scaling.report_every == 0):
            continue                   # the same decision on every rank: reports are barriers

        metrics = window.close(run, epoch, lr, out_of_time)
        checkpoint_out, stop_early = None, False
        if evaluate_now:
            stop_early = evaluate_and_select(run, metrics)
            if rank == 0:              # only rank 0 writes; every rank reports
                checkpoint_out = save_checkpoint(run, metrics, opts, figures=last or stop_early)
        _report(metrics, checkpoint_out, opts)         # (3) Ray: report, with the checkpoint
        if out_of_time or stop_early:
            return


# ---- the run's state on this worker ----------------------------------------------------------------

@dataclass
class _Run:
    cfg: Config
    rank: int
    world: int
    spec: Any
    data: training_data.TrainingData
    model: torch.nn.Module
    device: torch.device
    optimizer: torch.optim.Optimizer
    warmup_total: int
    steps_per_epoch: int = 0
    epoch: int = 0                     # the first epoch still to train
    step: int = 0                      # optimizer steps taken
    best: dict | None = None           # the best validation epoch so far (track_best)
    first_step_at: float | None = None
    subnormals_flushed: bool = False   # every intra-op thread flushes subnormal floats to 0
    generator: torch.Generator | None = None    # this epoch's draws (start_epoch)

    @classmethod
    def build(cls, cfg: Config, rank: int, world: int) -> _Run:
        spec = model_spec(cfg.model.name)
        data = training_data.prepare(load_from_config(cfg.data, download=False), cfg.data, spec.streams)
        torch.manual_seed(cfg.seed)                    # the same initial weights on every rank
        model = ray.train.torch.prepare_model(build_model(cfg.model, data.info))   # DDP when world > 1
        optimizer = make_optimizer(cfg.optim, model.parameters())
        steps = training_data.steps_per_epoch(data, cfg.optim.batch_size, world)
        return cls(cfg, rank, world, spec, data, model, ray.train.torch.get_device(), optimizer,
                   schedules.warmup_steps(cfg.optim.warmup_epochs, steps), steps)

    def resume(self, saved: dict) -> bool:
        """Continue from a checkpoint; True when the run it holds had already finished."""
        self.epoch, self.step = state.restore(saved, self.model, self.optimizer, generators={})
        self.best = saved["extra"].get("best")
        last = saved["extra"].get("metrics") or {}
        return self.epoch >= self.cfg.optim.epochs or bool(last.get("stopped_early"))

    def start_epoch(self, epoch: int) -> float:
        """Seed the epoch's draws, set its learning rate; returns the rate."""
        o = self.cfg.optim
        self.generator = torch.Generator().manual_seed(training_data.epoch_seed(self.cfg.seed, epoch, self.rank))
        torch.manual_seed(training_data.epoch_seed(self.cfg.seed, epoch, self.rank) + 1)    # dropout etc.
        lr = schedules.learning_rate(o.lr, epoch, o.lr_decay, o.lr_decay_every, o.lr_min, o.lr_decay_start)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        return lr


@dataclass
class _Window:
    """The training metrics since the last report (reports can be several epochs apart)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    epochs: int = 0
    first_step_reported: bool = False

    def add(self, terms: dict[str, Any], device) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0) + torch.as_tensor(v, dtype=torch.float64, device=device)

    def close(self, run: _Run, epoch: int, lr: float, out_of_time: bool) -> dict[str, Any]:
        """The report's metrics; the window starts again empty."""
        metrics = {"epoch": epoch + 1, "step": run.step, "lr": lr, "epoch_seconds": self.seconds / self.epochs,
                   "subnormals_flushed": int(run.subnormals_flushed),
                   **_train_metrics(self.sums, run.world, self.seconds, run.device)}
        if run.first_step_at and not self.first_step_reported:
            metrics["first_step_at"], self.first_step_reported = run.first_step_at, True
        if out_of_time:
            metrics["stopped_at_budget"] = 1
        self.sums, self.seconds, self.epochs = {}, 0.0, 0
        return metrics


# ---- the cadence of an epoch: train, evaluate, checkpoint, report -------------------------------------

def train_epoch(run: _Run, opts: LoopOptions, epoch: int, window: _Window) -> tuple[str | None, bool]:
    """One pass over the epoch's batches. Returns (why the loss or a gradient became non-finite, or
    None; whether the time budget ran out). The ranks agree on both every `opts.check_every` steps
    and at the end of the epoch, so they stop at the same step and nothing non-finite reaches an
    evaluation or a checkpoint. With `check_every=1` (CPU runs) the check names the exact step and
    its loss terms; larger values save the host sync per step that a GPU would otherwise wait on."""
    cfg, model, device = run.cfg, run.model, run.device
    started = time.perf_counter()
    batches = training_data.epoch_batches(run.data, epoch, run.rank, run.world, cfg.optim.batch_size,
                                          cfg.optim.labelled_batch_size, cfg.seed)
    if opts.batches_hook is not None:
        batches = opts.batches_hook(batches, epoch=epoch, rank=run.rank)
    finite = torch.ones((), dtype=torch.bool, device=device)    # every step since the last check
    checked_at, out_of_time = run.step, False
    progress = _Progress(opts, run, epoch, started) if run.rank == 0 and opts.progress else None
    for i, batch in enumerate(batches):
        batch = {k: _input(v, k, run.data.dynamic_binarize, run.generator).to(device) for k, v in batch.items()}
        examples = len(batch.get("x_unlabelled", batch["x"]))   # an epoch is a pass over this stream
        if run.spec.kl_weight:
            batch["kl_weight"] = schedules.kl_weight(run.step, run.warmup_total)
        loss, terms = model(**batch)          # forward = the loss, so DDP syncs gradients
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(model.parameters(), cfg.optim)
        finite = finite & torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
        if (i + 1) % opts.check_every == 0:
            bad, out_of_time = _any_rank([not finite.item(), time.time() > opts.deadline], run.world, device)
            if bad:
                return _describe_nonfinite(epoch + 1, checked_at, run.step + 1, loss, grad_norm, terms), False
            checked_at = run.step + 1
        run.optimizer.step()
        run.step += 1
        run.first_step_at = run.first_step_at or time.time()
        window.add({"loss_sum": loss.detach().double() * examples, "examples": examples, **terms}, device)
        if progress is not None:
            progress.step(i + 1, examples, loss)
        if out_of_time:
            break                      # the budget is spent: a final evaluation and checkpoint follow
    if checked_at < run.step:          # the steps since the last check, at the epoch's end
        bad, late = _any_rank([not finite.item(), time.time() > opts.deadline], run.world, device)
        if bad:
            return _describe_nonfinite(epoch + 1, checked_at, run.step, loss, grad_norm, terms), False
        out_of_time = out_of_time or late
    window.seconds += time.perf_counter() - started
    window.epochs += 1
    return None, out_of_time


class _Progress:
    """Rank 0's position inside the epoch, handed to `opts.progress` at most every
    `opts.progress_seconds` (reading the loss is a host sync, so not every step)."""

    def __init__(self, opts: LoopOptions, run: _Run, epoch: int, started: float):
        self.opts, self.run, self.epoch, self.started = opts, run, epoch, started
        self.examples, self.last = 0, started

    def step(self, batch: int, examples: int, loss: torch.Tensor) -> None:
        self.examples += examples
        now = time.perf_counter()
        if now - self.last < self.opts.progress_seconds and batch < self.run.steps_per_epoch:
            return
        self.last = now
        seconds = now - self.started
        self.opts.progress({"epoch": self.epoch + 1, "epochs": self.run.cfg.optim.epochs, "batch": batch,
                            "batches": self.run.steps_per_epoch, "step": self.run.step, "loss": float(loss.detach()),
                            "examples_per_s": self.examples * self.run.world / max(seconds, 1e-9),
                            "seconds": seconds})


def evaluate_and_select(run: _Run, metrics: dict[str, Any]) -> bool:
    """Evaluate on the whole validation and test sets into `metrics`, track the best validation
    epoch; returns whether early stopping (`optim.patience`) ends the run here."""
    metrics.update(evaluate(run.model, run.data, run.cfg.optim.batch_size, run.device))
    run.best = track_best(run.best, metrics, run.spec)
    stop = False
    if run.best:
        metrics.update(run.best["metrics"])
        stop = bool(run.cfg.optim.patience) and metrics["epoch"] - run.best["epoch"] >= run.cfg.optim.patience
    if stop:
        metrics["stopped_early"] = 1
    return stop


def save_checkpoint(run: _Run, metrics: dict[str, Any], opts: LoopOptions, figures: bool) -> Path:
    """Rank 0's checkpoint of the epoch just evaluated (and, at the end, the model's figures)."""
    out = _checkpoint_dir(opts.local_dir, metrics["epoch"] - 1)
    saved = state.capture(run.model, run.optimizer, epoch=metrics["epoch"] - 1, global_step=run.step, generators={},
                          extra={"config": to_dict(run.cfg), "data_info": to_dict(run.data.info),
                                 "metrics": metrics, "warmup_steps": run.warmup_total, "best": run.best})
    state.save(saved, out)
    if figures:
        write_figures(state.unwrap(run.model), run.data, out / "figures", run.device, metrics)
    return out


def _checkpoint_to_resume(checkpoint, opts: LoopOptions, stack: ExitStack) -> Path | None:
    """The directory to resume from: Ray's checkpoint, or in local mode the newest one on disk."""
    if checkpoint is not None:
        return Path(stack.enter_context(checkpoint.as_directory()))
    return _local_latest(Path(opts.local_dir)) if opts.local_dir else None


def _report_again(directory: Path, saved: dict, opts: LoopOptions, rank: int) -> None:
    """The run had finished when its driver died (a Tune driver killed after the last checkpoint,
    before Tune recorded the trial as done): report its final result again, so the restarted driver
    sees it, instead of reporting nothing."""
    again = None
    if rank == 0:
        again = _checkpoint_dir(opts.local_dir, saved["epoch"])
        if again.resolve() != Path(directory).resolve():   # local mode resumes from that very directory
            shutil.copytree(directory, again, dirs_exist_ok=True)
    _report(dict(saved["extra"].get("metrics") or {}), again, opts)


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


def _describe_nonfinite(epoch: int, checked_at: int, step: int, loss, grad_norm, terms: dict) -> str:
    values = ", ".join(f"{k}={float(v):.6g}" for k, v in terms.items())
    where = f"step {step}" if step == checked_at + 1 else f"one of steps {checked_at + 1}-{step}"
    return (f"non-finite loss at epoch {epoch}, {where}: loss={loss.item():.6g}, "
            f"gradient norm={float(grad_norm):.6g} (this worker's batch: {values})")


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


def _report(metrics: dict[str, Any], checkpoint_dir: Path | None, opts: LoopOptions) -> None:
    """Every rank calls this the same number of times (`ray.train.report` is a barrier)."""
    if opts.sink is not None:                              # local mode: the driver is this process
        opts.sink(metrics, str(checkpoint_dir) if checkpoint_dir else None)
        ray.train.report(metrics)
        return
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                     if checkpoint_dir else None)
    if checkpoint_dir is not None:     # uploaded to the run's storage by now (synchronous report)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _checkpoint_dir(local_dir: str | None, epoch: int) -> Path:
    if local_dir is None:              # Ray copies it into the run's storage; see _report
        # named after the run, so a leftover says whose it is (and a test can find its own)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", ray.train.get_context().get_experiment_name())[:60]
        return Path(tempfile.mkdtemp(prefix=f"dgm-checkpoint-{name}-"))
    local_dir = Path(local_dir)
    path = local_dir / f"checkpoint_epoch={epoch + 1:06d}"
    for old in sorted(local_dir.glob("checkpoint_epoch=*"))[:-1]:   # keep this one and the previous
        shutil.rmtree(old)
    return path


def _local_latest(local_dir: Path) -> Path | None:
    found = sorted(p for p in local_dir.glob("checkpoint_epoch=*") if (p / state.STATE_FILE).exists())
    return found[-1] if found else None
