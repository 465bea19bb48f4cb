"""The options of :class:`~autotrainonce.ato.AutoTrainOnce`, as one flat dataclass (YAML ``prune.options``)."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError
from .resource import RESOURCE_LOSSES
from .schedule import Point, ScheduleConfig

__all__ = ["AtoConfig"]


@dataclass(frozen=True)
class AtoConfig:
    """Every keyword option of AutoTrainOnce with its default (see docs/ato.md)."""

    # controller network
    embed_dim: int = 64
    hidden_size: int = 128
    temperature: float = 0.4
    offset: float = 3.0
    min_channels: int = 1
    # controller training
    controller_lr: float = 1e-3
    controller_weight_decay: float = 1e-2
    lr_decay_factor: float = 0.1
    reg_weight: float = 4.0
    resource_loss: str = "log_ratio"
    dead_zone: float = 0.005
    # schedule (ints: steps, floats: fractions of training)
    controller_start: Point = 0.10
    proximal_start: Point = 0.20
    lambda_switch: Point = 0.49
    controller_lr_decay: Point | None = None
    freeze_at: Point = 0.51
    hyper_step: int = 20
    mask_interval: Point | None = None
    lambda_low: float = 10.0
    lambda_high: float = 1000.0
    # exactness and reproducibility
    reset_optimizer_state: bool = True
    zero_at_freeze: bool = True
    calibrate_freeze: bool = True
    tolerance: float = 1e-4
    seed: int = 0
    # "freeze" (default): the network is cut physically right after the mask freezes and the compact model
    # trains on (same accuracy as "end" in bench/compare.py, less run time); "end": cut by export(), as the paper
    surgery: str = "freeze"

    def __post_init__(self) -> None:
        if self.resource_loss not in RESOURCE_LOSSES:
            raise ConfigError(f"resource_loss={self.resource_loss!r}; choose one of {', '.join(RESOURCE_LOSSES)}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.min_channels < 0:
            raise ConfigError(f"min_channels must be >= 0, got {self.min_channels}")
        if self.surgery not in ("end", "freeze"):
            raise ConfigError(f"surgery={self.surgery!r}; choose 'end' or 'freeze'")
        if not 0 <= self.dead_zone < 1:
            raise ConfigError(f"dead_zone must be in [0, 1), got {self.dead_zone}")

    @classmethod
    def from_options(cls, options: dict[str, Any] | None = None) -> AtoConfig:
        """Build from a dict of keyword options; unknown keys are a :class:`ConfigError` listing the valid ones."""
        options = dict(options or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(
                f"unknown AutoTrainOnce option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}"
            )
        hints = typing.get_type_hints(cls)
        for key, value in options.items():
            if not _fits(value, hints[key]):
                expected = " or ".join(t.__name__ for t in typing.get_args(hints[key]) or (hints[key],))
                finite = isinstance(value, float) and not math.isfinite(value)
                raise ConfigError(
                    f"AutoTrainOnce option {key}={value!r} has the wrong type: expected {expected}"
                    + ("; inf and nan are not allowed" if finite else "")
                )
        return cls(**options)

    def schedule(self) -> ScheduleConfig:
        """The schedule part of the options."""
        names = {f.name for f in fields(ScheduleConfig)}
        return ScheduleConfig(**{n: getattr(self, n) for n in names})


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the type of an option annotation (bool is not a number; floats are finite)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if tp is int:
        return isinstance(value, int)
    if tp is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, tp) if isinstance(tp, type) else True
