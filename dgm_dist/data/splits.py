"""Semi-supervised label splits, held-out validation, and binarization.

The ADGM/SDGM code (docs/data.md) takes n_labeled/num_classes examples of each class with a
seeded shuffle, and uses ALL training images as the unlabelled set (the labelled ones included);
its "validation" set was inside the training set. Here a validation set is held out of training
first (`n_valid`, 0 reproduces the original), then labels are drawn from what remains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dgm_dist.errors import ConfigError


@dataclass(frozen=True)
class SemiSupervisedSplit:
    """Indices into the training arrays."""

    labelled: np.ndarray     # n_labels indices, balanced over classes
    unlabelled: np.ndarray   # every training index not held out for validation
    valid: np.ndarray        # held out of training


def semi_supervised_split(labels: np.ndarray, n_labels: int, n_valid: int, num_classes: int,
                          seed: int, unlabelled_includes_labelled: bool = True) -> SemiSupervisedSplit:
    """Balanced, seeded, reproducible: the same arguments give the same indices."""
    n = len(labels)
    if not 0 <= n_valid < n:
        raise ConfigError(f"data.validation={n_valid}: must be in 0..{n - 1} (the training set has {n})")
    if n_labels < 0 or n_labels % num_classes:
        raise ConfigError(f"data.labels={n_labels}: must be a non-negative multiple of the number of "
                          f"classes ({num_classes}) so that every class gets the same count")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    valid, pool = np.sort(order[:n_valid]), order[n_valid:]
    per_class = n_labels // num_classes
    chosen = []
    for c in range(num_classes):
        of_class = pool[labels[pool] == c]
        if len(of_class) < per_class:
            raise ConfigError(f"data.labels={n_labels}: class {c} has only {len(of_class)} training "
                              f"examples outside validation, fewer than {per_class}")
        chosen.append(of_class[:per_class])
    labelled = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
    unlabelled = np.sort(pool)
    if not unlabelled_includes_labelled:
        unlabelled = np.setdiff1d(unlabelled, labelled)
    return SemiSupervisedSplit(labelled=labelled, unlabelled=unlabelled, valid=valid)


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli sample of intensities in [0, 1], drawn every step (docs/data.md)."""
    return torch.bernoulli(x, generator=generator)


def static_binarize(x: np.ndarray, seed: int) -> np.ndarray:
    """One fixed Bernoulli sample (the LVAE code binarizes the test set once, docs/data.md)."""
    rng = np.random.default_rng(seed)
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


