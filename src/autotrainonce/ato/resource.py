"""ATO's resource loss and the calibrated freeze threshold.

The targets (:class:`Flops`, :class:`Params`) and :func:`resolve_target` live in :mod:`autotrainonce.space.targets`
(every pruner uses them) and are re-exported here. The resource loss compares the controller's achieved kept
fraction ``r`` of the prunable cost with the target's ``p``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..space.targets import Budget, Flops, Params, Target, resolve_target

__all__ = [
    "Target",
    "Flops",
    "Params",
    "Budget",
    "resolve_target",
    "resource_loss",
    "calibrated_masks",
    "RESOURCE_LOSSES",
]

RESOURCE_LOSSES = ("log_ratio", "log_abs")


def resource_loss(r: torch.Tensor, p: float, kind: str = "log_ratio", dead_zone: float = 0.005) -> torch.Tensor:
    """The resource penalty ``R(r, p)`` for the achieved kept fraction ``r`` and the target ``p``.

    ``log_ratio`` (default): ``log(max(r, p+d)/p)`` when ``r > p``, else ``log(p/min(r, p-d))``; inside
    ``(p-d, p+d)`` it is flat, so the controller stops pushing once it is close enough.
    ``log_abs``: ``log(|r - p| + 1)``.
    """
    if kind == "log_abs":
        return torch.log1p((r - p).abs())
    if kind != "log_ratio":
        raise ValueError(f"unknown resource loss {kind!r}; choose one of {RESOURCE_LOSSES}")
    # Keep the lower clamp positive so that the log stays finite when p <= dead_zone.
    low = max(p - dead_zone, p * 1e-3)
    above = torch.log(torch.clamp(r, min=p + dead_zone) / p)
    below = torch.log(p / torch.clamp(r, max=low).clamp(min=1e-12))
    return torch.where(r > p, above, below)


def _threshold(scores: Sequence[torch.Tensor], theta: float, min_channels: int) -> list[torch.Tensor]:
    out = []
    for s in scores:
        keep = s >= theta
        k = min(min_channels, s.numel())
        if k > 0 and int(keep.sum()) < k:
            keep[torch.topk(s, k).indices] = True
        out.append(keep)
    return out


def calibrated_masks(
    scores: Sequence[torch.Tensor],
    kept_fraction: Callable[[list[torch.Tensor]], float],
    p: float,
    dead_zone: float = 0.005,
    min_channels: int = 1,
) -> list[torch.Tensor]:
    """Keep-masks ``score >= theta`` with one global ``theta`` chosen so that the kept fraction is closest to ``p``.

    ``theta = 0`` (the controller's own threshold) is kept when it already lands within ``dead_zone`` of ``p``;
    otherwise ``theta`` moves to the score whose mask comes closest. The kept fraction only falls as ``theta``
    rises, so a binary search over the sorted scores needs about log2(channels) cost evaluations.
    """
    base = _threshold(scores, 0.0, min_channels)
    if abs(kept_fraction(base) - p) <= dead_zone:
        return base
    cands = torch.unique(torch.cat([s.detach().float().cpu().flatten() for s in scores])).tolist()
    memo: dict[int, float] = {}

    def r(k: int) -> float:
        if k not in memo:
            memo[k] = kept_fraction(_threshold(scores, cands[k], min_channels))
        return memo[k]

    lo, hi = 0, len(cands) - 1
    if r(hi) > p:
        return _threshold(scores, cands[hi], min_channels)
    while lo < hi:  # smallest k whose mask keeps at most p
        mid = (lo + hi) // 2
        if r(mid) <= p:
            hi = mid
        else:
            lo = mid + 1
    best = lo - 1 if lo > 0 and abs(r(lo - 1) - p) < abs(r(lo) - p) else lo
    return _threshold(scores, cands[best], min_channels)
