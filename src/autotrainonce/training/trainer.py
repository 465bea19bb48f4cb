"""The dense training loop. It knows nothing about pruning: pruners join through :class:`Callback` hooks."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from tqdm.auto import tqdm

from ..config import Config, to_dict
from ..errors import CheckpointError, ConfigError, TrainingDivergedError
from .callbacks import Callback, CallbackList
from .checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    get_rng_state,
    load_checkpoint,
    load_model_state,
    set_rng_state,
)
from .metrics import BASE_COLUMNS, MetricsLogger, accuracy_counts
from .optim import ClassificationLoss, build_optimizer, build_scheduler, rebuild_optimizer
from .utils import count_steps, progress_enabled, resolve_device, use_channels_last

__all__ = ["Trainer", "evaluate_model"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    """Trains ``model`` on ``train_loader`` for ``epochs`` epochs, evaluating on ``eval_loader`` after each.

    Anything left as None comes from ``config`` (a :class:`~autotrainonce.config.Config`), or from the
    config defaults when there is none: the optimiser via :func:`build_optimizer`, the per-step schedule via
    :func:`build_scheduler`, cross-entropy with the configured label smoothing and mixup, and the run
    options (epochs, device, channels_last, amp, tensorboard, max_steps_per_epoch).

    With a ``run_dir`` it writes ``metrics.csv``, ``last.pt`` (every epoch, atomically) and ``curves.png``.
    Epochs are 0-based in the API (``trainer.epoch``, hooks) and 1-based in logs and metrics.csv.
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
    ) -> None:
        cfg = config if config is not None else Config()
        self.config = config
        self.model_name = model_name or (config.model.name if config is not None else None)
        self.device = resolve_device(device if device is not None else cfg.run.device)
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.epochs = int(epochs if epochs is not None else cfg.run.epochs)
        self.max_steps_per_epoch = (
            max_steps_per_epoch if max_steps_per_epoch is not None else cfg.run.max_steps_per_epoch
        )
        self.steps_per_epoch = count_steps(train_loader, self.max_steps_per_epoch)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = CallbackList(callbacks)
        self.progress = progress_enabled() if progress is None else progress

        self.channels_last = use_channels_last(
            channels_last if channels_last is not None else cfg.run.channels_last, model, self.device
        )
        self.model = self._place(model)

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
        self.last_metrics: dict[str, float] = {}
        self.metrics = MetricsLogger(
            self.run_dir, tensorboard=cfg.run.tensorboard if tensorboard is None else tensorboard
        )

    # ------------------------------------------------------------------------------------------------------------
    # model handling

    def _place(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

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
        step (supported for the LambdaLR schedules this package builds).
        """
        training = self.model.training
        self.model = self._place(new_model)
        self.model.train(training)
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
            scheduler.load_state_dict(state)
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
        self.scheduler = scheduler

    # ------------------------------------------------------------------------------------------------------------
    # the loop

    def fit(self, resume: str | Path | None = None) -> dict[str, float]:
        """Train for the remaining epochs and return the last epoch's metrics.

        ``resume``: None starts fresh; ``"auto"`` continues from ``<run_dir>/last.pt`` when it exists; a path
        continues from that checkpoint. Training resumes at the epoch after the checkpoint's.
        """
        try:
            if resume is not None and str(resume).lower() != "none":
                self._resume(resume)
            elif self.run_dir is not None and (self.run_dir / "metrics.csv").exists():
                log.info(
                    "starting fresh in %s (its earlier metrics.csv and last.pt will be replaced)",
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
        self._plot()
        return dict(self.last_metrics)

    def _run_epoch(self, epoch: int) -> None:
        self.callbacks.call("on_train_epoch_start", self, epoch)
        start = time.perf_counter()
        train = self._train_epoch(epoch)
        train_time = time.perf_counter() - start
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.global_step,
            "lr": train.pop("lr"),
            "train_loss": train["loss"],
            "train_acc": train["acc"],
        }
        extra = self.callbacks.epoch_end(self, epoch)
        if self.eval_loader is not None:
            test = self.evaluate(self.eval_loader)
            row.update({f"test_{k}": v for k, v in test.items()})
        row["epoch_time_s"] = time.perf_counter() - start
        row["images_per_s"] = train["samples"] / max(train_time, 1e-9)
        row.update(extra)
        self.callbacks.call("on_validation_end", self, row)
        self.last_metrics = row
        self.metrics.log(row)
        log.info(self._summary(row))
        if self.checkpoint_path is not None:
            atomic_save(self._checkpoint(epoch + 1), self.checkpoint_path)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.float64)
        samples = 0
        bar = tqdm(
            total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
            disable=not self.progress, leave=False, dynamic_ncols=True,
        )  # fmt: skip
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        with bar:
            for i, (x, y) in enumerate(self.train_loader):
                if i >= self.steps_per_epoch:
                    break
                x, y = self._inputs(x), y.to(self.device, non_blocking=True)
                lr = self.optimizer.param_groups[0]["lr"]
                loss, hits = self._train_step(x, y, epoch, i)
                n = y.shape[0]
                samples += n
                loss_sum += loss.detach().double() * n
                correct += hits
                bar.update(1)
                if self.progress and (i % 10 == 0 or i + 1 == self.steps_per_epoch):
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(
                        loss=f"{float(loss_sum) / samples:.4f}",
                        acc=f"{100.0 * float(correct) / samples:.2f}%",
                        img_s=f"{samples / elapsed:.0f}",
                        refresh=False,
                    )
        if samples == 0:
            raise ConfigError("the training loader yielded no batches (fewer samples than one batch?)")
        return {
            "loss": float(loss_sum) / samples,
            "acc": 100.0 * float(correct) / samples,
            "samples": float(samples),
            "lr": float(lr),
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
        with autocast:
            if isinstance(self.loss_fn, ClassificationLoss):
                x, mixed = self.loss_fn.mix(x, y)
                logits = self.model(x)
                loss = self.loss_fn(logits, mixed)
            else:
                mixed = (y, y, 1.0)
                logits = self.model(x)
                loss = self.loss_fn(logits, y)
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
        already be on :attr:`device`).
        """
        loader = loader if loader is not None else self.eval_loader
        if loader is None:
            raise ValueError("evaluate() needs a loader: the trainer has no eval_loader")
        return evaluate_model(
            model if model is not None else self.model,
            loader,
            self.device,
            self.channels_last,
            self.amp_dtype,
        )

    # ------------------------------------------------------------------------------------------------------------
    # checkpoints

    def _checkpoint(self, epochs_done: int) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "model_name": self.model_name,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": epochs_done,
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "rng": get_rng_state(),
            "config": to_dict(self.config) if self.config is not None else None,
            "callbacks": self.callbacks.state_dict(),
            "metrics": {k: v if isinstance(v, int) else float(v) for k, v in self.last_metrics.items()},
        }

    def _resume(self, resume: str | Path) -> None:
        if str(resume).lower() == "auto":
            if self.checkpoint_path is None or not self.checkpoint_path.exists():
                log.info("resume auto: no checkpoint in %s yet, starting fresh", self.run_dir)
                return
            path = self.checkpoint_path
        else:
            path = Path(resume)
        ckpt = load_checkpoint(path)
        saved_name = ckpt.get("model_name")
        if self.model_name and saved_name and saved_name.lower() != self.model_name.lower():
            raise CheckpointError(f"checkpoint {path} is of model {saved_name!r}, not {self.model_name!r}")
        missing = self.callbacks.load_state_dict(ckpt.get("callbacks") or {})
        if missing:
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
        if ckpt.get("total_steps") not in (None, self.total_steps):
            log.warning(
                "checkpoint %s was scheduled for %s steps, this run has %s; the LR schedule continues as saved",
                path, ckpt["total_steps"], self.total_steps,
            )  # fmt: skip
        self.start_epoch = self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.last_metrics = dict(ckpt.get("metrics") or {})
        set_rng_state(ckpt["rng"])
        self.metrics.resume(self.start_epoch)
        log.info("resumed from %s after epoch %d (global step %d)", path, self.start_epoch, self.global_step)

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
    if samples == 0:
        raise ValueError("the evaluation loader yielded no batches")
    out = {"loss": loss_sum / samples, "top1": 100.0 * hits[1] / samples}
    if num_classes >= 5:
        out["top5"] = 100.0 * hits[5] / samples
    return out
