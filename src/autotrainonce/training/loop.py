"""The Trainer's loop: ``fit`` over epochs, one epoch over batches, one optimiser step, and the epoch's report."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, TrainingDivergedError
from . import distributed as dist_utils
from .metrics import BASE_COLUMNS
from .optim import ClassificationLoss
from .resume import CheckpointMixin

__all__ = ["TrainingLoop", "LossFn"]

# The Trainer's logger (docs/training.md names it): the per-epoch summary line.
log = logging.getLogger("autotrainonce.training.trainer")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingLoop(CheckpointMixin):
    """The epoch and step loop of :class:`~autotrainonce.training.Trainer`, with its checkpoints.

    The Trainer sets up the state below and provides ``evaluate`` (run after every epoch).
    """

    eval_loader: Iterable[Any] | None
    device: torch.device
    channels_last: bool
    epochs: int
    step_in_epoch: int
    loss_fn: ClassificationLoss | LossFn
    amp_dtype: torch.dtype | None
    progress: bool
    _ddp: nn.Module | None

    @property
    def forward_model(self) -> nn.Module:
        """The module the training step calls: the DDP wrapper in distributed runs, else :attr:`model`."""
        return self._ddp if self._ddp is not None else self.model

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

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
            test = self.evaluate(self.eval_loader)  # type: ignore[attr-defined]
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
                self.batch = (x, y)  # for callbacks: a pruner without a holdout learns from the training batch
                loss, hits, stepped = self._train_step(x, y, epoch, i)
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
                # (a skipped step leaves global_step where the last checkpoint was written; at the epoch's
                # last step the epoch-end checkpoint follows right away)
                if stepped and self._step_checkpoint_due() and self.step_in_epoch < self.steps_per_epoch:
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
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One forward/backward/update: the loss, the (mixup-weighted) number of correct rows, and whether the
        optimiser step was taken (False when the float16 loss scaler skipped it)."""
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
        stepped = self._optimizer_step()
        if stepped:
            # A skipped step is no step: the LR schedule, the step count and the callbacks (ATO's proximal
            # step) do not advance, so they stay in line with the updates the weights actually received.
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
        return loss, hits, stepped

    def _optimizer_step(self) -> bool:
        """``optimizer.step()`` through the loss scaler; False when the scaler skipped it (inf/nan gradients).

        The scaler skips a step whose gradients overflowed and then lowers its scale; comparing the scale
        before and after ``update()`` is how torch recommends telling (it never lowers it otherwise). Every rank
        sees the same all-reduced gradients, so they all agree.
        """
        if not self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # a plain optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

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
