"""The pruning methods and their registry: ``create(name, model, example_inputs, target, total_steps=...)``.

Every method implements :class:`autotrainonce.core.Pruner` and takes the same arguments::

    pruner = pruners.create("ato", model, example_inputs, Flops(remove=0.5), total_steps=n, **options)

Built in: ``ato`` (Auto-Train-Once, :mod:`autotrainonce.ato`), ``l1`` (one-shot L1-norm cut) and ``magnitude``
(progressive magnitude pruning), both in :mod:`.magnitude`. Add your own with :func:`register`. The Trainer,
the CLI (``--prune NAME``) and the benchmark find methods here; :class:`PrunerCallback` runs any of them in the
Trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ato import AutoTrainOnce
from ..core.pruner import Pruner
from ..registry import Registry
from ..space.targets import Flops, Params, Target
from .callback import MASK_FILE, WIDTHS_FILE, PrunerCallback, make_callback, target_from_config
from .magnitude import L1OneShot, MagnitudePruner, ProgressiveMagnitude, channel_scores, greedy_masks

__all__ = [
    "MASK_FILE",
    "WIDTHS_FILE",
    "Flops",
    "L1OneShot",
    "MagnitudePruner",
    "Params",
    "ProgressiveMagnitude",
    "Pruner",
    "PrunerCallback",
    "Target",
    "available",
    "channel_scores",
    "create",
    "greedy_masks",
    "make_callback",
    "register",
    "target_from_config",
]

PRUNERS: Registry[Pruner] = Registry("pruning method")
PRUNERS.register("ato")(AutoTrainOnce)
PRUNERS.register("l1")(L1OneShot)
PRUNERS.register("magnitude")(ProgressiveMagnitude)


def register(name: str) -> Callable[[Callable[..., Pruner]], Callable[..., Pruner]]:
    """Decorator registering a pruner class (or factory) under ``name``.

    It is called as ``factory(model, example_inputs, target, holdout, total_steps=..., steps_per_epoch=...,
    **options)`` and must return a :class:`~autotrainonce.core.Pruner`.
    """
    return PRUNERS.register(name)


def available() -> list[str]:
    """Registered method names, sorted."""
    return PRUNERS.names()


def create(
    name: str,
    model: Any,
    example_inputs: Any,
    target: Target,
    holdout: Any = None,
    *,
    total_steps: int,
    steps_per_epoch: int | None = None,
    **options: Any,
) -> Pruner:
    """Build method ``name`` for ``model``; an unknown name lists the registered ones."""
    factory = PRUNERS.get(name)
    kwargs: dict[str, Any] = {"total_steps": total_steps, **options}
    if steps_per_epoch is not None:
        kwargs["steps_per_epoch"] = steps_per_epoch
    return factory(model, example_inputs, target, holdout, **kwargs)
