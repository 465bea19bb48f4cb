"""The dense Trainer. It knows nothing about pruning: pruners join through :class:`Callback` hooks.

The class is assembled by job: this module builds it (options from a config, device, DDP wrapper) and swaps
its model; the loop is :mod:`.loop`, checkpoints and resume :mod:`.resume`, the evaluation pass
:mod:`.evaluation`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from ..core.callbacks import Callback, CallbackList
from ..errors import ConfigError
from . import distributed as dist_utils
from .config import TrainerSettings, TrainingConfig
from .evaluation import evaluate_across_ranks, evaluate_model, evaluation_counts
from .loop import LossFn, TrainingLoop
from .metrics import MetricsLogger
from .optim import ClassificationLoss, build_optimizer, build_scheduler, rebuild_optimizer
from .utils import count_steps, progress_enabled, resolve_device, use_channels_last

# evaluate_model and evaluation_counts moved to .evaluation; still importable from here for older imports.
__all__ = ["Trainer", "evaluate_model", "evaluation_counts"]

log = logging.getLogger(__name__)


class Trainer(TrainingLoop):
    """Trains ``model`` on ``train_loader`` for ``epochs`` epochs, evaluating on ``eval_loader`` after each.

    Anything left as None comes from ``config`` (a :class:`~autotrainonce.training.config.TrainingConfig`, or a
    whole-run :class:`~autotrainonce.config.Config`), or from the config defaults when there is none: the
    optimiser via :func:`build_optimizer`, the per-step schedule via :func:`build_scheduler`, cross-entropy with
    the configured label smoothing and mixup, and the run options (epochs, device, channels_last, amp,
    tensorboard, max_steps_per_epoch, checkpoint_every_steps).

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
        config: TrainerSettings | None = None,
        model_name: str | None = None,
        max_steps_per_epoch: int | None = None,
        channels_last: bool | str | None = None,
        amp: bool | None = None,
        tensorboard: bool | None = None,
        progress: bool | None = None,
        checkpoint_every_steps: int | None = None,
        distributed: bool | None = None,
    ) -> None:
        cfg: TrainerSettings = config if config is not None else TrainingConfig()
        self.config = config
        # A whole-run Config also names its model (a TrainingConfig has no model section).
        self.model_name = model_name or getattr(getattr(config, "model", None), "name", None)
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
        #: the (inputs, targets) of the step in progress, for callbacks (a pruner without a holdout learns from it)
        self.batch: tuple[Any, Any] | None = None
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
        return evaluate_across_ranks(
            model if model is not None else self.model,
            loader,
            self.device,
            self.channels_last,
            self.amp_dtype,
            self.distributed,
        )
