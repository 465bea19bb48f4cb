"""Training callbacks: the only way code outside the Trainer (e.g. a pruner) joins the loop.

Order of the hooks in one :meth:`Trainer.fit`::

    on_fit_start
    for each epoch:
        on_train_epoch_start
        for each step: forward, backward, optimizer.step(), scheduler.step(), on_after_optimizer_step
        on_train_epoch_end        -> extra metrics for metrics.csv
        (evaluation)
        on_validation_end
        (metrics.csv, last.pt)
    on_fit_end
    on_exception                  (instead of the rest, when anything raises)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch.optim import Optimizer

# The hooks receive the running autotrainonce.training.Trainer; it is typed loosely here because this module sits
# below the training layer (the Trainer imports it, not the other way round).
Trainer = Any

__all__ = ["Callback", "CallbackList"]


class Callback:
    """Base class; every hook is a no-op, override the ones you need.

    State that must survive a resume goes through :meth:`state_dict` / :meth:`load_state_dict`; it is stored
    in ``last.pt`` under :attr:`state_key` and must hold only tensors, numbers, strings, None, lists, tuples
    and dicts (checkpoints are loaded with ``weights_only=True``).
    """

    @property
    def state_key(self) -> str:
        """Key of this callback's state in the checkpoint; the class name unless overridden."""
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None:
        """Once, after a resume (if any) has restored everything, before the first epoch runs."""

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the first step of epoch ``epoch`` (0-based)."""

    def on_after_optimizer_step(self, trainer: Trainer, optimizer: Optimizer) -> None:
        """After every ``optimizer.step()`` and LR-scheduler step; ``trainer.global_step`` counts this step.

        Not called for a step the float16 loss scaler skipped (overflowed gradients): that step changed nothing.
        """

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> dict[str, float] | None:
        """After the last step of the epoch, before evaluation; may return extra metrics to log."""
        return None

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After the epoch's evaluation; ``metrics`` holds the whole metrics.csv row (read-only)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch, once the final checkpoint is written."""

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        """When fit() is about to propagate ``exc`` (including KeyboardInterrupt)."""

    def on_load_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """During a resume, after every callback's load_state_dict and before the model's weights load.

        Callbacks that change the network's structure mid-run rebuild it here (``trainer.replace_model``) so
        that the checkpoint's weights fit.
        """

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (weights-only types)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class CallbackList:
    """Calls a hook on every callback in order and merges what they return."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)
        keys = [cb.state_key for cb in self.callbacks]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"callbacks share the state_key {duplicates}; give each a unique state_key")

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def epoch_end(self, trainer: Trainer, epoch: int) -> dict[str, float]:
        """Run on_train_epoch_end everywhere; later callbacks win when two return the same key."""
        extra: dict[str, float] = {}
        for cb in self.callbacks:
            out = cb.on_train_epoch_end(trainer, epoch)
            if out:
                extra.update({str(k): float(v) for k, v in out.items()})
        return extra

    def state_dict(self) -> dict[str, Any]:
        return {cb.state_key: cb.state_dict() for cb in self.callbacks}

    def load_state_dict(self, states: dict[str, Any]) -> list[str]:
        """Restore each callback that has a saved state; returns the keys of those that had none."""
        missing = []
        for cb in self.callbacks:
            if cb.state_key in states:
                cb.load_state_dict(states[cb.state_key])
            else:
                missing.append(cb.state_key)
        return missing
