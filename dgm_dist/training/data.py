"""Training data for the per-worker loop: the splits a run uses, and the batches of one epoch.

Images stay in their stored dtype (uint8 for most sets: 60 000 cluttered 100x100 images are 0.6 GB
as uint8, 2.4 GB as float32) and are converted per batch. Batches are index slices of in-memory
tensors, sharded by a `DistributedSampler` per stream; there is no DataLoader, whose per-example
collation costs more than these small models' steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DistributedSampler

from dgm_dist.data.catalog import Dataset
from dgm_dist.data.holdout import default_holdout
from dgm_dist.data.pixels import to_unit
from dgm_dist.data.splits import semi_supervised_split, static_binarize
from dgm_dist.errors import ConfigError
from dgm_dist.models.registry import DataInfo


@dataclass
class TrainingData:
    info: DataInfo
    train_x: torch.Tensor                   # every training example not held out for validation
    train_y: torch.Tensor
    labelled: torch.Tensor                  # indices into train_* of the labelled stream
    unlabelled: torch.Tensor | None         # indices of the unlabelled stream (semi-supervised models)
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]   # "valid", "test"
    dynamic_binarize: bool                  # a fresh Bernoulli sample of every training batch
    classes: tuple[str, ...] = ()


def data_info(ds: Dataset) -> DataInfo:
    x, y = ds.split("train")
    return DataInfo(tuple(x.shape[1:]), ds.num_classes, int(y.shape[1]) if y.ndim == 2 else None)


def prepare(ds: Dataset, data_cfg, streams: str) -> TrainingData:
    """The run's splits: a validation set (the dataset's own, else `data.validation` examples held
    out of training), the labelled subset (`data.labels`, 0 = all) and, for semi-supervised models,
    the unlabelled stream (all training examples, the labelled ones included, as the ADGM code)."""
    info = data_info(ds)
    x, y = ds.split("train")
    semi = streams == "semi_supervised"
    if semi and data_cfg.labels == 0:
        raise ConfigError("semi-supervised models need data.labels > 0 (e.g. --set data.labels=100)")
    if info.sequence_length is not None and data_cfg.labels:
        raise ConfigError(f"data.labels={data_cfg.labels}: label subsets need one label per image; "
                          f"{ds.name} has digit sequences (use data.labels=0)")
    if "valid" in ds.splits():
        valid = ds.split("valid")
        keep, labelled = np.arange(len(x)), np.arange(len(x))
        if data_cfg.labels and streams != "unsupervised":
            labelled = semi_supervised_split(y, data_cfg.labels, 0, info.num_classes, data_cfg.seed).labelled
    elif info.sequence_length is None:
        n_labels = 0 if streams == "unsupervised" else data_cfg.labels
        n_valid = default_holdout(len(y)) if data_cfg.validation is None else data_cfg.validation
        split = semi_supervised_split(y, n_labels, n_valid, info.num_classes, data_cfg.seed)
        valid = (x[split.valid], y[split.valid])
        keep = split.unlabelled
        labelled = split.labelled if data_cfg.labels and streams != "unsupervised" else keep
        labelled = np.searchsorted(keep, labelled)          # indices into the kept examples
    else:  # pragma: no cover - every sequence dataset ships its validation split
        raise ConfigError(f"{ds.name} has no validation split")
    x, y = x[keep], y[keep]
    evals = {"valid": valid, "test": ds.split("test")}
    if data_cfg.binarize == "static":    # one fixed sample of every split
        x = static_binarize(to_unit(x), data_cfg.seed)
    if data_cfg.binarize == "static" or (data_cfg.binarize == "dynamic" and data_cfg.eval_binarize):
        # the LVAE code: dynamic binarization in training, the test set binarized once
        evals = {k: (static_binarize(to_unit(ex), data_cfg.seed + i + 1), ey)
                 for i, (k, (ex, ey)) in enumerate(evals.items())}
    as_tensor = torch.from_numpy
    info = dataclasses.replace(info, n_unlabelled=len(x), n_labelled=len(labelled))
    return TrainingData(
        info=info, train_x=as_tensor(np.ascontiguousarray(x)), train_y=as_tensor(y.astype(np.int64)),
        labelled=as_tensor(np.asarray(labelled, dtype=np.int64)),
        unlabelled=as_tensor(np.arange(len(x))) if semi else None,
        eval_sets={k: (as_tensor(np.ascontiguousarray(ex)), as_tensor(ey.astype(np.int64)))
                   for k, (ex, ey) in evals.items() if len(ex)},
        dynamic_binarize=data_cfg.binarize == "dynamic", classes=tuple(ds.classes))




def training_inputs(data: TrainingData) -> torch.Tensor:
    """The whole training set as the model sees it in training (one seeded Bernoulli sample when
    binarization is dynamic): for statistics such as batch norm's over the full training set."""
    x = to_unit(data.train_x)
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(0)) if data.dynamic_binarize else x


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Every random draw of an epoch on a rank derives from (seed, epoch, rank), so a run resumed at
    an epoch boundary draws exactly what the uninterrupted run drew, on every rank."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def per_worker(batch_size: int, world: int, what: str = "optim.batch_size") -> int:
    if batch_size % world:
        raise ConfigError(f"{what}={batch_size} must be divisible by the number of workers ({world}): "
                          f"each worker takes an equal share of the global batch")
    return batch_size // world


def _sharded(n: int, batch: int, rank: int, world: int, seed: int, epoch: int,
             drop_last: bool = False) -> Iterator[list[int]]:
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)           # a new shuffle every epoch (the same on every rank)
    return iter(BatchSampler(sampler, batch, drop_last=drop_last))


def steps_per_epoch(data: TrainingData, batch_size: int, world: int) -> int:
    n = len(data.unlabelled if data.unlabelled is not None else data.labelled)
    shard = -(-n // world)                    # DistributedSampler pads every shard to ceil(n / world)
    return -(-shard // per_worker(batch_size, world))


def epoch_batches(data: TrainingData, epoch: int, rank: int, world: int, batch_size: int,
                  labelled_batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's batches of one epoch: `{"x", "y"}`, plus `"x_unlabelled"` for semi-supervised
    models. There, the unlabelled stream defines the epoch and the labelled stream cycles: with the
    ADGM recipe (100 labels, labelled batch 100) every step sees the whole labelled set."""
    def labelled_pairs(idx):
        i = data.labelled[idx]
        return data.train_x[i], data.train_y[i]

    if data.unlabelled is None:
        for idx in _sharded(len(data.labelled), per_worker(batch_size, world), rank, world, seed, epoch):
            x, y = labelled_pairs(idx)
            yield {"x": x, "y": y}
        return
    lb = per_worker(labelled_batch_size, world, "optim.labelled_batch_size")
    full = -(-len(data.labelled) // world) >= lb    # full batches only, unless the set is smaller

    def labelled_pass(cycle: int) -> Iterator[list[int]]:   # a new pass, freshly shuffled
        return _sharded(len(data.labelled), lb, rank, world, seed, epoch * 1_000_003 + cycle, drop_last=full)

    cycle, labelled = 0, labelled_pass(0)
    for idx in _sharded(len(data.unlabelled), per_worker(batch_size, world), rank, world, seed, epoch):
        chosen = next(labelled, None)
        if chosen is None:
            cycle += 1
            labelled = labelled_pass(cycle)
            chosen = next(labelled)
        x, y = labelled_pairs(chosen)
        yield {"x": x, "y": y, "x_unlabelled": data.train_x[data.unlabelled[idx]]}
