"""The run configuration: nested dataclasses (:mod:`.schema`), loaded from YAML and checked by key (:mod:`.loading`).

A config has six sections (``model``, ``data``, ``optim``, ``schedule``, ``run``, ``prune``). Every field has a
type, a default and a docstring. The ``optim``, ``schedule`` and Trainer ``run`` options are the training
layer's own (:mod:`autotrainonce.training.config`); this package composes them and imports from ``training``,
never the other way round.
"""

from __future__ import annotations

from .loading import config_from_dict, load_config, merge_overrides, save_config, to_dict, to_yaml, validate
from .schema import (
    Config,
    DataConfig,
    LRScheduleConfig,
    ModelConfig,
    OptimConfig,
    PruneConfig,
    RunConfig,
)

__all__ = [
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "LRScheduleConfig",
    "RunConfig",
    "PruneConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "merge_overrides",
    "validate",
    "to_dict",
    "to_yaml",
    "save_config",
]
