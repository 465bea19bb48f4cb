"""Checks on the model a user hands over, made before anything is traced, built or changed."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError

__all__ = ["check_model"]


def check_model(model: Any, caller: str) -> None:
    """Refuse what cannot be pruned: non-modules (a zoo name, a class instead of an instance), DDP or
    DataParallel wrappers (prune the module inside) and models on the meta device (no weights to train).

    Raises ConfigError naming ``caller`` and saying what to pass instead.
    """
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise ConfigError(f"{caller} needs a model instance, got the class {model.__name__}; call it: {model.__name__}(...)")
    if not isinstance(model, nn.Module):
        hint = (
            f"for a zoo model build it first: autotrainonce.models.create({model!r}, num_classes=..., in_channels=...)"
            if isinstance(model, str)
            else "pass your torch.nn.Module instance"
        )
        raise ConfigError(f"{caller} needs a torch.nn.Module instance, got {type(model).__name__} {model!r:.60}; {hint}")
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise ConfigError(
            f"the model is already wrapped in {type(model).__name__}; give {caller} the module inside "
            "(wrapped.module) and wrap it again after the cut (docs/distributed.md)"
        )
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ConfigError(
            "the model has tensors on the meta device (no values to train or trace); materialise it first, e.g. "
            "model.to_empty(device='cpu') and initialise its weights"
        )
