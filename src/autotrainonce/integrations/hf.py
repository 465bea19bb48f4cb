"""Auto-Train-Once as a Hugging Face ``transformers.TrainerCallback``.

.. code-block:: python

    from autotrainonce.integrations.hf import AutoTrainOnceCallback

    ato_cb = AutoTrainOnceCallback(Flops(remove=0.5), example_inputs=torch.zeros(1, 3, 32, 32), module="backbone")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds, callbacks=[ato_cb])
    trainer.train()
    compact = ato_cb.export()

The pruner is built when training starts, with ``total_steps = state.max_steps``, and steps in
``on_optimizer_step``, i.e. once per real optimizer step whatever ``gradient_accumulation_steps`` is. The
pruner's state is saved as ``ato_state.pt`` in every ``checkpoint-N`` folder; see :meth:`AutoTrainOnceCallback.restore`
for resuming, and docs/integrations.md for the limits.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as e:
    raise ImportError(
        "autotrainonce.integrations.hf needs Hugging Face transformers, which is not installed: "
        "pip install transformers accelerate"
    ) from e

from ..ato import AutoTrainOnce
from ..ato.resource import Target
from ..errors import CheckpointError, ConfigError
from ._common import (
    MappedLoader,
    adopt_cut,
    build_pruner,
    check_options,
    cut_line,
    loggable,
    resolve_module,
    unwrap_optimizer,
)

__all__ = ["ATO_STATE_FILE", "AutoTrainOnceCallback", "logits_cross_entropy"]

log = logging.getLogger(__name__)

#: file written into every ``checkpoint-N`` folder: the pruner's state (``torch.load(weights_only=True)``)
ATO_STATE_FILE = "ato_state.pt"

_LABEL_KEYS = ("labels", "label", "label_ids")


def _logits(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and outputs.get("logits") is not None:
        return outputs["logits"]
    if getattr(outputs, "logits", None) is not None:
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise ConfigError(
        f"cannot find logits in a model output of type {type(outputs).__name__}; pass criterion=<fn(outputs, targets)>"
    )


def logits_cross_entropy(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the logits of a model output: a tensor, ``out["logits"]``, ``out.logits`` or ``out[0]``."""
    return F.cross_entropy(_logits(outputs), targets)


def default_batch_fn(batch: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` of a batch: a dict with a label key and exactly one other tensor, or a tuple/list."""
    if isinstance(batch, Mapping):
        label = next((k for k in _LABEL_KEYS if k in batch), None)
        others = [k for k, v in batch.items() if k != label and isinstance(v, torch.Tensor)]
        if label is not None and len(others) == 1:
            return batch[others[0]], batch[label]
        if label is None:
            raise ConfigError(
                f"the batch the model received has no labels (keys {sorted(batch)}; the Trainer removes them before "
                "the forward pass when compute_loss_func or label smoothing is set): pass holdout=<loader of "
                "labelled batches> to AutoTrainOnceCallback"
            )
        raise ConfigError(
            f"cannot tell (inputs, labels) apart in a batch with keys {sorted(batch)}; pass "
            "batch_fn=lambda batch: (batch['<input key>'], batch['labels']) to AutoTrainOnceCallback"
        )
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ConfigError(
        f"cannot read (inputs, labels) from a batch of type {type(batch).__name__}; pass batch_fn=... or holdout=..."
    )


class _BatchRecorder:
    """forward_pre_hook keeping the latest training batch the Trainer fed the model (``model(**inputs)``)."""

    def __init__(self) -> None:
        self.batch: Any = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training and torch.is_grad_enabled():
            self.batch = dict(kwargs) if kwargs else args


class AutoTrainOnceCallback(TrainerCallback):
    """Train and prune a model (or one of its submodules) under ``transformers.Trainer`` with Auto-Train-Once.

    Args:
        target: ``autotrainonce.Flops(remove=...)`` or ``autotrainonce.Params(remove=...)``.
        example_inputs: a tensor (or tuple of tensors) the pruned module accepts positionally; used to find its
            channel groups (the module must be traceable by torch.fx).
        holdout: a loader of held-out batches for the controller (``batch_fn`` turns each into
            ``(inputs, labels)``); None uses the training batches the Trainer feeds the model.
        module: dotted attribute name of the network to prune inside the model (e.g. ``"backbone"``); None
            prunes the whole model.
        criterion: the controller's task loss ``criterion(outputs, labels)``; default
            :func:`logits_cross_entropy`.
        batch_fn: ``batch -> (inputs, labels)``; default :func:`default_batch_fn` (a dict with ``labels`` and
            one input tensor, or a tuple).
        **options: AutoTrainOnce keyword options (docs/ato.md); ``total_steps`` and ``steps_per_epoch`` come from
            the Trainer.

    Supported: single-device (or DataParallel) training; DDP only with ``surgery="end"``; not DeepSpeed/FSDP.
    """

    def __init__(
        self,
        target: Target,
        example_inputs: Any,
        holdout: Iterable[Any] | None = None,
        *,
        module: str | None = None,
        criterion: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
        batch_fn: Callable[[Any], tuple[Any, Any]] | None = None,
        **options: Any,
    ) -> None:
        self.config = check_options(target, options, "Hugging Face")
        self.target = target
        self.example_inputs = example_inputs
        self.batch_fn = batch_fn or default_batch_fn
        self.holdout = None if holdout is None else MappedLoader(holdout, self.batch_fn)
        self.module = module
        self.criterion = criterion or logits_cross_entropy
        self.options = dict(options)
        self.pruner: AutoTrainOnce | None = None
        self.cut_step: int | None = None  # optimizer step at which the network was cut
        self._root: nn.Module | None = None
        self._recorder: _BatchRecorder | None = None
        self._hook: Any = None
        self._warned_step = False

    # ------------------------------------------------------------------------------------------- building
    def _check_args(self, args: TrainingArguments) -> None:
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise ConfigError(
                "AutoTrainOnceCallback does not support DeepSpeed or FSDP (they shard the parameters the pruner "
                "must see whole); train without them, or with plain DDP and surgery='end'"
            )
        if args.world_size > 1 and self.config.surgery == "freeze":
            raise ConfigError(
                f"AutoTrainOnceCallback cannot cut the network in the middle of a distributed run ({args.world_size} "
                "processes; the DDP wrapper holds buffers sized for the dense parameters): pass surgery='end' to the "
                "callback (export() cuts the network after training) or train in one process"
            )

    def _build(self, model: nn.Module, total_steps: float, steps_per_epoch: int | None) -> AutoTrainOnce:
        self._root = model
        self.pruner = build_pruner(
            resolve_module(model, self.module),
            self.example_inputs,
            self.target,
            self.holdout,
            total_steps,
            steps_per_epoch,
            self.criterion,
            self.options,
            "Hugging Face",
        )
        return self.pruner

    def restore(self, model: nn.Module, checkpoint_dir: str | os.PathLike[str]) -> None:
        """Load the pruner's state from ``checkpoint_dir/ato_state.pt`` before ``trainer.train(resume_from_checkpoint=...)``.

        Needed when the checkpoint was written after the cut: this cuts ``model`` (the one given to the Trainer)
        to the checkpoint's shapes, so that the Trainer can load its weights and optimizer state. A checkpoint
        from before the cut is restored automatically when training resumes.
        """
        path = os.path.join(os.fspath(checkpoint_dir), ATO_STATE_FILE)
        if not os.path.isfile(path):
            raise CheckpointError(
                f"{path} does not exist: the checkpoint was not written with AutoTrainOnceCallback, so the pruner "
                "cannot resume from it; start the run anew"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        pruner = self._build(model, state["total_steps"], None)
        pruner.load_state_dict(state)  # cuts the model in place when the state was saved after the cut
        if pruner.cut:
            adopt_cut(pruner, model, self.module)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Build the pruner (or check the restored one) with the Trainer's ``max_steps``."""
        self._check_args(args)
        model: nn.Module = kwargs["model"]
        loader = kwargs.get("train_dataloader")
        try:
            spe = (
                math.ceil(len(loader) / max(1, args.gradient_accumulation_steps))
                if loader is not None
                else None
            )
        except TypeError:  # an iterable dataset without a length
            spe = None
        p = self.pruner
        if p is None:
            p = self._build(model, state.max_steps, spe)
            if state.global_step > 0:
                self._resume_without_restore(args, state, p)
        else:
            if resolve_module(model, self.module) is not p.model:
                raise ConfigError(
                    "AutoTrainOnceCallback.restore() was given another model than the Trainer's; pass the model "
                    "the Trainer trains"
                )
            self._root = model
            if state.max_steps != p.schedule.total_steps:
                warnings.warn(
                    f"the ATO schedule was planned for {p.schedule.total_steps} optimizer steps, this run has "
                    f"{state.max_steps}; the pruner keeps its plan",
                    stacklevel=2,
                )
            if spe:
                p.set_steps_per_epoch(spe)
        if self.holdout is None:
            self._recorder = _BatchRecorder()
            self._hook = model.register_forward_pre_hook(self._recorder, with_kwargs=True)

    def _resume_without_restore(self, args: TrainingArguments, state: TrainerState, p: AutoTrainOnce) -> None:
        # The Trainer resumed (its weights are loaded, so the checkpoint was written before the cut, or the
        # model was cut by restore()). The usual checkpoint folder holds the pruner's state.
        path = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", ATO_STATE_FILE)
        if not os.path.isfile(path):
            raise ConfigError(
                f"the Trainer resumes at step {state.global_step} but no pruner state was restored ({path} does not "
                "exist); call ato_callback.restore(model, '<checkpoint folder>') before "
                "trainer.train(resume_from_checkpoint=...)"
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("cut"):
            raise ConfigError(
                f"{path} was written after the network was cut; call ato_callback.restore(model, "
                "'<checkpoint folder>') before trainer.train(resume_from_checkpoint=...)"
            )
        p.load_state_dict(saved)

    # ------------------------------------------------------------------------------------------- stepping
    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """One pruner step after each optimizer step (the Trainer calls this once per accumulated step)."""
        p = self.pruner
        if p is None:
            return
        step = int(state.global_step)  # incremented by the Trainer after this event
        if p.global_step != step:
            if not self._warned_step:
                warnings.warn(
                    f"ATO step counter {p.global_step} != optimizer steps {step}; following the trainer",
                    stacklevel=2,
                )
                self._warned_step = True
            p.global_step = step
        batch = None
        if self.holdout is None and self._recorder is not None and self._recorder.batch is not None:
            batch = self.batch_fn(self._recorder.batch)
        cut = p.step(unwrap_optimizer(kwargs["optimizer"]), batch=batch)
        if cut:
            assert self._root is not None
            adopt_cut(p, self._root, self.module)
            self.cut_step = step + 1
            if state.is_world_process_zero:
                log.info(cut_line(p))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add ``pruner.metrics()`` (keys ``ato/...``) to the training logs and to ``state.log_history``."""
        if self.pruner is None or logs is None or "loss" not in logs:
            return
        metrics = loggable(self.pruner.metrics())
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write the pruner's state into the checkpoint folder the Trainer just wrote."""
        if self.pruner is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(folder):
            torch.save(self.pruner.state_dict(), os.path.join(folder, ATO_STATE_FILE))
        else:
            warnings.warn(f"no checkpoint folder {folder}; the pruner's state was not saved", stacklevel=2)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Remove the batch hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def export(self) -> nn.Module:
        """The compact model (see :meth:`AutoTrainOnce.export`); call after ``trainer.train()``."""
        if self.pruner is None:
            raise ConfigError(
                "AutoTrainOnceCallback.export() before training: run trainer.train() with the callback"
            )
        return self.pruner.export()
