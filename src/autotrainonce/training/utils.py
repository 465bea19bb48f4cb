"""Small helpers of the training loop: seeding, device and memory-format choice, progress-bar policy."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["seed_everything", "resolve_device", "use_channels_last", "progress_enabled", "count_steps"]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; otherwise the named device, checked to exist."""
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was asked for but CUDA is not available; use --device cpu or auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return dev


def use_channels_last(setting: bool | str, model: nn.Module, device: torch.device) -> bool:
    """Decide the memory format: True/False as given; ``"auto"`` = on CUDA for models with 2-D convolutions.

    On CPU, channels-last helps some oneDNN kernels and hurts others, so auto leaves it off there rather
    than guessing; ask for it explicitly after measuring.
    """
    if isinstance(setting, bool):
        return setting
    if str(setting).lower() != "auto":
        raise ConfigError(f"channels_last must be true, false or auto, got {setting!r}")
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def progress_enabled() -> bool:
    """Progress bars only on an interactive terminal and never under CI (CI=true or any non-empty CI)."""
    ci = os.environ.get("CI", "").strip().lower()
    return sys.stderr.isatty() and ci in ("", "0", "false")


def count_steps(loader: object, max_steps_per_epoch: int | None = None) -> int:
    """Optimiser steps per epoch: ``len(loader)``, capped by ``max_steps_per_epoch``."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        if max_steps_per_epoch is None:
            raise ConfigError("the training loader has no length; set run.max_steps_per_epoch") from None
        return max_steps_per_epoch
    if n == 0:
        raise ConfigError("the training loader yields no batches (dataset smaller than one batch?)")
    return min(n, max_steps_per_epoch) if max_steps_per_epoch else n
