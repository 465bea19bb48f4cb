"""The dense training loop. It knows nothing about pruning: pruners join through :class:`Callback` hooks."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from tqdm.auto import tqdm

from ..config import Config, to_dict
from ..core.callbacks import Callback, CallbackList
from ..errors import CheckpointError, ConfigError, TrainingDivergedError
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
from .metrics import BASE_COLUMNS, MetricsLogger, accuracy_counts
from .optim import ClassificationLoss, build_optimizer, build_scheduler, rebuild_optimizer
from .utils import count_steps, progress_enabled, resolve_device, use_channels_last

__all__ = ["Trainer", "evaluate_model", "evaluation_counts"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    """Trains ``model`` on ``train_loader`` for ``epochs`` epochs, evaluating on ``eval_loader`` after each.

    Anything left as None comes from ``config`` (a :class:`~autotrainonce.config.Config`), or from the
    config defaults when there is none: the optimiser via :func:`build_optimizer`, the per-step schedule via
    :func:`build_scheduler`, cross-entropy with the configured label smoothing and mixup, and the run
    options (epochs, device, channels_last, amp, tensorboard, max_steps_per_epoch, checkpoint_every_steps).

    With a ``run_dir`` it writes ``metrics.csv``, ``last.pt`` (every epoch and every ``checkpoint_every_steps``
    steps, atomically, keeping the one before as ``prev.pt``) and ``curves.png``. Epochs are 0-based in the
    API (``trainer.epoch``, hooks) and 1-based in logs and metrics.csv.

    Inside a process group of several processes (``torchrun``; ``distributed=None`` detects it) the model is
    trained through DistributedDataParallel: :attr:`model` stays the plain module (callbacks and pruners work
    on it), :attr:`forward_model` is the wrapper used for the training forward pass, metrics are reduced over
    all ranks, and only rank 0 (:attr:`is_main`) logs and writes files. Every rank must run the same calls
    (``fit``, ``evaluate``): they synchronise.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable[Any],
        eval_loader: Iterable[Any] | None = None,
        *,
        optimizer: Optimizer | None = None,
        scheduler: LRScheduler | None = None,
        loss_fn: ClassificationLoss | LossFn | None = None,
        epochs: int | None = None,
        device: str | torch.device | None = None,
        callbacks: Iterable[Callback] = (),
        run_dir: str | Path | None = None,
        config: Config | None = None,
        model_name: str | None = None,
        max_steps_per_epoch: int | None = None,
        channels_last: bool | str | None = None,
        amp: bool | None = None,
        tensorboard: bool | None = None,
        progress: bool | None = None,
        checkpoint_every_steps: int | None = None,
        distributed: bool | None = None,
    ) -> None:
        cfg = config if config is not None else Config()
        self.config = config
        self.model_name = model_name or (config.model.name if config is not None else None)
        self.distributed = dist_utils.is_active() if distributed is None else bool(distributed)
        if self.distributed and not dist_utils.is_active():
            raise ConfigError("distributed=True needs an initialised process group of more than one process")
        self.rank = dist_utils.rank() if self.distributed else 0
        self.world_size = dist_utils.world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.device = (
            dist_utils.rank_device(device if device is not None else cfg.run.device)
            if self.distributed
            else resolve_device(device if device is not None else cfg.run.device)
        )
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.epochs = int(epochs if epochs is not None else cfg.run.epochs)
        self.max_steps_per_epoch = (
            max_steps_per_epoch if max_steps_per_epoch is not None else cfg.run.max_steps_per_epoch
        )
        self.steps_per_epoch = count_steps(train_loader, self.max_steps_per_epoch)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.checkpoint_every_steps = int(
            checkpoint_every_steps if checkpoint_every_steps is not None else cfg.run.checkpoint_every_steps
        )
        if self.checkpoint_every_steps < 0:
            raise ConfigError(f"checkpoint_every_steps must be 0 or more, got {self.checkpoint_every_steps}")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = CallbackList(callbacks)
        self.progress = (progress_enabled() if progress is None else progress) and self.is_main

        self.channels_last = use_channels_last(
            channels_last if channels_last is not None else cfg.run.channels_last, model, self.device
        )
        self.model = self._place(model)
        self._ddp: nn.Module | None = None
        self._wrap()

        self.optimizer = optimizer if optimizer is not None else build_optimizer(cfg.optim, self.model)
        if scheduler is None and optimizer is None:
            scheduler = build_scheduler(cfg.schedule, self.optimizer, self.epochs, self.steps_per_epoch)
        self.scheduler = scheduler
        self.loss_fn: ClassificationLoss | LossFn = loss_fn or ClassificationLoss(
            cfg.optim.label_smoothing, cfg.optim.mixup_alpha
        )

        amp = cfg.run.amp if amp is None else amp
        if amp and self.device.type != "cuda":
            log.warning("amp is only used on CUDA; training in float32 on %s", self.device)
            amp = False
        self.amp_dtype = None
        if amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Loss scaling is only needed for float16; bfloat16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0  # index of the epoch being trained (0-based); equals epochs once fit() is done
        self.start_epoch = 0
        self.global_step = 0  # optimiser steps taken so far, over all epochs
        self.step_in_epoch = 0  # batches of the current epoch consumed so far
        self.last_metrics: dict[str, float] = {}
        tensorboard = cfg.run.tensorboard if tensorboard is None else tensorboard
        self.metrics = MetricsLogger(
            self.run_dir if self.is_main else None, tensorboard=bool(tensorboard) and self.is_main
        )
        # Resume position inside an epoch, and the RNG states that make the rest of it exact (see _resume).
        self._resume_step = 0
        self._resume_epoch_state: dict[str, float] | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._resume_epoch_rng: dict[str, Any] | None = None
        self._epoch_rng: dict[str, Any] | None = None
        self._epoch_state: dict[str, float] = {}
        self._resumed = False

    # ------------------------------------------------------------------------------------------------------------
    # model handling

    def _place(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _wrap(self) -> None:
        """(Re)build the DDP wrapper around :attr:`model`; it broadcasts rank 0's weights to every rank."""
        if not self.distributed:
            self._ddp = None
            return
        from torch.nn.parallel import DistributedDataParallel

        # Drop the old wrapper first: its reducer's autograd hooks sit on the same parameter objects (an in-place
        # cut keeps them) and are removed when it is destroyed.
        self._ddp = None
        ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(self.model, device_ids=ids)

    @property
    def forward_model(self) -> nn.Module:
        """The module the training step calls: the DDP wrapper in distributed runs, else :attr:`model`."""
        return self._ddp if self._ddp is not None else self.model

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def checkpoint_path(self) -> Path | None:
        """``<run_dir>/last.pt``, or None without a run directory."""
        return self.run_dir / "last.pt" if self.run_dir is not None else None

    def replace_model(
        self, new_model: nn.Module, optimizer: Optimizer | None = None, scheduler: LRScheduler | None = None
    ) -> None:
        """Swap the trained module (e.g. for a physically pruned one), on the same device and memory format.

        Without ``optimizer``, a fresh one with the same hyper-parameters and current LR is built: optimiser
        state such as momentum starts from zero, so pass your own optimiser to carry (sliced) state over.
        Without ``scheduler``, the current per-step schedule is re-attached to the new optimiser at the same
        step (supported for the LambdaLR schedules this package builds). In a distributed run the DDP wrapper
        is rebuilt around the new module, so every rank must swap at the same step.
        """
        training = self.model.training
        self.model = self._place(new_model)
        self.model.train(training)
        self._wrap()
        old_optimizer = self.optimizer
        if optimizer is None:
            optimizer = rebuild_optimizer(old_optimizer, self.model)
        self.optimizer = optimizer
        if scheduler is None and self.scheduler is not None:
            if not isinstance(self.scheduler, LambdaLR):
                raise ValueError(
                    f"replace_model cannot move a {type(self.scheduler).__name__} to the new optimizer; "
                    "pass scheduler="
                )
            fns = self.scheduler.lr_lambdas
            fns = fns if len(fns) == len(optimizer.param_groups) else [fns[0]] * len(optimizer.param_groups)
            state = self.scheduler.state_dict()
            scheduler = LambdaLR(optimizer, list(fns))
            state["lr_lambdas"] = [None] * len(fns)
            if len(state["base_lrs"]) != len(fns):
                # A differently grouped optimiser (one group per channel group, say) follows group 0's schedule.
                state["base_lrs"] = [state["base_lrs"][0]] * len(fns)
                state["_last_lr"] = [state["_last_lr"][0]] * len(fns)
                for group in optimizer.param_groups:
                    group["initial_lr"] = state["base_lrs"][0]
            scheduler.load_state_dict(state)
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
        self.scheduler = scheduler

    # ------------------------------------------------------------------------------------------------------------
    # the loop

    def fit(self, resume: str | Path | None = None) -> dict[str, float]:
        """Train for the remaining epochs and return the last epoch's metrics.

        ``resume``: None starts fresh; ``"auto"`` continues from the newest readable checkpoint of the run
        directory (``last.pt``, else ``prev.pt``) when there is one; a path continues from that checkpoint.
        Training resumes exactly where the checkpoint was written: after its epoch, or at the next batch of a
        mid-epoch (step) checkpoint.
        """
        try:
            if resume is not None and str(resume).lower() != "none":
                self._resume(resume)
            elif self.is_main and self.run_dir is not None and (self.run_dir / "metrics.csv").exists():
                log.info(
                    "starting fresh in %s (its earlier metrics.csv and checkpoints will be replaced)",
                    self.run_dir,
                )
            self.callbacks.call("on_fit_start", self)
            for epoch in range(self.start_epoch, self.epochs):
                self.epoch = epoch
                self._run_epoch(epoch)
            self.epoch = self.epochs
            self.callbacks.call("on_fit_end", self)
        except BaseException as exc:
            self.callbacks.call("on_exception", self, exc)
            raise
        finally:
            self.metrics.close()
        if self.is_main:
            self._plot()
        return dict(self.last_metrics)

    def _run_epoch(self, epoch: int) -> None:
        self.callbacks.call("on_train_epoch_start", self, epoch)
        start = time.perf_counter()
        train = self._train_epoch(epoch)
        train_time = train.pop("time")
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.global_step,
            "lr": train.pop("lr"),
            "train_loss": train["loss"],
            "train_acc": train["acc"],
        }
        extra = self.callbacks.epoch_end(self, epoch)
        # Every rank evaluates and saves rank 0's model: DDP leaves each rank with its own BN statistics.
        dist_utils.broadcast_buffers(self.model)
        if self.eval_loader is not None:
            test = self.evaluate(self.eval_loader)
            row.update({f"test_{k}": v for k, v in test.items()})
        row["epoch_time_s"] = time.perf_counter() - start + train["resumed_time"]
        row["images_per_s"] = train["samples"] / max(train_time, 1e-9)
        row.update(extra)
        self.callbacks.call("on_validation_end", self, row)
        self.last_metrics = row
        self.metrics.log(row)
        if self.is_main:
            log.info(self._summary(row))
        self._save(epoch + 1)

    def _set_loader_epoch(self, epoch: int) -> None:
        """``set_epoch(epoch)`` on the loader's (batch) sampler when it has one (DistributedSampler semantics)."""
        seen: list[object] = []
        for obj in (
            self.train_loader,
            getattr(self.train_loader, "batch_sampler", None),
            getattr(self.train_loader, "sampler", None),
        ):
            if obj is not None and hasattr(obj, "set_epoch") and not any(obj is o for o in seen):
                obj.set_epoch(epoch)  # type: ignore[attr-defined]
                seen.append(obj)

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

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        start_step, state = 0, None
        if self._resume_step and epoch == self.start_epoch:
            start_step, state = min(self._resume_step, self.steps_per_epoch), self._resume_epoch_state
        self._resume_step, self._resume_epoch_state = 0, None
        state = state or {}
        loss_sum = torch.tensor(float(state.get("loss_sum", 0.0)), device=self.device, dtype=torch.float64)
        correct = torch.tensor(float(state.get("correct", 0.0)), device=self.device, dtype=torch.float64)
        samples = int(state.get("samples", 0))
        resumed_time = float(state.get("time", 0.0))
        self.step_in_epoch = start_step
        self._set_loader_epoch(epoch)
        it = self._epoch_iterator(start_step)
        bar = tqdm(
            total=self.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
            disable=not self.progress, leave=False, dynamic_ncols=True,
        )  # fmt: skip
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        with bar:
            for i in range(start_step, self.steps_per_epoch):
                batch = next(it, None)
                if batch is None:
                    break
                x, y = batch
                x, y = self._inputs(x), y.to(self.device, non_blocking=True)
                lr = self.optimizer.param_groups[0]["lr"]
                loss, hits = self._train_step(x, y, epoch, i)
                n = y.shape[0]
                samples += n
                loss_sum += loss.detach().double() * n
                correct += hits
                self.step_in_epoch = i + 1
                bar.update(1)
                if self.progress and (i % 10 == 0 or i + 1 == self.steps_per_epoch):
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(
                        loss=f"{float(loss_sum) / samples:.4f}",
                        acc=f"{100.0 * float(correct) / samples:.2f}%",
                        img_s=f"{samples / elapsed:.0f}",
                        refresh=False,
                    )
                if self._step_checkpoint_due() and self.step_in_epoch < self.steps_per_epoch:
                    # (at the epoch's last step the epoch-end checkpoint follows right away)
                    self._epoch_state = {
                        "loss_sum": float(loss_sum), "correct": float(correct), "samples": float(samples),
                        "time": resumed_time + time.perf_counter() - start,
                    }  # fmt: skip
                    self._save(epoch, self.step_in_epoch)
        del it  # stop DataLoader workers now rather than at garbage collection
        train_time = resumed_time + time.perf_counter() - start  # the epoch's training time, resume or not
        totals = torch.stack([loss_sum, correct, torch.tensor(float(samples), device=self.device).double()])
        loss_total, correct_total, samples_total = dist_utils.all_reduce_sum(totals).tolist()
        if samples_total == 0:
            raise ConfigError("the training loader yielded no batches (fewer samples than one batch?)")
        return {
            "loss": loss_total / samples_total,
            "acc": 100.0 * correct_total / samples_total,
            "samples": samples_total,
            "lr": float(lr),
            "time": train_time,
            "resumed_time": resumed_time,
        }

    def _train_step(
        self, x: torch.Tensor, y: torch.Tensor, epoch: int, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward/backward/update; returns the loss and the (mixup-weighted) number of correct rows."""
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        model = self.forward_model
        with autocast:
            if isinstance(self.loss_fn, ClassificationLoss):
                x, mixed = self.loss_fn.mix(x, y)
                logits = model(x)
                loss = self.loss_fn(logits, mixed)
            else:
                mixed = (y, y, 1.0)
                logits = model(x)
                loss = self.loss_fn(logits, y)
        if self.distributed:
            # All ranks must agree to stop: the sum is non-finite as soon as one rank's loss is.
            value = (
                float(dist_utils.all_reduce_sum(loss.detach().float().reshape(1).clone())) / self.world_size
            )
        else:
            value = float(loss.detach())
        if not math.isfinite(value):
            self._diverged(value, epoch, index)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.global_step += 1
        self.callbacks.call("on_after_optimizer_step", self, self.optimizer)
        with torch.no_grad():
            pred = logits.argmax(dim=1)
            a, b, lam = mixed
            hits = pred.eq(a).sum().double() * lam
            if lam < 1.0:
                hits += pred.eq(b).sum().double() * (1.0 - lam)
        return loss, hits

    def _diverged(self, value: float, epoch: int, index: int) -> None:
        kept = ""
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            kept = f"; the last good checkpoint {self.checkpoint_path} was kept (resume with --resume auto)"
        lr = self.optimizer.param_groups[0]["lr"]
        raise TrainingDivergedError(
            f"training diverged: the loss became {value} at epoch {epoch + 1}/{self.epochs}, "
            f"step {index + 1} (global step {self.global_step + 1}) with lr {lr:.4g}{kept}; "
            f"try a lower learning rate (e.g. --lr {lr / 2:.3g}), a longer warm-up, or turn amp off"
        )

    def evaluate(
        self, loader: Iterable[Any] | None = None, model: nn.Module | None = None
    ) -> dict[str, float]:
        """Loss and top-1 (top-5 with at least 5 classes) accuracy in percent of ``model`` on ``loader``.

        ``loader`` defaults to the eval loader and ``model`` to the trained one (a compact export, say, must
        already be on :attr:`device`). In a distributed run every rank evaluates its own loader (e.g. its shard
        of the test set) and the counts are summed over ranks, so all ranks must call it.
        """
        loader = loader if loader is not None else self.eval_loader
        if loader is None:
            raise ValueError("evaluate() needs a loader: the trainer has no eval_loader")
        counts = evaluation_counts(
            model if model is not None else self.model,
            loader,
            self.device,
            self.channels_last,
            self.amp_dtype,
        )
        if self.distributed:
            counts = counts.to(self.device)
            dist_utils.all_reduce_sum(counts[:4])
            dist_utils.all_reduce_max(counts[4:])
        return _metrics_from_counts(counts.cpu())

    # ------------------------------------------------------------------------------------------------------------
    # checkpoints

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
            "config": to_dict(self.config) if self.config is not None else None,
            "callbacks": self.callbacks.state_dict(),
            "metrics": {k: v if isinstance(v, int) else float(v) for k, v in self.last_metrics.items()},
        }

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

    # ------------------------------------------------------------------------------------------------------------
    # reporting

    def _summary(self, row: dict[str, Any]) -> str:
        parts = [
            f"epoch {row['epoch']}/{self.epochs}",
            f"lr {row['lr']:.4g}",
            f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%",
        ]
        if "test_top1" in row:
            test = f"test loss {row['test_loss']:.4f} top-1 {row['test_top1']:.2f}%"
            if "test_top5" in row:
                test += f" top-5 {row['test_top5']:.2f}%"
            parts.append(test)
        parts.append(f"{row['images_per_s']:.0f} img/s")
        parts.append(f"{row['epoch_time_s']:.1f}s")
        extra = [
            f"{k} {v:.4g}" for k, v in row.items() if k not in BASE_COLUMNS and isinstance(v, (int, float))
        ]
        return " | ".join(parts + extra)

    def _plot(self) -> None:
        if self.run_dir is None or self.metrics.path is None or not self.metrics.path.exists():
            return
        try:
            from ..viz import plot_curves

            plot_curves(self.metrics.path, self.run_dir / "curves.png")
        except Exception as exc:  # a plotting problem must never fail a finished run
            log.warning("could not draw curves.png: %s", exc)


@torch.no_grad()
def evaluation_counts(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device | None = None,
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``[loss sum, top-1 hits, top-5 hits, samples, classes]`` (float64, CPU) of ``model`` over ``loader``.

    Sums, so that shards evaluated on several processes add up; :func:`evaluate_model` turns them into means.
    The model's train/eval mode is restored.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, samples, num_classes = 0.0, 0, 0
    hits = {1: 0, 5: 0}
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            for k, v in accuracy_counts(logits, y).items():
                hits[k] += v
            samples += y.shape[0]
            num_classes = logits.shape[1]
    finally:
        model.train(was_training)
    return torch.tensor([loss_sum, hits[1], hits[5], samples, num_classes], dtype=torch.float64)


def _metrics_from_counts(counts: torch.Tensor) -> dict[str, float]:
    loss_sum, top1, top5, samples, num_classes = counts.tolist()
    if samples == 0:
        raise ValueError("the evaluation loader yielded no batches")
    out = {"loss": loss_sum / samples, "top1": 100.0 * top1 / samples}
    if num_classes >= 5:
        out["top5"] = 100.0 * top5 / samples
    return out


def evaluate_model(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device | None = None,
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """``{"loss", "top1", "top5"}`` of ``model`` over ``loader`` in eval mode; accuracies in percent.

    top-5 is left out when the model has fewer than 5 classes. The model's train/eval mode is restored.
    """
    return _metrics_from_counts(evaluation_counts(model, loader, device, channels_last, amp_dtype))
