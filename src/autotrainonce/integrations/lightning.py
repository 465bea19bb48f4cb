"""Auto-Train-Once as a PyTorch Lightning callback.

.. code-block:: python

    from autotrainonce.integrations.lightning import AutoTrainOnceCallback

    ato_cb = AutoTrainOnceCallback(Flops(remove=0.5), example_inputs=torch.zeros(1, 3, 32, 32), module="net")
    trainer = lightning.Trainer(max_epochs=30, callbacks=[ato_cb])
    trainer.fit(lit_module, train_loader)
    compact = ato_cb.export()

The pruner is built when training starts, with ``total_steps = trainer.estimated_stepping_batches``, and steps
once after every optimizer step (not after every batch when gradients accumulate). See docs/integrations.md.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as e:
        raise ImportError(
            "autotrainonce.integrations.lightning needs PyTorch Lightning, which is not installed: "
            "pip install lightning"
        ) from e

from ..ato import AutoTrainOnce
from ..ato.resource import Target
from ..errors import ConfigError
from ._common import (
    adopt_cut,
    build_pruner,
    check_options,
    cut_line,
    loggable,
    resolve_module,
    unwrap_optimizer,
)

__all__ = ["AutoTrainOnceCallback"]

log = logging.getLogger(__name__)


def _default_batch_fn(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch
    raise ConfigError(
        f"AutoTrainOnceCallback cannot read (inputs, targets) from a training batch of type {type(batch).__name__}; "
        "pass holdout=<loader of (inputs, targets) batches> or batch_fn=lambda batch: (inputs, targets)"
    )


class AutoTrainOnceCallback(pl.Callback):
    """Train and prune a LightningModule (or one of its submodules) with Auto-Train-Once.

    Args:
        target: ``autotrainonce.Flops(remove=...)`` or ``autotrainonce.Params(remove=...)``.
        example_inputs: a tensor (or tuple of tensors) the pruned module accepts; used to find its channel groups.
        holdout: a loader of ``(inputs, targets)`` batches for the controller; None uses the training batches
            (through ``batch_fn``).
        module: dotted attribute name of the network to prune inside the LightningModule (e.g. ``"net"``);
            None prunes the LightningModule itself (its ``forward``).
        criterion: the controller's task loss ``criterion(outputs, targets)``; default cross-entropy.
        batch_fn: turns a training batch into ``(inputs, targets)`` when there is no holdout; default: the batch
            itself when it is a tuple or list.
        log_metrics: log ``pruner.metrics()`` (keys ``ato/...``) through ``pl_module.log_dict`` at each epoch end.
        **options: AutoTrainOnce keyword options (docs/ato.md); ``total_steps`` and ``steps_per_epoch`` come from
            the Trainer.

    Supported: one optimizer with automatic optimization, on one device; DDP only with ``surgery="end"``.
    """

    def __init__(
        self,
        target: Target,
        example_inputs: Any,
        holdout: Iterable[Any] | None = None,
        *,
        module: str | None = None,
        criterion: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
        batch_fn: Callable[[Any], Any] | None = None,
        log_metrics: bool = True,
        **options: Any,
    ) -> None:
        self.config = check_options(target, options, "Lightning")
        self.target = target
        self.example_inputs = example_inputs
        self.holdout = holdout
        self.module = module
        self.criterion = criterion
        self.batch_fn = batch_fn or _default_batch_fn
        self.log_metrics = log_metrics
        self.options = dict(options)
        self.pruner: AutoTrainOnce | None = None
        self.cut_step: int | None = None  # trainer.global_step at which the network was cut
        self._pending: dict[str, Any] | None = None  # pruner state waiting for the pruner to exist
        self._restored = False  # the pruner state was loaded before the model weights
        self._last_step: int | None = None
        self._warned_step = False

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a Lightning checkpoint (one per pruned submodule)."""
        return self._generate_state_key(module=self.module)

    # ------------------------------------------------------------------------------------------- checks
    def _check_strategy(self, trainer: pl.Trainer) -> None:
        strategy = trainer.strategy
        name = type(strategy).__name__
        if isinstance(strategy, pl.strategies.SingleDeviceStrategy):
            return
        if type(strategy) is pl.strategies.DDPStrategy:
            if self.config.surgery == "freeze":
                raise ConfigError(
                    "AutoTrainOnceCallback cannot cut the network in the middle of a DDP run (the DDP wrapper holds "
                    "buffers sized for the dense parameters): pass surgery='end' to the callback (the network is "
                    "cut by export() after training) or train on a single device"
                )
            return
        raise ConfigError(
            f"AutoTrainOnceCallback does not support the {name} strategy (it shards or wraps parameters the pruner "
            "must see whole); train on a single device, or with strategy='ddp' and surgery='end'"
        )

    def _check_optimization(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ConfigError(
                "AutoTrainOnceCallback needs automatic optimization; with manual optimization build "
                "autotrainonce.AutoTrainOnce yourself and call pruner.step(optimizer, batch=...) right after "
                "optimizer.step() in training_step"
            )
        n = len(trainer.optimizers)
        if n != 1:
            raise ConfigError(
                f"AutoTrainOnceCallback needs exactly one optimizer, configure_optimizers returned {n}; return a "
                "single optimizer (one optimizer with several parameter groups works)"
            )

    # ------------------------------------------------------------------------------------------- building
    def _target_module(self, pl_module: pl.LightningModule) -> nn.Module:
        return resolve_module(pl_module, self.module)

    def _build(
        self, pl_module: pl.LightningModule, total_steps: float, steps_per_epoch: int | None
    ) -> AutoTrainOnce:
        self.pruner = build_pruner(
            self._target_module(pl_module),
            self.example_inputs,
            self.target,
            self.holdout,
            total_steps,
            steps_per_epoch,
            self.criterion,
            self.options,
            "Lightning",
        )
        return self.pruner

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the strategy (fit) and hook the checkpoint restore (every stage)."""
        if stage == "fit":
            self._check_strategy(trainer)
        self._target_module(pl_module)  # a wrong module name fails now, not when training starts
        self._restored = False
        if getattr(pl_module.__dict__.get("on_load_checkpoint"), "_ato_callback", None) is self:
            return
        # A checkpoint written after the cut holds compact weights, which the dense module cannot load. The
        # LightningModule's on_load_checkpoint runs just before the weights load; wrap it (on this instance only,
        # until teardown) to rebuild the pruner from the checkpoint first, which cuts the module to its shapes.
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            self._restore_before_weights(pl_module, checkpoint)
            original(checkpoint)

        on_load_checkpoint._ato_callback = self  # type: ignore[attr-defined]
        pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the checkpoint hook installed by :meth:`setup`."""
        hook = pl_module.__dict__.get("on_load_checkpoint")
        if getattr(hook, "_ato_callback", None) is self:
            del pl_module.on_load_checkpoint

    def _restore_before_weights(self, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        pruner_state = state.get("pruner")
        if pruner_state is None:
            return
        p = self.pruner
        if p is not None and p.cut and p.model is self._target_module(pl_module):
            # This module was already cut in this process (e.g. trainer.test(ckpt_path=...) after fit).
            if not pruner_state.get("cut"):
                raise ConfigError(
                    "this checkpoint was written before the network was cut, so it holds dense weights, but the "
                    "module was already cut; load it into a freshly built (dense) model instead"
                )
            p.load_state_dict(pruner_state)
        else:
            p = self._build(pl_module, pruner_state["total_steps"], None)
            p.load_state_dict(pruner_state)  # cuts the module in place when the state was saved after the cut
            if p.cut:
                adopt_cut(p, pl_module, self.module)
        self._restored = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the pruner (or check the restored one) with the Trainer's number of optimizer steps."""
        self._check_optimization(trainer, pl_module)
        total = trainer.estimated_stepping_batches
        batches = trainer.num_training_batches
        spe = math.ceil(batches / max(1, trainer.accumulate_grad_batches)) if math.isfinite(batches) else None
        if self.pruner is None:
            p = self._build(pl_module, total, spe)
            if (
                self._pending is not None
            ):  # loaded by load_state_dict without the hook (a checkpoint before the cut)
                p.load_state_dict(self._pending)
                if p.cut:
                    adopt_cut(p, pl_module, self.module)
        else:
            planned = self.pruner.schedule.total_steps
            if math.isfinite(total) and int(total) != planned:
                warnings.warn(
                    f"the ATO schedule was planned for {planned} optimizer steps, this run has {int(total)}; "
                    "the pruner keeps its plan",
                    stacklevel=2,
                )
            if spe:
                self.pruner.set_steps_per_epoch(spe)
        self._pending = None
        self._last_step = int(trainer.global_step)

    # ------------------------------------------------------------------------------------------- stepping
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """One pruner step when this batch ended with an optimizer step (not on accumulation-only batches)."""
        p = self.pruner
        step = int(trainer.global_step)
        if p is None or self._last_step is None or step == self._last_step:
            return
        self._last_step = step
        if p.global_step != step - 1:
            # The trainer's counter is the truth (e.g. a resume from a checkpoint without the pruner's state).
            if not self._warned_step:
                warnings.warn(
                    f"ATO step counter {p.global_step} != optimizer steps {step - 1}; following the trainer",
                    stacklevel=2,
                )
                self._warned_step = True
            p.global_step = step - 1
        optimizer = unwrap_optimizer(trainer.optimizers[0])
        cut = p.step(optimizer, batch=None if self.holdout is not None else self.batch_fn(batch))
        if cut:
            adopt_cut(p, pl_module, self.module)
            self.cut_step = step
            if trainer.is_global_zero:
                log.info(cut_line(p))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log ``pruner.metrics()`` through the LightningModule's logger."""
        if self.log_metrics and self.pruner is not None:
            pl_module.log_dict(loggable(self.pruner.metrics()), on_step=False, on_epoch=True)

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The pruner's state (controller, masks, step), saved in Lightning checkpoints."""
        return {} if self.pruner is None else {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (Lightning calls it when resuming with ``ckpt_path``)."""
        if self._restored or "pruner" not in state_dict:
            return  # already loaded before the weights (see setup)
        if self.pruner is not None:
            self.pruner.load_state_dict(state_dict["pruner"])
        else:
            self._pending = state_dict["pruner"]

    def export(self) -> nn.Module:
        """The compact model (see :meth:`AutoTrainOnce.export`); call after ``trainer.fit``."""
        if self.pruner is None:
            raise ConfigError(
                "AutoTrainOnceCallback.export() before training: run trainer.fit(...) with the callback"
            )
        return self.pruner.export()
