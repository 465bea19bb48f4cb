"""Dense training: the :class:`Trainer`, its :class:`Callback` hooks and config, optimisers, schedules, checkpoints.

>>> from autotrainonce.training import Trainer
>>> trainer = Trainer(model, train_loader, test_loader, epochs=5, run_dir="runs/x")  # doctest: +SKIP
>>> trainer.fit()  # doctest: +SKIP
"""

from __future__ import annotations

from ..core.callbacks import Callback, CallbackList
from .checkpoint import atomic_save, check_state_dict, load_checkpoint, load_model_state
from .config import LRScheduleConfig, OptimConfig, TrainerRunConfig, TrainerSettings, TrainingConfig
from .evaluation import evaluate_model
from .metrics import BASE_COLUMNS, MetricsLogger, read_metrics
from .optim import ClassificationLoss, WarmupCosine, WarmupStep, build_optimizer, build_scheduler
from .trainer import Trainer
from .utils import count_steps, progress_enabled, resolve_device, seed_everything, use_channels_last

__all__ = [
    "BASE_COLUMNS",
    "Callback",
    "CallbackList",
    "ClassificationLoss",
    "LRScheduleConfig",
    "MetricsLogger",
    "OptimConfig",
    "Trainer",
    "TrainerRunConfig",
    "TrainerSettings",
    "TrainingConfig",
    "WarmupCosine",
    "WarmupStep",
    "atomic_save",
    "build_optimizer",
    "build_scheduler",
    "check_state_dict",
    "count_steps",
    "evaluate_model",
    "load_checkpoint",
    "load_model_state",
    "progress_enabled",
    "read_metrics",
    "resolve_device",
    "seed_everything",
    "use_channels_last",
]
