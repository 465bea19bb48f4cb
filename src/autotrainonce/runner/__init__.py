"""One whole run from a :class:`~autotrainonce.config.Config`: what ``ato train`` and ``ato demo`` call.

It sits above ``config`` and ``training`` (it builds data, model, pruner and Trainer from a run config), so it
is not part of the training layer, which knows nothing of the whole-run config. :mod:`.builders` makes the data
and loaders, :mod:`.run` the run, :mod:`.report` results.json and the tables.

>>> from autotrainonce.config import load_config
>>> from autotrainonce.runner import run_training
>>> result = run_training(load_config("configs/resnet20_fmnist.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from .builders import (
    RunData,
    build_data,
    build_model,
    build_test_set,
    per_rank_batch_size,
    resolve_model_config,
)
from .report import RESULTS_FILE, RunResult, cpu_latency, format_comparison, format_table
from .run import run_training

__all__ = [
    "RESULTS_FILE",
    "RunData",
    "RunResult",
    "build_data",
    "build_model",
    "build_test_set",
    "cpu_latency",
    "format_comparison",
    "format_table",
    "per_rank_batch_size",
    "resolve_model_config",
    "run_training",
]
