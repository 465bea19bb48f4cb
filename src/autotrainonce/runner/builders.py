"""The data side of a run: datasets, the held-out split for methods that use one, and the loaders."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import data, models, pruners
from ..config import Config, merge_overrides
from ..data.sampler import ResumableBatchSampler, SeededDataset
from ..errors import ConfigError
from ..training import distributed as dist_utils

__all__ = ["RunData", "build_data", "build_model", "build_test_set", "per_rank_batch_size", "resolve_model_config"]

log = logging.getLogger("autotrainonce.runner.run")


@dataclass
class RunData:
    """The datasets of a run: training part, test split, optional held-out part, and the dataset's facts."""

    train: Dataset
    test: Dataset
    holdout: Dataset | None
    info: data.DatasetInfo

def resolve_model_config(cfg: Config, info: data.DatasetInfo) -> Config:
    """``cfg`` with ``model.num_classes`` / ``model.in_channels`` filled from the data where left as None."""
    in_channels = cfg.model.in_channels or cfg.data.in_channels or info.in_channels
    return merge_overrides(
        cfg, {"model": {"num_classes": cfg.model.num_classes or info.num_classes, "in_channels": in_channels}}
    )

def _with_transform(ds: Dataset, transform: Any) -> Dataset:
    """A shallow copy of ``ds`` (sharing its image tensors) with another transform."""
    view = copy.copy(ds)
    view.transform = transform  # type: ignore[attr-defined]
    return view

def _channel_conversion(cfg: Config, info: data.DatasetInfo) -> int | None:
    """Channels to repeat the images to when the model wants other than the dataset's (None: keep)."""
    target = cfg.model.in_channels
    return target if target not in (None, info.in_channels) else None


def _eval_transform(cfg: Config, info: data.DatasetInfo) -> Any:
    d = cfg.data
    return data.build_transform(info, False, image_size=d.image_size, in_channels=_channel_conversion(cfg, info))


def build_test_set(cfg: Config, info: data.DatasetInfo | None = None) -> Dataset:
    """The test split of ``cfg``'s dataset with the evaluation transform (``model.in_channels`` resolved)."""
    d = cfg.data
    info = info or data.info(d.name, root=d.root, **d.options)
    return data.create(d.name, "test", root=d.root, transform=_eval_transform(cfg, info), **d.options)


def build_model(cfg: Config) -> nn.Module:
    """The model ``cfg`` names: a zoo name or ``module:attr`` of the user's own, with its keywords
    (``model.num_classes`` / ``model.in_channels`` resolved, see :func:`resolve_model_config`)."""
    return models.build(
        cfg.model.name, num_classes=cfg.model.num_classes, in_channels=cfg.model.in_channels, **cfg.model.kwargs
    )


def build_data(cfg: Config) -> RunData:
    """Datasets for ``cfg`` (model.in_channels already resolved); the holdout is split off only for pruning
    methods that use one (``Pruner.uses_holdout``: ATO's controller) and only when ``data.holdout_fraction``
    is above 0 (at 0 such a method is given each training batch instead).

    The held-out images use the evaluation transform: the pruning controller should see clean images.
    """
    d = cfg.data
    info = data.info(d.name, root=d.root, **d.options)
    train_tf = data.build_transform(
        info, True, augment=d.augment, image_size=d.image_size, in_channels=_channel_conversion(cfg, info)
    )
    eval_tf = _eval_transform(cfg, info)
    base = data.create(d.name, "train", root=d.root, transform=train_tf, **d.options)
    test = build_test_set(cfg, info)
    train: Dataset = base
    clean: Dataset = _with_transform(base, eval_tf)
    if d.train_subset is not None:
        keep = list(range(min(d.train_subset, len(base))))  # type: ignore[arg-type]
        train, clean = Subset(base, keep), Subset(clean, keep)
    holdout = None
    # holdout_fraction 0: no image is held out; the controller then learns from the training batches
    pruning = cfg.prune.method != "none"
    if pruning and d.holdout_fraction > 0 and getattr(pruners.PRUNERS.get(cfg.prune.method), "uses_holdout", True):
        train_part, hold_part = data.split_holdout(train, d.holdout_fraction, seed=cfg.run.seed)
        train, holdout = train_part, Subset(clean, hold_part.indices)
    return RunData(train=train, test=test, holdout=holdout, info=info)

def per_rank_batch_size(global_batch: int, world: int, key: str = "data.batch_size") -> int:
    """The batch of one process: the global ``global_batch`` split evenly over ``world`` processes."""
    if global_batch % world:
        raise ConfigError(
            f"{key}={global_batch} is the global batch and must split evenly over {world} processes "
            f"(e.g. {max(world, global_batch - global_batch % world)})"
        )
    return global_batch // world

def _loader(
    ds: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    train: bool,
    *,
    seed: int = 0,
    augment: bool = False,
    holdout: bool = False,
) -> DataLoader:
    """A DataLoader over ``ds`` whose order is a pure function of (seed, epoch) and which shards across ranks.

    ``batch_size`` is global; each process loads its ``batch_size / world`` share of every batch. Training
    loaders shuffle, drop a ragged last batch (a few images make BatchNorm statistics noisy) unless it is all
    there is, and with ``augment`` draw each sample's augmentation from (seed, epoch, index). The holdout
    stream advances its epoch by itself at every pass. Evaluation loaders keep the order, never repeat an image
    and may leave the shards uneven.
    """
    world, rank = dist_utils.world_size(), dist_utils.rank()
    n = len(ds)  # type: ignore[arg-type]
    if train:
        local = per_rank_batch_size(batch_size, world)
        drop_last = n >= batch_size
    else:
        local = max(1, -(-batch_size // world))
        drop_last = False
    sampler = ResumableBatchSampler(
        n, local, shuffle=train, seed=seed, drop_last=drop_last, even=train, num_replicas=world, rank=rank,
        auto_epoch=holdout, tag_epoch=augment,
    )  # fmt: skip
    return DataLoader(
        SeededDataset(ds, seed) if augment else ds,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
