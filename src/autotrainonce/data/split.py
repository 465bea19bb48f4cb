"""A deterministic train/held-out split and an endless loader for the held-out stream."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError

__all__ = ["split_holdout", "infinite_loader"]

T = TypeVar("T")


def split_holdout(dataset: Dataset, fraction: float = 0.05, seed: int = 0) -> tuple[Subset, Subset]:
    """Split ``dataset`` into disjoint (train, holdout) subsets covering every index.

    The holdout gets ``round(fraction * len)`` items (at least 1, leaving at least 1 for training), drawn by a
    permutation seeded with ``seed`` only, so the same seed and length always give the same split. Indices
    within each subset are sorted, which keeps access to in-memory data cache-friendly.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ConfigError(f"holdout fraction must be strictly between 0 and 1, got {fraction!r}")
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise ConfigError(f"cannot split a dataset of {n} item(s) into train and holdout parts")
    k = min(max(1, round(fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    holdout = sorted(perm[:k].tolist())
    train = sorted(perm[k:].tolist())
    return Subset(dataset, train), Subset(dataset, holdout)


def infinite_loader(loader: Iterable[T]) -> Iterator[T]:
    """Yield batches from ``loader`` forever, starting a fresh pass (new shuffle) after each one ends."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:  # looping over an empty loader would spin forever
            raise ConfigError("infinite_loader got a loader that yields no batches (empty dataset?)")
