"""Datasets in their public formats, the cluttered-sequence generator, and semi-supervised splits.

This package knows nothing of models, Ray or MLflow.
"""

from __future__ import annotations

import dataclasses

from dgm_dist.data.catalog import DATASETS, Dataset, load_dataset


def load_from_config(data, download: bool | None = None) -> Dataset:
    """Load the dataset a `config.DataConfig` names, with the options that apply to it."""
    options: dict = {}
    if data.dataset == "norb":
        options = {"stereo": data.norb_stereo, "size": data.norb_size, "resize": data.norb_resize}
    elif data.dataset.startswith("cluttered-"):
        options = dataclasses.asdict(data.cluttered)
    return load_dataset(data.dataset, data.data_dir, download, **options)


__all__ = ["DATASETS", "Dataset", "load_dataset", "load_from_config"]
