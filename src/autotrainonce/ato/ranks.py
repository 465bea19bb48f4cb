"""Keeping ATO's decisions identical on every rank of a distributed run (no-ops in one process)."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from ._utils import HoldoutStream, device_of

__all__ = ["RankSync", "is_rank0", "seek_holdout", "world_size"]

log = logging.getLogger("autotrainonce.ato.algorithm")


def world_size() -> int:
    """Processes of the default process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank0() -> bool:
    """Whether this process logs for the run (rank 0, or the only process)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def seek_holdout(stream: HoldoutStream, drawn: int) -> None:
    """Position a holdout stream over a ``ResumableBatchSampler`` (auto_epoch) after ``drawn`` batches.

    Such a sampler's pass ``p`` is a pure function of (seed, p), so the stream resumes at pass ``drawn // n``,
    batch ``drawn % n``, without loading the skipped batches; other loaders keep HoldoutStream's replay.
    """
    sampler = getattr(stream.loader, "batch_sampler", None)
    if not (getattr(sampler, "auto_epoch", False) and callable(getattr(sampler, "skip", None))):
        return
    n = len(stream.loader)  # type: ignore[arg-type]
    if n:
        sampler.set_epoch(drawn // n)  # type: ignore[union-attr]
        sampler.skip(drawn % n)  # type: ignore[union-attr]
        stream._skip = 0  # the sampler skips instead


class RankSync:
    """AutoTrainOnce's rank synchronisation: masks and controller from rank 0, controller gradients averaged."""

    def _agree(self, keep: list[torch.Tensor]) -> list[torch.Tensor]:
        """Rank 0's masks on every rank (a no-op in a single process): every rank zeroes and cuts the same
        channels, whatever drifted."""
        if world_size() == 1 or not keep:
            return keep
        flat = torch.cat([k.detach().reshape(-1).to(torch.uint8) for k in keep]).to(device_of(self.model))
        dist.broadcast(flat, src=0)
        parts = flat.cpu().bool().split([k.numel() for k in keep])
        return [p.reshape(k.shape) for p, k in zip(parts, keep)]

    def _broadcast_controller(self) -> None:
        """Rank 0's controller parameters and buffers on every rank (once after construction or a resume)."""
        self._ranks_synced = True
        if world_size() == 1 or self.controller is None:
            return
        for t in [*self.controller.parameters(), *self.controller.buffers()]:
            dist.broadcast(t.data, src=0)

    def _average_over_ranks(
        self, grads: list[torch.Tensor], task: torch.Tensor
    ) -> tuple[list[torch.Tensor], float]:
        """Mean over ranks of the controller gradients and of the task loss (for logging)."""
        world = world_size()
        if world == 1:
            return grads, float(task.detach())
        flat = torch.cat([g.reshape(-1) for g in grads] + [task.detach().reshape(1).to(grads[0].dtype)])
        dist.all_reduce(flat)
        flat /= world
        out = list(flat[:-1].split([g.numel() for g in grads]))
        return [o.reshape(g.shape) for o, g in zip(out, grads)], float(flat[-1])
