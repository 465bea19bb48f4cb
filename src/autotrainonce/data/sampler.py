"""Batch order as a pure function of (seed, epoch), sharded across processes, resumable at any batch.

:class:`ResumableBatchSampler` is what ``ato train`` gives its DataLoaders (``batch_sampler=``): the order of an
epoch depends only on ``(seed, epoch)``, each process takes its own shard of every *global* batch, and
:meth:`~ResumableBatchSampler.skip` starts the next pass after the batches a killed run had already consumed,
without loading them. :class:`SeededDataset` makes random augmentation a pure function of
``(seed, epoch, index)`` too, so a resumed run sees the very same images, whatever the number of DataLoader
workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError

__all__ = ["ResumableBatchSampler", "SeededDataset", "epoch_order", "sample_seed"]

_MASK64 = (1 << 64) - 1


def _mix(value: int) -> int:
    """One splitmix64 round: a cheap, well-spread 64-bit hash."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of sample ``index`` in ``epoch`` (a non-negative 63-bit int)."""
    return _mix(_mix(_mix(int(seed) & _MASK64) ^ (int(epoch) & _MASK64)) ^ (int(index) & _MASK64)) >> 1


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """Indices ``0..num_samples-1`` in the order of ``epoch``: a permutation drawn from ``(seed, epoch)`` only."""
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(num_samples, generator=generator)


class ResumableBatchSampler(Sampler[list[Any]]):
    """Yields the batches (lists of indices) of one process for one epoch.

    Global batch ``j`` of an epoch is ``order[j*B:(j+1)*B]`` with ``B = batch_size * num_replicas``; process
    ``rank`` gets its strided share ``order[j*B + rank :: num_replicas]`` (``batch_size`` indices), so with one
    process this is a plain shuffled batch sampler and with N processes the union of their batch ``j`` is the
    same global batch.

    Args:
        num_samples: length of the dataset.
        batch_size: batch size of *this process* (the global batch divided by ``num_replicas``).
        shuffle: permute per epoch (:func:`epoch_order`); False keeps the index order.
        seed: seed of the permutations.
        drop_last: drop the last incomplete global batch, so that every batch is full on every process.
        even: without ``drop_last``, pad the order (repeating its start) to a multiple of ``num_replicas`` so
            all processes have as many batches (needed for training: DDP steps together); False leaves the
            shards uneven and never repeats a sample (for evaluation).
        num_replicas, rank: number of processes and this one's rank.
        auto_epoch: advance the epoch by one after every pass (for an endless stream such as the held-out
            loader of the pruner) instead of waiting for :meth:`set_epoch`.
        tag_epoch: yield ``(epoch, index)`` pairs instead of indices, for a :class:`SeededDataset`.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        even: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        auto_epoch: bool = False,
        tag_epoch: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is not in a group of {num_replicas} process(es)")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.even = bool(even)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.auto_epoch = bool(auto_epoch)
        self.tag_epoch = bool(tag_epoch)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next pass (DistributedSampler semantics)."""
        self.epoch = int(epoch)

    def skip(self, batches: int) -> None:
        """Start the next pass after its first ``batches`` batches (once; later passes start at 0)."""
        if batches < 0:
            raise ValueError(f"cannot skip {batches} batches")
        self._skip = int(batches)

    def _local_count(self) -> int:
        n, world = self.num_samples, self.num_replicas
        if self.drop_last:
            return (n // (self.batch_size * world)) * self.batch_size
        if self.even:
            return -(-n // world)
        return len(range(self.rank, n, world))

    def __len__(self) -> int:
        return -(-self._local_count() // self.batch_size)

    def indices(self, epoch: int) -> list[int]:
        """All indices this process reads in ``epoch``, in order (a pure function of the arguments)."""
        n, world = self.num_samples, self.num_replicas
        order = epoch_order(n, self.seed, epoch, self.shuffle)
        if self.drop_last:
            order = order[: (n // (self.batch_size * world)) * self.batch_size * world]
        elif self.even and n % world:
            pad = world - n % world
            order = torch.cat([order, order.repeat(-(-pad // n))[:pad]])
        return order[self.rank :: world].tolist()

    def __iter__(self) -> Iterator[list[Any]]:
        epoch = self.epoch
        if self.auto_epoch:
            self.epoch += 1
        start, self._skip = self._skip, 0
        local = self.indices(epoch)
        b = self.batch_size
        for pos in range(start * b, len(local), b):
            batch = local[pos : pos + b]
            yield [(epoch, i) for i in batch] if self.tag_epoch else batch

    def __repr__(self) -> str:
        return (
            f"ResumableBatchSampler(n={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, rank={self.rank}/{self.num_replicas}, epoch={self.epoch})"
        )


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(epoch, index)`` is drawn with torch's CPU RNG seeded from
    ``(seed, epoch, index)``; the global RNG is left as it was.

    Random transforms that draw from torch's RNG (all of :mod:`autotrainonce.data.transforms`) then give the
    same augmentation for the same sample and epoch in any process, any worker and after any resume. A plain
    integer key is read as epoch 0.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # Forward attributes such as .info or .transform to the wrapped dataset (not for dunder/private names,
        # which would recurse while unpickling in DataLoader workers before self.dataset exists).
        if name.startswith("_") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"SeededDataset({self.dataset!r}, seed={self.seed})"
