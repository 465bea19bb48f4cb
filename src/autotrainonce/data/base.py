"""Shared pieces of the data package: :class:`DatasetInfo`, the in-memory dataset and root lookup."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError

__all__ = ["DatasetInfo", "TensorImageDataset", "SPLITS", "check_split", "env_root", "ENV_ROOT"]

SPLITS = ("train", "test")
ENV_ROOT = "ATO_DATA_ROOT"

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, enough to build a model and its input pipeline."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: tuple[float, ...]  # per channel, of the [0, 1] images
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    # Whether a horizontal flip keeps the label meaning (False for digits: a mirrored 2 is no 2).
    flip_augment: bool = True


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise :class:`ConfigError`."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return split


def env_root() -> Path | None:
    """The folder named by ``$ATO_DATA_ROOT``, or None when it is unset or empty."""
    value = os.environ.get(ENV_ROOT, "").strip()
    return Path(value).expanduser() if value else None


class TensorImageDataset(Dataset):
    """Images held in memory as one ``N×C×H×W`` tensor, labels as an int64 tensor.

    ``uint8`` images are scaled to [0, 1] on access, so a 60k-image set costs 47 MB instead of 188 MB;
    float images (already in [0, 1]) are returned as copies so in-place transforms cannot corrupt the store.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DatasetInfo,
        split: str,
        transform: Transform | None = None,
    ) -> None:
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.info = info
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        img = img.float().div_(255.0) if img.dtype == torch.uint8 else img.clone()
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, split={self.split!r}, n={len(self)})"
