"""Auto-Train-Once: a controller network picks channel groups to remove while the model trains from scratch.

::

    pruner = AutoTrainOnce(model, example_inputs, target=Flops(remove=0.5), holdout=holdout_loader,
                           total_steps=epochs * len(loader))
    ...  optimizer.step(); pruner.step(optimizer)
    compact = pruner.export()

``AtoCallback`` and ``make_callback`` (the Trainer integration) are imported lazily, so this package does not
pull in the training loop.
"""

from __future__ import annotations

from typing import Any

from .algorithm import AutoTrainOnce
from .config import AtoConfig
from .controller import Controller
from .proximal import GroupProximal
from .resource import Budget, Flops, Params, Target, calibrated_masks, resolve_target, resource_loss
from .schedule import Schedule, ScheduleConfig

__all__ = [
    "AutoTrainOnce",
    "AtoConfig",
    "Controller",
    "GroupProximal",
    "Target",
    "Flops",
    "Params",
    "Budget",
    "resolve_target",
    "resource_loss",
    "calibrated_masks",
    "Schedule",
    "ScheduleConfig",
    "AtoCallback",
    "make_callback",
    "plot_widths",
]

_LAZY = {"AtoCallback": ".callback", "make_callback": ".callback", "plot_widths": ".plots"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
