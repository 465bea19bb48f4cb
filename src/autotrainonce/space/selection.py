"""Choosing channels by score: per-channel weight norms, and the lowest-scored channels dropped to a target.

Shared by the magnitude baselines (:mod:`autotrainonce.pruners.magnitude`) and ATO's ablation
``decide_by="magnitude"|"random"``; both need "which channels meet this cost target" from a score per channel.
"""

from __future__ import annotations

import torch
from torch import nn

from .pruning_space import PruningSpace
from .targets import Target

__all__ = ["channel_scores", "greedy_masks"]


def channel_scores(space: PruningSpace, model: nn.Module, norm: int = 1) -> dict[int, torch.Tensor]:
    """Per prunable group: the L``norm`` norm of each channel's producing weights over the group's mean.

    Producing weights are the group's ``role == "out"`` parameter members (conv filters, linear rows; all
    parameter members when there are none).
    """
    scores: dict[int, torch.Tensor] = {}
    for gi in space.prunable_indices:
        g = space.groups[gi]
        members = [m for m in g.members if m.kind == "param" and m.role == "out"] or g.param_members()
        total = torch.zeros(g.size, dtype=torch.float64)
        for m in members:
            w = getattr(model.get_submodule(m.module), m.name).detach().double().cpu()
            w = w.abs() if norm == 1 else w.pow(2)
            per_position = w.movedim(m.dim, 0).reshape(w.shape[m.dim], -1).sum(dim=1)
            total.index_add_(0, m.channel, per_position[m.index])
        if norm == 2:
            total = total.sqrt()
        mean = float(total.mean())
        scores[gi] = total / mean if mean > 0 else torch.ones(g.size, dtype=torch.float64)
    return scores


def greedy_masks(
    space: PruningSpace,
    scores: dict[int, torch.Tensor],
    target: Target,
    remove: float,
    min_channels: int = 1,
) -> list[torch.Tensor | None]:
    """Masks dropping the lowest-scored channels, globally, until at least ``remove`` of ``target``'s cost is gone.

    Channels are dropped in ascending score order (each group keeps its ``min_channels`` best); the number
    dropped is the smallest whose exact cost meets the goal, found by bisection since dropping more never adds
    cost. When even dropping every allowed channel misses the goal, that is returned.
    """
    order: list[tuple[float, int, int]] = []
    for gi, s in scores.items():
        ranked = torch.argsort(s, descending=True)
        order.extend((float(s[c]), gi, c) for c in ranked[min_channels:].tolist())
    order.sort()
    goal = (1.0 - remove) * target.cost(space, None)

    def masks_for(k: int) -> list[torch.Tensor | None]:
        masks: list[torch.Tensor | None] = space.full_masks()
        for _, gi, c in order[:k]:
            if masks[gi] is None:
                masks[gi] = torch.ones(space.groups[gi].size, dtype=torch.bool)
            masks[gi][c] = False  # type: ignore[index]
        return masks

    lo, hi = 0, len(order)
    if target.cost(space, masks_for(hi)) > goal:
        return masks_for(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if target.cost(space, masks_for(mid)) <= goal:
            hi = mid
        else:
            lo = mid + 1
    return masks_for(lo)
