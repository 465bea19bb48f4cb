"""The ATO schedule in optimizer steps.

Boundaries are given as fractions of training (float in [0, 1]) or as step counts (int) and resolved once from
``total_steps``. Step ``t`` below is the number of optimizer steps done, counting the one just taken (1-based).

Defaults of :class:`ScheduleConfig`: the paper variant's, scaled from the paper's 245-epoch run (E_h = 25,
E_gl = 50, E_lambda = 120, E_fix = 125). ``AutoTrainOnce``'s default ``variant="decide"`` starts the controller
at 0.05, decides at 0.12 and freezes at 0.25 instead (see ``ato.config``):

====================  =======  ==================================================================
boundary              default  meaning
====================  =======  ==================================================================
controller_start      0.10     controller steps begin (after the LR warm-up)
proximal_start        0.20     proximal step after every model step from here on
lambda_switch         0.49     lambda jumps from ``lambda_low`` to ``lambda_high``
controller_lr_decay   0.49     controller learning rate x ``lr_decay_factor`` (just before freezing)
freeze_at             0.51     the mask is frozen (deterministic) and the controller stops
====================  =======  ==================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = [
    "ScheduleConfig",
    "Schedule",
    "CONTROLLER_UPDATES",
    "MAX_HYPER_STEP",
    "CONTROLLER_COST_SHARE",
    "REDUCED_UPDATE_COST",
    "auto_hyper_step",
]

Point = int | float

#: hyper_step=None: the controller aims at this many updates in its search window ...
CONTROLLER_UPDATES = 30
#: ... but steps at least every this many model steps in long runs (more updates cost little there)
MAX_HYPER_STEP = 20
#: ... and, given the run's length, spends at most this share of its model steps' cost on them (an update on the
#: whole batch costs about a model step: a short run with a short search window would otherwise pay ~7% of its
#: steps for the search)
CONTROLLER_COST_SHARE = 0.04
#: the cost, in model steps, of an update on the first 64 rows of a 128-row batch (what the decide variant's
#: updates use where the cap binds): measured 0.30 on CPU (docs/benchmarks.md, "64-row controller updates")
REDUCED_UPDATE_COST = 0.3


def auto_hyper_step(search_steps: int, total_steps: int | None = None, update_cost: float = 1.0) -> int:
    """Model steps per controller step for a search window of ``search_steps``: ~CONTROLLER_UPDATES updates,
    never rarer than every MAX_HYPER_STEP steps, never more than one per model step. With ``total_steps``, also
    at most ``CONTROLLER_COST_SHARE * total_steps / update_cost`` updates (at least one), where ``update_cost``
    is one update's cost in model steps: binds only in short runs."""
    h = max(1, min(MAX_HYPER_STEP, round(search_steps / CONTROLLER_UPDATES)))
    if total_steps is not None and search_steps > 0:
        budget = max(1.0, CONTROLLER_COST_SHARE * total_steps / update_cost)
        h = max(h, math.ceil(search_steps / budget))
    return h


@dataclass(frozen=True)
class ScheduleConfig:
    """When each ATO phase starts: ints are optimizer steps, floats fractions of ``total_steps``."""

    controller_start: Point = 0.10
    proximal_start: Point = 0.20
    lambda_switch: Point = 0.49
    controller_lr_decay: Point | None = None  # None: at lambda_switch
    freeze_at: Point = 0.51
    hyper_step: int | None = None  # one controller step every this many model steps; None: auto_hyper_step
    mask_interval: Point | None = None  # resample the proximal mask; None: every epoch (or 1% of training)
    lambda_low: float = 10.0
    lambda_high: float = 1000.0
    # variant="decide" only: the mask is decided here and its dropped channels ramp to zero until freeze_at
    decide_at: Point | None = None
    # decide_at is the default, not the user's: in a run too short for it, move it into the search window
    # (or onto the freeze) instead of refusing
    decide_default: bool = False
    # freeze_at is the default, not the user's: in a run too short for it, put it one step after the controller's
    # start instead of refusing (0.25 of a 2-step run rounds to step 0)
    freeze_default: bool = False
    # the cost, in model steps, of a controller update where the cost cap binds at whole-batch updates (the decide
    # variant's updates then use fewer rows, so the cap counts them at REDUCED_UPDATE_COST); 1.0: whole batch
    capped_update_cost: float = 1.0


def _resolve(name: str, value: Point, total: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"schedule option {name}={value!r} must be an int (steps) or a float in [0, 1]")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(
                f"schedule option {name}={value!r}: a float is a fraction of training and must lie in [0, 1]; "
                "give an int for a number of steps"
            )
        return int(round(value * total))
    if value < 0:
        raise ConfigError(f"schedule option {name}={value} must be >= 0 steps")
    return int(value)


@dataclass(frozen=True)
class Schedule:
    """A :class:`ScheduleConfig` resolved to step numbers for one run."""

    total_steps: int
    controller_start: int
    proximal_start: int
    lambda_switch: int
    controller_lr_decay: int
    freeze_at: int
    hyper_step: int
    mask_interval: int
    lambda_low: float
    lambda_high: float
    decide_at: int | None = None  # variant="decide": the step at which the mask is decided
    # the controller cost cap raised the derived hyper_step (a short run): its updates also use fewer rows
    cost_capped: bool = False

    @classmethod
    def build(cls, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int | None = None) -> Schedule:
        """Resolve ``cfg`` for a run of ``total_steps`` optimizer steps."""
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ConfigError(f"total_steps must be a positive int (epochs * batches per epoch), got {total_steps!r}")
        h = cfg.hyper_step
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise ConfigError(f"hyper_step must be an int >= 1 (or None: derived from the run), got {h!r}")
        pts = {
            name: _resolve(name, getattr(cfg, name), total_steps)
            for name in ("controller_start", "proximal_start", "lambda_switch", "freeze_at")
        }
        decay = cfg.controller_lr_decay
        pts["controller_lr_decay"] = pts["lambda_switch"] if decay is None else _resolve(
            "controller_lr_decay", decay, total_steps
        )
        if cfg.freeze_default:
            pts["freeze_at"] = max(pts["freeze_at"], min(total_steps, pts["controller_start"] + 1))
        if cfg.mask_interval is None:
            interval = steps_per_epoch or max(1, round(0.01 * total_steps))
        else:
            interval = _resolve("mask_interval", cfg.mask_interval, total_steps)
        if pts["controller_start"] >= pts["freeze_at"]:
            raise ConfigError(
                f"the controller must start before the mask freezes: controller_start={pts['controller_start']} "
                f">= freeze_at={pts['freeze_at']} steps (of {total_steps})"
            )
        if cfg.lambda_low < 0 or cfg.lambda_high < 0:
            raise ConfigError("lambda_low and lambda_high must be >= 0")
        decide = None if cfg.decide_at is None else _resolve("decide_at", cfg.decide_at, total_steps)
        if decide is not None and cfg.decide_default:
            lo, hi = pts["controller_start"] + 1, pts["freeze_at"] - 1
            decide = min(max(decide, lo), hi) if lo <= hi else pts["freeze_at"]  # a tiny run: decide at the freeze
        elif decide is not None and not pts["controller_start"] < decide < pts["freeze_at"]:
            # the controller needs at least one step before the decision, and the ramp at least one step after it
            raise ConfigError(
                f"decide_at must fall strictly between controller_start and freeze_at: controller_start="
                f"{pts['controller_start']}, decide_at={decide}, freeze_at={pts['freeze_at']} steps (of {total_steps})"
            )
        capped = False
        if h is None:  # the search window: from controller_start to the decision (decide) or the freeze
            # the cost cap applies to the decide variant only: the paper variant keeps its trajectory
            search = (pts["freeze_at"] if decide is None else decide) - pts["controller_start"]
            h = auto_hyper_step(search, None if decide is None else total_steps)
            # capped: whole-batch updates would cost more than the share; the cheaper updates of such a run are
            # counted at their own cost (cost_capped stays true even where that lifts the cap again)
            capped = h > auto_hyper_step(search)
            if capped:
                h = auto_hyper_step(search, total_steps, cfg.capped_update_cost)
        return cls(
            cost_capped=capped,
            total_steps=total_steps,
            hyper_step=h,
            mask_interval=max(1, int(interval)),
            lambda_low=float(cfg.lambda_low),
            lambda_high=float(cfg.lambda_high),
            decide_at=decide,
            **pts,
        )

    def controller_active(self, t: int) -> bool:
        """The controller trains at step ``t`` (before the freeze)."""
        return self.controller_start <= t < self.freeze_at

    def controller_step_due(self, t: int) -> bool:
        """A controller step follows model step ``t``: every ``hyper_step`` steps from ``controller_start``."""
        return self.controller_active(t) and (t - self.controller_start) % self.hyper_step == 0

    def proximal_active(self, t: int) -> bool:
        return t >= self.proximal_start

    def mask_due(self, t: int) -> bool:
        """Resample the proximal mask at ``t`` (counted from the first step that needs a mask)."""
        start = min(self.controller_start, self.proximal_start)
        return t < self.freeze_at and t >= start and (t - start) % self.mask_interval == 0

    def ramp_factor(self, t: int) -> float:
        """variant="decide": the multiplier of the dropped channels at step ``t`` (1 before/at the decision).

        ``(freeze_at - t) / (freeze_at - t + 1)`` telescopes: after step ``t`` a dropped channel holds
        ``(freeze_at - t) / (freeze_at - decide_at)`` of its weight at the decision (ignoring the gradient),
        and the factor at ``t = freeze_at`` is exactly 0, whatever the optimizer, lr or run length.
        """
        if self.decide_at is None or t <= self.decide_at:
            return 1.0
        if t >= self.freeze_at:
            return 0.0
        return (self.freeze_at - t) / (self.freeze_at - t + 1)

    def lam(self, t: int) -> float:
        return self.lambda_high if t >= self.lambda_switch else self.lambda_low

    def phase(self, t: int) -> str:
        """A short name of the phase at step ``t``, for logs."""
        if t >= self.freeze_at:
            return "frozen"
        if t >= self.controller_start:
            return "search"
        if t >= self.proximal_start:
            return "proximal"
        return "dense"

    def describe(self) -> str:
        """One line per boundary, in steps."""
        if self.decide_at is not None:
            return (
                f"controller {self.controller_start}..{self.decide_at} every {self.hyper_step} steps, mask "
                f"decided at {self.decide_at}, its dropped channels ramp linearly to exactly 0 at the freeze "
                f"{self.freeze_at} of {self.total_steps}, controller lr decay at {self.controller_lr_decay}"
            )
        return (
            f"controller {self.controller_start}..{self.freeze_at} every {self.hyper_step} steps, "
            f"proximal from {self.proximal_start} (lambda {self.lambda_low:g} -> {self.lambda_high:g} at "
            f"{self.lambda_switch}), controller lr decay at {self.controller_lr_decay}, mask resampled every "
            f"{self.mask_interval}, frozen from {self.freeze_at} of {self.total_steps}"
        )
