"""Choosing channels by score: per-channel weight norms, and the lowest-scored channels dropped to a target.

Shared by the magnitude baselines (:mod:`autotrainonce.pruners.magnitude`) and ATO's ablation
``decide_by="magnitude"|"random"``; both need "which channels meet this cost target" from a score per channel.
"""

from __future__ import annotations

import torch
from torch import nn

from .pruning_space import PruningSpace
from .targets import Target, allowed_widths

__all__ = ["channel_scores", "greedy_masks", "round_widths"]


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


def round_widths(
    space: PruningSpace,
    masks: list[torch.Tensor | None],
    scores: dict[int, torch.Tensor],
    target: Target,
    multiple: int,
    min_channels: int = 1,
) -> list[torch.Tensor | None]:
    """``masks`` with every prunable group's kept count a multiple of ``multiple`` (or the whole group), at the
    cost closest to ``target``'s goal (``1 - target.remove`` of the dense cost), on either side of it.

    Why: a convolution whose channel count is a multiple of 8 (or 16, 32) runs in whole vector lanes and tensor
    core tiles; 13 channels cost nearly what 16 do. Each group first takes the allowed count nearest to the one
    ``masks`` keeps (a group ``masks`` keeps whole stays whole); then, while the rounded network costs more than
    the goal, the group whose step down loses the least score per unit of cost saved steps down, and while a
    step up lands nearer the goal, the group gaining the most score per unit of cost steps up; last, one group
    up and another down while that lands nearer (steps of different groups cost different amounts, so a swap
    can close a gap no single step can). Within a group the channels ``masks`` keeps come first, each part
    ordered by ``scores`` (higher kept first), so rounding only adds or removes channels at the margin.
    """
    if multiple <= 1:
        return list(masks)
    order: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    options: dict[int, list[int]] = {}
    gain: dict[int, torch.Tensor] = {}  # gain[gi][k]: the score the group's k first channels of `order` keep
    for gi, s in scores.items():
        size = space.groups[gi].size
        m = masks[gi]
        kept = torch.ones(size, dtype=torch.bool) if m is None else m.bool().cpu()
        # kept channels first, then dropped ones, each by descending score
        s = s.double().cpu()
        ranked_kept = torch.nonzero(kept).flatten()[torch.argsort(s[kept], descending=True)]
        ranked_drop = torch.nonzero(~kept).flatten()[torch.argsort(s[~kept], descending=True)]
        order[gi] = torch.cat([ranked_kept, ranked_drop])
        gain[gi] = torch.cat([torch.zeros(1, dtype=torch.float64), s[order[gi]].cumsum(0)])
        options[gi] = allowed_widths(size, multiple, min_channels)
        want = int(kept.sum())
        counts[gi] = size if want == size else min(options[gi], key=lambda c: (abs(c - want), -c))

    def build(cnt: dict[int, int]) -> list[torch.Tensor | None]:
        out = list(masks)
        for gi, k in cnt.items():
            keep = torch.zeros(space.groups[gi].size, dtype=torch.bool)
            keep[order[gi][:k]] = True
            out[gi] = None if bool(keep.all()) else keep
        return out

    def cost(cnt: dict[int, int]) -> int:
        return target.cost(space, build(cnt))

    def neighbour(gi: int, up: bool) -> int | None:
        i = options[gi].index(counts[gi]) + (1 if up else -1)
        return options[gi][i] if 0 <= i < len(options[gi]) else None

    dense = target.cost(space, None)
    ref = (1.0 - target.remove) * dense
    now = cost(counts)

    def best_step(up: bool) -> tuple[int, int, int] | None:
        """(group, new count, new cost) of the best single step: the one whose score change per unit of cost
        moved is largest (down: the least score lost per unit saved; up, only where it lands nearer the goal:
        the most score won per unit added)."""
        best = None
        for gi in counts:
            k = neighbour(gi, up)
            if k is None:
                continue
            c = cost({**counts, gi: k})
            moved = abs(c - now)
            if moved == 0 or (up and abs(c - ref) >= abs(now - ref)):
                continue
            per_cost = float(gain[gi][k] - gain[gi][counts[gi]]) / moved
            if best is None or per_cost > best[0]:
                best = (per_cost, gi, k, c)
        return None if best is None else best[1:]

    while now > ref and (step := best_step(up=False)) is not None:
        gi, k, now = step
        counts[gi] = k
    while (step := best_step(up=True)) is not None:
        gi, k, now = step
        counts[gi] = k
    close = 1e-3 * dense  # a swap costs a pass over all pairs of groups: stop within 0.1% of the dense cost
    while abs(now - ref) > close:  # one group up and another down, while that lands strictly nearer the goal
        swap = None
        for up in counts:
            k_up = neighbour(up, up=True)
            if k_up is None:
                continue
            for down in counts:
                k_down = None if down == up else neighbour(down, up=False)
                if k_down is None:
                    continue
                c = cost({**counts, up: k_up, down: k_down})
                if abs(c - ref) < abs(now - ref) and (swap is None or abs(c - ref) < abs(swap[0] - ref)):
                    swap = (c, up, k_up, down, k_down)
        if swap is None:
            break
        now, up, k_up, down, k_down = swap
        counts[up], counts[down] = k_up, k_down
    return build(counts)
