"""Process-group helpers for DistributedDataParallel training (``torchrun`` or ``ato train --nproc N``).

Everything here is a no-op in a single process, so the training code calls these helpers unconditionally.
A process group counts as *active* when it is initialised with more than one process.

See docs/distributed.md for what is synchronised and how.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from .utils import resolve_device

__all__ = [
    "is_active",
    "world_size",
    "rank",
    "local_rank",
    "is_main",
    "launched_with_torchrun",
    "rank_device",
    "distributed_session",
    "all_reduce_sum",
    "all_reduce_max",
    "broadcast_",
    "broadcast_object",
    "all_gather_object",
    "broadcast_buffers",
]

log = logging.getLogger(__name__)


def is_active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes of the active group (1 without one)."""
    return dist.get_world_size() if is_active() else 1


def rank() -> int:
    """This process's global rank (0 without a group)."""
    return dist.get_rank() if is_active() else 0


def local_rank() -> int:
    """This process's rank on its machine, as torchrun sets it in ``LOCAL_RANK`` (0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that logs and writes files."""
    return rank() == 0


def launched_with_torchrun() -> bool:
    """True when torchrun started this process as one of several (``WORLD_SIZE`` > 1 in the environment)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    except ValueError:
        return False


def rank_device(setting: str | torch.device | None = "auto") -> torch.device:
    """The device of this process: as :func:`resolve_device`, but a bare ``cuda`` becomes ``cuda:LOCAL_RANK``
    when several processes run (one GPU per process)."""
    device = resolve_device(setting)
    if device.type == "cuda" and device.index is None and (is_active() or launched_with_torchrun()):
        index = local_rank()
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {index} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most one process per GPU (--nproc)"
            )
        device = torch.device("cuda", index)
    return device


@contextlib.contextmanager
def distributed_session(device: str | torch.device | None = "auto") -> Iterator[bool]:
    """Initialise the default process group when torchrun started several processes; tear it down after.

    Yields whether a group of more than one process is active. The backend is NCCL when this process trains
    on a GPU (``cuda:LOCAL_RANK``, made the current device) and Gloo otherwise. The group is destroyed when
    the block ends, also on an error, so the process exits cleanly; a group that already existed (the
    caller set it up) is left alone. Ranks other than 0 log only warnings and errors.
    """
    if dist.is_available() and dist.is_initialized():
        yield is_active()
        return
    if not launched_with_torchrun():
        yield False
        return
    if not dist.is_available():
        raise ConfigError("this build of torch has no torch.distributed; run a single process")
    dev = rank_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL and the object collectives use the current device
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    package_log = logging.getLogger("autotrainonce")
    old_level = package_log.level
    if dist.get_rank() != 0:
        package_log.setLevel(max(logging.WARNING, old_level))
    log.info(
        "process group: %s, %d processes (this is rank %d)", backend, dist.get_world_size(), dist.get_rank()
    )
    try:
        yield dist.get_world_size() > 1
    finally:
        package_log.setLevel(old_level)
        with contextlib.suppress(Exception):  # tearing down must not hide the error that got us here
            dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place; returned for chaining."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over all processes, in place; returned for chaining."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s, in place; returned for chaining."""
    if is_active():
        dist.broadcast(tensor, src=src)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (pickled; only for trusted, in-process objects)."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Give every process rank ``src``'s buffers (BatchNorm running statistics and counters).

    DDP only syncs buffers at the start of each forward, so after a step every rank holds statistics updated
    with its own batch; call this before evaluating or saving so that all ranks hold one model.
    """
    if not is_active():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=src)
