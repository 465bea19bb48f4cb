"""Pruning targets (MACs, parameters) and their conversion to a budget over the prunable cost.

A user asks to remove a fraction of the *whole* network's cost; a pruner can only act on the prunable groups.
:func:`resolve_target` turns the request into ``p``, the kept fraction of the *prunable* cost, or says why the
request cannot be met. Shared by every pruning method (ATO's resource loss, the magnitude pruners' selection).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import ConfigError, TargetError

__all__ = ["Target", "Flops", "Params", "Budget", "allowed_widths", "check_round_to", "resolve_target"]


class _Space(Protocol):  # the part of PruningSpace this module needs
    groups: Sequence[Any]

    def flops(self, masks: Any = None) -> int: ...
    def params(self, masks: Any = None) -> int: ...
    def soft_flops(self, masks: Any) -> torch.Tensor: ...
    def soft_params(self, masks: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class Target:
    """Remove ``remove`` (a fraction in (0, 1)) of the whole network's cost; subclasses name the cost."""

    remove: float
    kind = "cost"
    label = "cost"  # how messages name the cost

    def __post_init__(self) -> None:
        r = self.remove
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0.0 < r < 1.0:
            raise TargetError(
                f"{type(self).__name__}(remove={r!r}): the fraction to remove must be a number strictly "
                "between 0 and 1 (e.g. 0.5 removes half of the network's cost)"
            )

    def cost(self, space: _Space, masks: Any = None) -> int:
        """Exact cost of the network for (bool) ``masks``."""
        raise NotImplementedError

    def soft_cost(self, space: _Space, masks: Any) -> torch.Tensor:
        """Cost, differentiable in float ``masks``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Flops(Target):
    """Remove a fraction of the network's multiply-accumulates (MACs)."""

    kind = "flops"
    label = "MACs"

    def cost(self, space: _Space, masks: Any = None) -> int:
        return int(space.flops(masks))

    def soft_cost(self, space: _Space, masks: Any) -> torch.Tensor:
        return space.soft_flops(masks)


@dataclass(frozen=True)
class Params(Target):
    """Remove a fraction of the network's parameters."""

    kind = "params"
    label = "parameters"

    def cost(self, space: _Space, masks: Any = None) -> int:
        return int(space.params(masks))

    def soft_cost(self, space: _Space, masks: Any) -> torch.Tensor:
        return space.soft_params(masks)


@dataclass(frozen=True)
class Budget:
    """A target resolved on one pruning space.

    ``total``: cost with everything kept; ``fixed``: cost with every prunable group fully removed (what no mask
    can remove); ``prunable = total - fixed``; ``p``: the kept fraction of the prunable cost that meets the target.
    """

    target: Target
    total: int
    fixed: int
    p: float

    @property
    def prunable(self) -> int:
        return self.total - self.fixed

    @property
    def max_remove(self) -> float:
        """The largest fraction of the whole cost that removing every prunable channel would save."""
        return self.prunable / self.total if self.total else 0.0

    def kept_fraction(self, cost: torch.Tensor | float) -> torch.Tensor | float:
        """``r``: the kept fraction of the prunable cost, for a whole-network ``cost``."""
        return (cost - self.fixed) / self.prunable

    def removed(self, cost: float) -> float:
        """Fraction of the whole network's cost removed, for a whole-network ``cost``."""
        return 1.0 - cost / self.total


def _all_removed(space: _Space) -> list[torch.Tensor | None]:
    return [torch.zeros(g.size, dtype=torch.bool) if g.prunable else None for g in space.groups]


def check_round_to(value: object) -> int:
    """``value`` if it is a valid width multiple (an int >= 1), else :class:`ConfigError` (every method's check)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"round_to must be an int >= 1 (1: any width; 8: multiples of 8), got {value!r}")
    return value


def allowed_widths(size: int, multiple: int, min_channels: int = 1) -> list[int]:
    """The kept-channel counts a group of ``size`` channels may take under a width multiple, ascending.

    Multiples of ``multiple`` from the smallest one that keeps ``min_channels`` (at least one multiple), and the
    whole group, which stays allowed when ``size`` is no multiple (a 10-channel group under 8 keeps 8 or 10).
    """
    if multiple <= 1:
        return list(range(max(1, min_channels), size + 1))
    first = max(multiple, -(-max(1, min_channels) // multiple) * multiple)
    return sorted({*range(first, size + 1, multiple), size})


def _min_kept(space: _Space, min_channels: int, round_to: int = 1) -> list[torch.Tensor | None]:
    out: list[torch.Tensor | None] = []
    for g in space.groups:
        if not g.prunable:
            out.append(None)
            continue
        keep = torch.zeros(g.size, dtype=torch.bool)
        keep[: min(min_channels, g.size) if round_to <= 1 else allowed_widths(g.size, round_to, min_channels)[0]] = True
        out.append(keep)
    return out


def resolve_target(target: Target, space: _Space, min_channels: int = 0, round_to: int = 1) -> Budget:
    """Convert ``target`` into the kept fraction ``p`` of the prunable cost, or raise :class:`TargetError`.

    ``p = ((1 - remove) * T_total - T_fixed) / T_prunable``. With ``min_channels`` (every group keeps at least
    that many channels) or ``round_to`` (kept counts are multiples of it, see :func:`allowed_widths`) a target
    beyond what the smallest allowed network saves is refused too.
    """
    if not isinstance(target, Target):
        raise TargetError(f"target must be Flops(remove=...) or Params(remove=...), got {target!r}")
    if not any(g.prunable for g in space.groups):
        reasons = sorted({g.reason for g in space.groups if g.reason})
        why = f" (reasons: {'; '.join(reasons)})" if reasons else ""
        raise TargetError(
            f"cannot reach {target}: the model has no prunable channel groups{why}; nothing can be removed. "
            "Train it without pruning, or look at discover(model, x).summary() (`ato info --model NAME`) "
            "for why each group is kept"
        )
    total = target.cost(space, None)
    fixed = target.cost(space, _all_removed(space))
    prunable = total - fixed
    if total <= 0 or prunable <= 0:
        raise TargetError(
            f"cannot reach {target}: the prunable channel groups carry no {target.label} "
            f"(total {total}, all of it in unprunable layers)"
        )
    p = ((1.0 - target.remove) * total - fixed) / prunable
    if p <= 0.0:
        raise TargetError(
            f"cannot reach {target}: at most {prunable / total:.1%} of the network's {target.label} can be "
            f"removed, because {fixed / total:.1%} ({fixed} of {total}) sits in layers that cannot be pruned "
            "(network inputs/outputs, unsupported ops, unprunable groups); ask for less than "
            f"remove={prunable / total:.3f}"
        )
    if min_channels > 0 or round_to > 1:
        floor = target.cost(space, _min_kept(space, min_channels, round_to))
        if (1.0 - target.remove) * total < floor:
            why = f"at least {min_channels} channel(s) kept in every prunable group (option min_channels)"
            if round_to > 1:
                why = f"kept widths in multiples of {round_to} (option round_to) and " + why
            fix = "; or a smaller round_to" if round_to > 1 else ""
            raise TargetError(
                f"cannot reach {target}: with {why}, at most {1.0 - floor / total:.2%} of the network's "
                f"{target.label} can be removed; ask for less than remove={1.0 - floor / total:.4f}{fix}"
            )
    return Budget(target=target, total=total, fixed=fixed, p=float(p))
