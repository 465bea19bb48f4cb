"""The options of :class:`~autotrainonce.ato.AutoTrainOnce`, as one flat dataclass (YAML ``prune.options``)."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError
from ..space.targets import check_round_to
from .resource import RESOURCE_LOSSES
from .schedule import REDUCED_UPDATE_COST, Point, ScheduleConfig

__all__ = ["AtoConfig", "VARIANTS", "DECIDE_AT", "DECIDE_CONTROLLER_BATCH", "DECIDE_BY", "DECIDE_WHEN", "RESOURCE_COSTS"]

VARIANTS = ("paper", "decide")
#: who chooses the mask at decide_at: the controller (ATO); the controller's per-group widths with the
#: largest-L1 channels inside each group ("widths"); or, as ablation controls with the same ramp and cut, the
#: channels' weight magnitude or chance (both calibrated to the same target; no controller steps)
DECIDE_BY = ("controller", "widths", "magnitude", "random")
#: when variant="decide" decides: at decide_at ("deadline"), or as soon as the controller's own mask is
#: stable and on target ("stable"; decide_at is then the deadline and the freeze keeps the ramp's length)
DECIDE_WHEN = ("deadline", "stable")
#: what the resource term measures: the cost of the step's noisy hard draw (the paper) or the expected cost
#: under the controller's keep probabilities (no sampling noise in the resource gradient)
RESOURCE_COSTS = ("draw", "expected")
#: default schedule of variant="decide" (fractions of training): the controller searches from 0.05, the mask
#: is decided at 0.12, its dropped channels ramp to zero until the freeze and cut at 0.25, and the compact
#: network trains for the last 75% (docs/decisions.md: measured against 0.10 / 0.35 / 0.51 and 0.25 / 0.40)
DECIDE_AT = 0.12
DECIDE_CONTROLLER_START = 0.05
DECIDE_FREEZE_AT = 0.25
#: rows per controller update of variant="decide" in runs short enough for the controller cost cap to bind (the
#: first rows of each batch): an update is a forward and backward pass through the soft-masked network, ~0.8 of
#: a 128-row training step on CPU with the whole batch and ~0.3 with 64 rows (docs/decisions.md)
DECIDE_CONTROLLER_BATCH = 64
#: the paper variant keeps the paper's schedule (scaled from its 245-epoch run)
PAPER_CONTROLLER_START = 0.10
PAPER_FREEZE_AT = 0.51


@dataclass(frozen=True)
class AtoConfig:
    """Every keyword option of AutoTrainOnce with its default (see docs/ato.md)."""

    # controller network
    embed_dim: int = 64
    hidden_size: int = 128
    temperature: float = 0.4
    offset: float = 3.0
    min_channels: int = 1
    # scale of the per-group heads' initial weights: 1 = PyTorch's default init (the paper); 0 = every channel of a
    # group starts with the same logit, so the order inside a group at the decision is what the controller learned
    head_init: float = 1.0
    # kept widths in multiples of this (or the whole group) when the mask is fixed: 8 or 16 for vector units and
    # tensor cores; 1 = any width (space.selection.round_widths; docs/decisions.md)
    round_to: int = 1
    # controller training
    controller_lr: float = 1e-3
    controller_weight_decay: float = 1e-2
    lr_decay_factor: float = 0.1
    reg_weight: float = 4.0
    resource_loss: str = "log_ratio"
    dead_zone: float = 0.005
    resource_cost: str = "draw"  # "expected": the resource term on sigmoid(scores), see RESOURCE_COSTS
    controller_batch: int | None = None  # rows per controller update; None: all, 64 in cost-capped decide runs
    # schedule (ints: steps, floats: fractions of training)
    controller_start: Point | None = None  # None: 0.05 (decide) or 0.10 (paper)
    proximal_start: Point = 0.20
    lambda_switch: Point = 0.49
    controller_lr_decay: Point | None = None
    freeze_at: Point | None = None  # None: 0.25 (decide) or 0.51 (paper)
    hyper_step: int | None = None  # None: derived from the search window (schedule.auto_hyper_step)
    mask_interval: Point | None = None
    lambda_low: float = 10.0
    lambda_high: float = 1000.0
    # "decide" (default): no shrinking during the search; at decide_at the mask is fixed to the deterministic
    # calibrated choice and only its dropped channels ramp to exactly zero at freeze_at. "paper": the proximal
    # step shrinks each noisy draw's dropped channels, the freeze cuts the deterministic mask (the paper's
    # algorithm, kept for reproduction; docs/decisions.md says why the default differs).
    variant: str = "decide"
    decide_at: Point | None = None  # variant="decide" only; None: DECIDE_AT
    decide_by: str = "controller"  # variant="decide" only; "widths"; "magnitude" / "random": ablation controls
    decide_when: str = "deadline"  # variant="decide" only; "stable": see DECIDE_WHEN
    stable_tol: float = 0.02  # "stable": kept fraction within this of the target, at most this share of flips
    stable_patience: int = 5  # "stable": ... at this many controller steps in a row
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
        if self.head_init < 0:
            raise ConfigError(f"head_init must be >= 0 (scale of the heads' initial weights), got {self.head_init}")
        if self.min_channels < 0:
            raise ConfigError(f"min_channels must be >= 0, got {self.min_channels}")
        check_round_to(self.round_to)
        if self.surgery not in ("end", "freeze"):
            raise ConfigError(f"surgery={self.surgery!r}; choose 'end' or 'freeze'")
        for name, choices in (
            ("resource_cost", RESOURCE_COSTS), ("variant", VARIANTS), ("decide_by", DECIDE_BY), ("decide_when", DECIDE_WHEN)
        ):
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"{name}={value!r}; choose one of {', '.join(map(repr, choices))}")
        if not 0 <= self.dead_zone < 1:
            raise ConfigError(f"dead_zone must be in [0, 1), got {self.dead_zone}")
        if self.variant == "paper" and self.decide_by != "controller":
            raise ConfigError(
                f"decide_by={self.decide_by!r} only applies to variant='decide'; drop it or set variant='decide'"
            )
        if self.decide_when == "stable" and (
            self.variant != "decide" or self.decide_by not in ("controller", "widths")
        ):
            raise ConfigError(
                "decide_when='stable' watches the controller's mask: it needs variant='decide' and decide_by "
                f"'controller' or 'widths' (got variant={self.variant!r}, decide_by={self.decide_by!r})"
            )
        if self.controller_batch is not None and self.controller_batch < 1:
            raise ConfigError(
                f"controller_batch must be >= 1 (rows per controller update) or None, got {self.controller_batch}"
            )
        if not 0 < self.stable_tol < 1:
            raise ConfigError(f"stable_tol must be in (0, 1), got {self.stable_tol}")
        if self.stable_patience < 1:
            raise ConfigError(f"stable_patience must be >= 1, got {self.stable_patience}")
        if self.variant == "paper" and self.decide_at is not None:
            raise ConfigError(
                f"decide_at={self.decide_at!r} only applies to variant='decide' (the paper variant never fixes the "
                "mask before freeze_at); drop decide_at or set variant='decide'"
            )

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
                expected = " or ".join(
                    "None" if t is type(None) else t.__name__
                    for t in typing.get_args(hints[key]) or (hints[key],)
                )
                finite = isinstance(value, float) and not math.isfinite(value)
                raise ConfigError(
                    f"AutoTrainOnce option {key}={value!r} has the wrong type: expected {expected}"
                    + ("; inf and nan are not allowed" if finite else "")
                )
        return cls(**options)

    def controller_rows(self, cost_capped: bool) -> int | None:
        """Rows of each batch a controller update uses (None: the whole batch). ``cost_capped``: the schedule's
        controller cost cap binds (a short run), where the decide variant also uses DECIDE_CONTROLLER_BATCH rows."""
        if self.controller_batch is not None:
            return self.controller_batch
        return DECIDE_CONTROLLER_BATCH if self._fewer_rows_when_capped() and cost_capped else None

    def _fewer_rows_when_capped(self) -> bool:
        """The decide variant without rows of the user's own: a cost-capped run's updates use
        DECIDE_CONTROLLER_BATCH rows (controller_rows) and the cap counts them at their cost (schedule)."""
        return self.variant == "decide" and self.controller_batch is None

    def schedule(self) -> ScheduleConfig:
        """The schedule part of the options."""
        names = {f.name for f in fields(ScheduleConfig)}
        values = {n: getattr(self, n) for n in names if hasattr(self, n)}
        decide = self.variant == "decide"
        if self.controller_start is None:
            values["controller_start"] = DECIDE_CONTROLLER_START if decide else PAPER_CONTROLLER_START
        if self.freeze_at is None:
            values["freeze_at"] = DECIDE_FREEZE_AT if decide else PAPER_FREEZE_AT
            values["freeze_default"] = True  # not the user's: a run too short for it gets a step that fits
        if self.variant == "decide" and self.decide_at is None:
            values["decide_at"] = DECIDE_AT
            values["decide_default"] = True  # not the user's: a run too short for it gets a step that fits
        if self._fewer_rows_when_capped():  # a controller_batch of the user's own counts as a whole step
            values["capped_update_cost"] = REDUCED_UPDATE_COST
        return ScheduleConfig(**values)


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
