"""Auto-Train-Once: a controller network picks channel groups to remove while the model trains from scratch.

::

    pruner = AutoTrainOnce(model, example_inputs, target=Flops(remove=0.5), holdout=holdout_loader,
                           total_steps=epochs * len(loader))
    ...  optimizer.step(); pruner.step(optimizer)
    compact = pruner.export()

The Trainer integration is :class:`autotrainonce.pruners.PrunerCallback` (``pruners.make_callback``), the same
for every registered method; this package does not import the training loop.
"""

from __future__ import annotations

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
]
