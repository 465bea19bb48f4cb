"""Magnitude baselines as library methods: ``l1`` (one shot) and ``magnitude`` (progressive).

Both train the dense network, rank the channels of every prunable group by the norm of their weights, and
keep the best channels that meet the MACs / parameter target exactly (by the pruning space's cost), then cut
the network in place and train the compact one to the end:

- ``l1``: one decision at ``at`` (default half-way), L1 norm of each channel's producing weights.
- ``magnitude``: ``stages`` decisions evenly spaced from ``start`` to ``at``; each one removes a further share
  of the target (``remove * k / stages``), zeroes the newly dropped channels (their optimizer momentum too)
  and never brings a dropped channel back; the network is cut at ``at``.

Scores are divided by their group's mean so that layers of different fan-in compare in one global ranking.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..core.pruner import Pruner
from ..errors import ConfigError
from ..measure import eval_outputs, relative_output_change
from ..space import PruningSpace, discover
from ..space.model_checks import check_model
from ..space.selection import channel_scores, greedy_masks, round_widths
from ..space.targets import Target, check_round_to, resolve_target

__all__ = ["MagnitudePruner", "L1OneShot", "ProgressiveMagnitude", "channel_scores", "greedy_masks"]

log = logging.getLogger(__name__)


def _step_of(value: float | int, total_steps: int, name: str) -> int:
    """A schedule point: an int is a step, a float in [0, 1] a fraction of the run."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a step (int) or a fraction of the run (float in [0, 1]), got {value!r}")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name}={value!r}: a fraction of the run must lie in [0, 1]")
        return max(1, min(total_steps, round(value * total_steps)))
    return max(1, min(total_steps, int(value)))


class MagnitudePruner(Pruner):
    """Rank channels by weight norm and cut the network in place; the base of ``l1`` and ``magnitude``.

    Args:
        model: the network being trained (cut in place at step ``at``).
        example_inputs: an input the model accepts (discovery, and the check at the cut).
        target: :class:`~autotrainonce.space.targets.Flops` or ``Params`` with the fraction to remove.
        holdout: unused (accepted so that every registered pruner takes the same arguments).
        total_steps: optimizer steps of the whole run (required).
        at: step (int) or fraction of the run (float) of the final decision and the cut (default 0.5).
        start: first decision of a progressive run (default: ``at``, a single decision).
        stages: number of decisions from ``start`` to ``at`` (1 = one shot).
        norm: 1 (L1) or 2 (L2) norm of the producing weights.
        min_channels: channels every prunable group keeps.
        round_to: kept widths in multiples of this (or the whole group) at the last decision, at the cost nearest
            the target (8 or 16 suit vector units and tensor cores); 1 = any width. A progressive run
            rounds only its last decision, which may then keep a channel an earlier stage zeroed (it trains on
            from zero).
    """

    name = "magnitude"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        target: Target,
        holdout: Iterable[Any] | None = None,
        *,
        total_steps: int,
        steps_per_epoch: int | None = None,
        space: PruningSpace | None = None,
        at: float | int = 0.5,
        start: float | int | None = None,
        stages: int = 1,
        norm: int = 1,
        min_channels: int = 1,
        round_to: int = 1,
    ) -> None:
        check_model(model, type(self).__name__)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ConfigError(
                f"{type(self).__name__} needs total_steps=<optimizer steps of the whole run> (a positive int), "
                f"got {total_steps!r}"
            )
        if norm not in (1, 2):
            raise ConfigError(f"norm must be 1 (L1) or 2 (L2), got {norm!r}")
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
            raise ConfigError(f"stages must be a positive int, got {stages!r}")
        check_round_to(round_to)
        self.model = model
        self.example_inputs = example_inputs
        self.space = space if space is not None else discover(model, example_inputs)
        self.target = target
        self.budget = resolve_target(target, self.space, min_channels, round_to)  # TargetError when unreachable
        self.total_steps = total_steps
        self.cut_step = _step_of(at, total_steps, "at")
        first = self.cut_step if start is None else _step_of(start, total_steps, "start")
        if first > self.cut_step:
            raise ConfigError(f"start (step {first}) must not come after at (step {self.cut_step})")
        # evenly spaced from `start` to `at` (a window shorter than the stages gives fewer, distinct decisions)
        n = stages
        self.decisions = (
            [self.cut_step] if n == 1 else sorted({round(first + (self.cut_step - first) * k / (n - 1)) for k in range(n)})
        )
        self.norm = norm
        self.min_channels = min_channels
        self.round_to = round_to
        self.global_step = 0
        self.mask: list[torch.Tensor | None] | None = None  # aligned with space.groups
        self.cut = False
        self.cut_report: dict[str, float] = {}
        self.owner_rebuilds_wrappers = False

    # ------------------------------------------------------------------------------------------------ decisions
    def _decide(self, stage: int) -> list[torch.Tensor | None]:
        scores = channel_scores(self.space, self.model, self.norm)
        if self.mask is not None:  # a dropped channel never comes back: rank it below every kept one
            for gi, m in enumerate(self.mask):
                if m is not None and gi in scores:
                    scores[gi] = torch.where(m, scores[gi], torch.full_like(scores[gi], -1.0))
        share = self.target.remove * (stage + 1) / len(self.decisions)
        masks = greedy_masks(self.space, scores, self.target, share, self.min_channels)
        if self.round_to > 1 and stage == len(self.decisions) - 1:
            masks = round_widths(self.space, masks, scores, self.target, self.round_to, self.min_channels)
        return masks

    def _zero(self, masks: list[torch.Tensor | None], optimizer: torch.optim.Optimizer | None) -> None:
        """Set the dropped channels (every parameter member) and their momentum exactly to zero."""
        with torch.no_grad():
            for g, m in zip(self.space.groups, masks):
                if m is None or bool(m.all()):
                    continue
                for mem in g.param_members():
                    t = getattr(self.model.get_submodule(mem.module), mem.name)
                    drop = mem.index[~m[mem.channel]].to(t.device)
                    t.index_fill_(mem.dim, drop, 0.0)
                    state = optimizer.state.get(t, {}) if optimizer is not None else {}
                    for key in ("momentum_buffer", "exp_avg"):
                        buf = state.get(key)
                        if isinstance(buf, torch.Tensor) and buf.shape == t.shape:
                            buf.index_fill_(mem.dim, drop, 0.0)

    def _cut(self, optimizer: torch.optim.Optimizer | None, check: bool = True) -> None:
        assert self.mask is not None
        before = eval_outputs(self.model, self.example_inputs) if check else None
        self.cut_report = {
            "step": self.global_step,
            "macs_before": self.space.flops(None),
            "macs_after": self.space.flops(self.mask),
            "params_before": self.space.params(None),
            "params_after": self.space.params(self.mask),
        }
        self.space.prune_(self.model, self.mask, check=check, optimizer=optimizer, report=self.cut_report)
        if before is not None:  # how far the cut moved the trained network (a one-shot cut is not free)
            after = eval_outputs(self.model, self.example_inputs)
            self.cut_report["output_change"] = relative_output_change(before, after)
        self.cut = True
        if torch.distributed.is_available() and torch.distributed.is_initialized() and not self.owner_rebuilds_wrappers:
            warnings.warn(
                "the network was cut in place: rebuild your DistributedDataParallel wrapper now", stacklevel=3
            )

    # ------------------------------------------------------------------------------------------------ interface
    def step(self, optimizer: torch.optim.Optimizer, batch: Any = None) -> bool:
        """After every optimizer step: decide (and zero) at the scheduled steps, cut at ``at``."""
        self.global_step += 1
        t = self.global_step
        if self.cut or t not in self.decisions:
            return False
        stage = self.decisions.index(t)
        self.mask = self._decide(stage)
        if t < self.cut_step:
            self._zero(self.mask, optimizer)
            return False
        self._cut(optimizer)
        log.info(
            "%s: cut at step %d: MACs %d -> %d", self.name, t, self.cut_report["macs_before"],
            self.cut_report["macs_after"],
        )  # fmt: skip
        return True

    def export(self) -> nn.Module:
        """``model`` itself once cut; before the cut, decides now (with a warning) and cuts."""
        if not self.cut:
            warnings.warn(
                f"{type(self).__name__}.export() at step {self.global_step}, before the cut (step {self.cut_step}); "
                "deciding and cutting now",
                stacklevel=2,
            )
            self.mask = self._decide(len(self.decisions) - 1)
            self._cut(None)
        return self.model

    def current_masks(self) -> list[torch.Tensor | None] | None:
        return self.mask

    def _removed(self) -> tuple[float, float]:
        if self.mask is None:
            return 0.0, 0.0
        return (1.0 - self.space.flops(self.mask) / max(1, self.space.flops(None)),
                1.0 - self.space.params(self.mask) / max(1, self.space.params(None)))  # fmt: skip

    def metrics(self) -> dict[str, float]:
        flops, params = self._removed()
        return {f"{self.name}/cut": float(self.cut), f"{self.name}/flops_removed": flops,
                f"{self.name}/params_removed": params}  # fmt: skip

    def mask_summary(self) -> dict[str, Any] | None:
        if self.mask is None:
            return None
        groups = []
        for gi in self.space.prunable_indices:
            g, m = self.space.groups[gi], self.mask[gi]
            keep = torch.ones(g.size, dtype=torch.bool) if m is None else m
            groups.append({"name": g.name, "size": g.size, "kept": int(keep.sum()), "keep": keep.int().tolist()})
        flops, params = self._removed()
        return {"method": self.name, "target": {"kind": self.target.kind, "remove": self.target.remove},
                "frozen": True, "cut": self.cut, "step": self.global_step, "flops_removed": flops,
                "params_removed": params, "groups": groups}  # fmt: skip

    def describe(self) -> str:
        when = f"step {self.cut_step}" if len(self.decisions) == 1 else f"steps {self.decisions}"
        return (f"{self.name}: remove {self.target.remove:.0%} of the {self.target.label} by the L{self.norm} "
                f"norm of each channel's weights, decided at {when}, cut at step {self.cut_step} of {self.total_steps}")  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "method": self.name,
            "total_steps": self.total_steps,
            "global_step": self.global_step,
            "cut": self.cut,
            "mask": None if self.mask is None else [None if m is None else m.clone() for m in self.mask],
        }

    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> None:
        if state.get("version") != 1 or state.get("method") != self.name:
            raise ConfigError(f"not a {self.name} pruner state (method {state.get('method')!r})")
        self.global_step = int(state["global_step"])
        self.mask = None if state["mask"] is None else [None if m is None else torch.as_tensor(m) for m in state["mask"]]
        if state["cut"] and not self.cut:
            self._cut(optimizer, check=False)  # the weights come from the model's checkpoint


class L1OneShot(MagnitudePruner):
    """``l1``: one decision by the L1 norm of each channel's weights at ``at``, cut there, train on."""

    name = "l1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("stages", 1) != 1:
            raise ConfigError("l1 decides once; use method 'magnitude' for several stages")
        super().__init__(*args, **kwargs)


class ProgressiveMagnitude(MagnitudePruner):
    """``magnitude``: ``stages`` (default 5) decisions from ``start`` (default 0.2) to ``at``, then the cut."""

    name = "magnitude"

    def __init__(self, *args: Any, start: float | int | None = 0.2, stages: int = 5, **kwargs: Any) -> None:
        super().__init__(*args, start=start, stages=stages, **kwargs)
