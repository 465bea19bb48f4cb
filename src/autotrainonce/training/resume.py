"""The Trainer's checkpoint and resume job: writing ``last.pt`` (keeping ``prev.pt``), and continuing from one.

A resume is exact: the checkpoint holds the model, optimiser, LR schedule, loss scaler, callbacks, the RNG
states of every rank, and, for a mid-epoch (step) checkpoint, the batch position, the RNG state the epoch's
iterator started from and the epoch's running sums. The file format itself is :mod:`.checkpoint`'s.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..core.callbacks import CallbackList
from ..errors import CheckpointError
from . import distributed as dist_utils
from .checkpoint import (
    FORMAT_VERSION,
    find_resume_checkpoint,
    get_rng_state,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    set_rng_state,
)
from .metrics import MetricsLogger

if TYPE_CHECKING:
    from .config import TrainerSettings

__all__ = ["CheckpointMixin"]

# The Trainer's logger (docs/training.md names it), so filtering on it still shows the resume messages.
log = logging.getLogger("autotrainonce.training.trainer")


class CheckpointMixin:
    """Checkpoint writing and exact resume for :class:`~autotrainonce.training.Trainer`.

    It reads and restores the trainer state below, which ``Trainer.__init__`` sets up.
    """

    model: nn.Module
    model_name: str | None
    optimizer: Optimizer
    scheduler: LRScheduler | None
    scaler: torch.amp.GradScaler
    config: TrainerSettings | None
    callbacks: CallbackList
    metrics: MetricsLogger
    train_loader: Iterable[Any]
    run_dir: Path | None
    distributed: bool
    rank: int
    world_size: int
    is_main: bool
    epoch: int
    start_epoch: int
    global_step: int
    steps_per_epoch: int
    total_steps: int
    checkpoint_every_steps: int
    last_metrics: dict[str, float]
    # Resume position inside an epoch, and the RNG states that make the rest of it exact (see _resume).
    _resume_step: int
    _resume_epoch_state: dict[str, float] | None
    _resume_rng: dict[str, Any] | None
    _resume_epoch_rng: dict[str, Any] | None
    _epoch_rng: dict[str, Any] | None
    _epoch_state: dict[str, float]
    _resumed: bool

    @property
    def checkpoint_path(self) -> Path | None:
        """``<run_dir>/last.pt``, or None without a run directory."""
        return self.run_dir / "last.pt" if self.run_dir is not None else None

    # ------------------------------------------------------------------------------------------------------------
    # writing

    def _step_checkpoint_due(self) -> bool:
        every = self.checkpoint_every_steps
        return self.run_dir is not None and every > 0 and self.global_step % every == 0

    def _save(self, epochs_done: int, step_in_epoch: int = 0) -> None:
        """Write last.pt (rank 0), keeping the previous one; collective in a distributed run."""
        if self.checkpoint_path is None:
            return
        dist_utils.broadcast_buffers(self.model)
        rng = get_rng_state()
        per_rank = (
            dist_utils.all_gather_object({"rng": rng, "epoch_rng": self._epoch_rng})
            if self.distributed
            else None
        )
        if not self.is_main:
            return
        ckpt = self._checkpoint(epochs_done, step_in_epoch=step_in_epoch, rng=rng, rng_ranks=per_rank)
        # A fresh run in a used folder must not keep the older run's checkpoint as its fallback.
        save_checkpoint(ckpt, self.checkpoint_path, keep_previous=self._resumed)
        self._resumed = True

    def _checkpoint(
        self,
        epochs_done: int,
        *,
        step_in_epoch: int = 0,
        rng: dict[str, Any] | None = None,
        rng_ranks: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        mid_epoch = step_in_epoch > 0
        # The whole config (a run Config has model and data too): `ato eval` rebuilds the model from it.
        config = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else None
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "model_name": self.model_name,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": epochs_done,
            "step_in_epoch": step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "rng": rng if rng is not None else get_rng_state(),
            "epoch_rng": self._epoch_rng if mid_epoch else None,
            "epoch_state": dict(self._epoch_state) if mid_epoch else None,
            "world_size": self.world_size,
            "rng_ranks": rng_ranks,
            "config": config,
            "callbacks": self.callbacks.state_dict(),
            "metrics": {k: v if isinstance(v, int) else float(v) for k, v in self.last_metrics.items()},
        }

    # ------------------------------------------------------------------------------------------------------------
    # resuming

    def _load_for_resume(self, resume: str | Path) -> tuple[Path, dict[str, Any]] | None:
        """Rank 0 picks and reads the checkpoint; in a distributed run it is broadcast to the other ranks."""
        found: tuple[Path, dict[str, Any]] | None = None
        error: str | None = None
        if self.is_main:
            try:
                if str(resume).lower() == "auto":
                    if self.checkpoint_path is not None:
                        found = find_resume_checkpoint(self.checkpoint_path)
                else:
                    found = (Path(resume), load_checkpoint(resume))
            except CheckpointError as exc:
                if not self.distributed:
                    raise
                error = str(exc)
        if self.distributed:
            # One read, then the same bytes everywhere: ranks need no shared file system and cannot disagree.
            error, found = dist_utils.broadcast_object((error, found))
            if error is not None:
                raise CheckpointError(error)
        return found

    def _resume(self, resume: str | Path) -> None:
        found = self._load_for_resume(resume)
        if found is None:
            if self.is_main:
                log.info("resume auto: no checkpoint in %s yet, starting fresh", self.run_dir)
            return
        path, ckpt = found
        saved_name = ckpt.get("model_name")
        if self.model_name and saved_name and saved_name.lower() != self.model_name.lower():
            raise CheckpointError(f"checkpoint {path} is of model {saved_name!r}, not {self.model_name!r}")
        missing = self.callbacks.load_state_dict(ckpt.get("callbacks") or {})
        if missing and self.is_main:
            log.warning(
                "checkpoint %s has no state for callback(s) %s; they start fresh", path, ", ".join(missing)
            )
        self.callbacks.call("on_load_checkpoint", self, ckpt)
        load_model_state(self.model, ckpt["model"], f"checkpoint {path}")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None and ckpt.get("scheduler") is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler.is_enabled() and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {path}: optimizer/scheduler state does not fit ({exc})"
            ) from None
        if ckpt.get("total_steps") not in (None, self.total_steps) and self.is_main:
            log.warning(
                "checkpoint %s was scheduled for %s steps, this run has %s; the LR schedule continues as saved",
                path, ckpt["total_steps"], self.total_steps,
            )  # fmt: skip
        self.start_epoch = self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.last_metrics = dict(ckpt.get("metrics") or {})
        step = int(ckpt.get("step_in_epoch") or 0)
        rng, epoch_rng = ckpt["rng"], ckpt.get("epoch_rng")
        ranks = ckpt.get("rng_ranks")
        if self.distributed and ranks and len(ranks) == self.world_size:
            rng, epoch_rng = ranks[self.rank]["rng"], ranks[self.rank]["epoch_rng"]
        elif int(ckpt.get("world_size") or 1) != self.world_size and self.is_main:
            log.warning(
                "checkpoint %s was written by %s process(es), this run has %d: the data order and batches stay "
                "the same, the per-process random draws (mixup, dropout) do not",
                path, ckpt.get("world_size") or 1, self.world_size,
            )  # fmt: skip
        set_rng_state(rng)
        if step:
            self._resume_step = step
            self._resume_epoch_state = dict(ckpt.get("epoch_state") or {})
            self._resume_rng = rng
            self._resume_epoch_rng = epoch_rng
        self._resumed = True
        self.metrics.resume(self.start_epoch)
        if not self.is_main:
            return
        if step:
            log.info(
                "resumed from %s in epoch %d at step %d/%d (global step %d)",
                path, self.start_epoch + 1, step, self.steps_per_epoch, self.global_step,
            )  # fmt: skip
        else:
            log.info(
                "resumed from %s after epoch %d (global step %d)", path, self.start_epoch, self.global_step
            )

    def _epoch_iterator(self, start: int) -> Iterator[Any]:
        """An iterator over this epoch's batches, positioned after its first ``start`` batches.

        A loader whose batch sampler can ``skip`` (``ResumableBatchSampler``) starts there without loading
        anything. Any other loader is replayed from the RNG state this epoch's iterator started from, its first
        ``start`` batches fetched and dropped (data only, no model step), which reproduces shuffles and
        augmentations drawn from the global RNG. Then the RNG state of the checkpoint is restored.
        """
        if self._resume_epoch_rng is not None:
            set_rng_state(self._resume_epoch_rng)
            self._resume_epoch_rng = None
        self._epoch_rng = get_rng_state()
        batch_sampler = getattr(self.train_loader, "batch_sampler", None)
        can_skip = callable(getattr(batch_sampler, "skip", None))
        if can_skip and start:
            batch_sampler.skip(start)  # type: ignore[union-attr]
        it = iter(self.train_loader)
        if not can_skip:
            for _ in range(start):
                if next(it, None) is None:
                    break
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        return it
