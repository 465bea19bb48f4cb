"""Datasets, transforms and the held-out split used by training and the ATO controller.

>>> from autotrainonce import data
>>> ds = data.create("synthetic", "train", transform="default")
>>> image, label = ds[0]
"""

from __future__ import annotations

from . import transforms
from .base import DatasetInfo
from .registry import create, info, list_datasets, register_dataset
from .sampler import ResumableBatchSampler, SeededDataset, epoch_order, sample_seed
from .split import infinite_loader, split_holdout
from .transforms import build_transform

__all__ = [
    "DatasetInfo",
    "ResumableBatchSampler",
    "SeededDataset",
    "build_transform",
    "create",
    "epoch_order",
    "info",
    "infinite_loader",
    "list_datasets",
    "register_dataset",
    "sample_seed",
    "split_holdout",
    "transforms",
]
