"""Measurements taken at the freeze: does the mask that was shrunk match the mask that is cut?

The proximal step shrinks the channels dropped by the latest noisy draw of the controller; the freeze then
cuts the channels of a different, deterministic mask. These functions count how far apart the two are, how
many channels the freeze keeps although they are already (near) zero, and combine them with the relative
output change of the cut into :attr:`AutoTrainOnce.freeze_report`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["NEAR_ZERO", "mask_distance", "near_zero_kept", "order_agreement", "freeze_report"]

#: a kept channel is "near zero" when its norm is at most this times the median kept-channel norm of its group
NEAR_ZERO = 1e-3


def mask_distance(draw: Sequence[torch.Tensor] | None, frozen: Sequence[torch.Tensor]) -> dict[str, float]:
    """How the latest draw (the mask the proximal step shrank) and the frozen mask differ, channel by channel.

    ``draw`` None (no draw before the freeze) counts as "everything kept": nothing was shrunk. Keys:
    ``channels`` (prunable channels), ``dropped`` (by the frozen mask), ``draw_dropped``, ``hamming`` (channels
    on which they disagree) and ``hamming_frac`` (of ``channels``), split into ``shrunk_kept`` (dropped by the
    draw, kept at the freeze: paid for, possibly dead, yet kept) and ``cut_unshrunk`` (kept by the draw, dropped
    at the freeze: cut at full strength).
    """
    if draw is not None and [len(d) for d in draw] != [len(f) for f in frozen]:
        raise ValueError("the draw and the frozen mask have different group sizes")
    shrunk_kept = cut_unshrunk = dropped = draw_dropped = channels = 0
    for i, f in enumerate(frozen):
        keep = f.bool().cpu()
        drew = torch.ones_like(keep) if draw is None else draw[i].bool().cpu()
        channels += keep.numel()
        dropped += int((~keep).sum())
        draw_dropped += int((~drew).sum())
        shrunk_kept += int((~drew & keep).sum())
        cut_unshrunk += int((drew & ~keep).sum())
    hamming = shrunk_kept + cut_unshrunk
    return {
        "channels": float(channels),
        "dropped": float(dropped),
        "draw_dropped": float(draw_dropped),
        "hamming": float(hamming),
        "hamming_frac": hamming / channels if channels else 0.0,
        "shrunk_kept": float(shrunk_kept),
        "cut_unshrunk": float(cut_unshrunk),
    }


def near_zero_kept(
    norms: Sequence[torch.Tensor | None], frozen: Sequence[torch.Tensor], rel: float = NEAR_ZERO
) -> dict[str, float]:
    """Kept channels that are already (near) zero: ``kept_near_zero`` (norm <= ``rel`` x the median norm of the
    kept channels of the same group; exact zeros included) and ``kept_zero`` (norm exactly 0).

    ``norms[i]`` holds the channel norms of group ``i`` over all its parameter members, or None for a group
    without parameters (its channels carry no weights, so they are not counted). ``kept_near_zero_frac`` is
    ``kept_near_zero`` over the kept channels of the groups that were looked at.
    """
    kept = near = zero = 0
    for n, f in zip(norms, frozen):
        if n is None:
            continue
        k = n.detach().float().cpu()[f.bool().cpu()]
        if not k.numel():
            continue
        median = float(k.median())  # the lower median for an even count: stays a real channel's norm
        kept += k.numel()
        near += int((k <= rel * median).sum())
        zero += int((k == 0).sum())
    return {
        "kept_near_zero": float(near),
        "kept_near_zero_frac": near / kept if kept else 0.0,
        "kept_zero": float(zero),
    }


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of ``v``, ties given their mean rank (so a constant vector has constant ranks)."""
    v = v.detach().double().cpu().flatten()
    if not v.numel():
        return v
    ranks = torch.empty_like(v)
    ranks[v.argsort()] = torch.arange(v.numel(), dtype=torch.float64)
    _, inverse = torch.unique(v, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1, dtype=torch.float64).index_add_(0, inverse, ranks)
    return (sums / torch.bincount(inverse).double())[inverse]


def order_agreement(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Mean over groups of the Spearman rank correlation between ``a[i]`` and ``b[i]`` (channel scores of one
    group each): 1 when every group orders its channels alike, ~0 when the orders are unrelated.

    Groups with fewer than two channels, or where either score is constant (no order to compare), are left
    out; NaN when no group is left.
    """
    values = []
    for x, y in zip(a, b):
        rx, ry = _ranks(x), _ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        denom = float(rx.norm() * ry.norm())
        if rx.numel() >= 2 and denom > 0:
            values.append(float((rx * ry).sum()) / denom)
    return sum(values) / len(values) if values else float("nan")


def freeze_report(
    step: int,
    draw: Sequence[torch.Tensor] | None,
    frozen: Sequence[torch.Tensor],
    norms: Sequence[torch.Tensor | None],
    output_change: float,
    decision: dict[str, float] | None = None,
) -> dict[str, float]:
    """Everything :attr:`AutoTrainOnce.freeze_report` holds, as floats (see docs/ato.md, "What is logged");
    ``decision``: what was measured when the mask was decided (``init_order``, ``l1_order``)."""
    return {
        "step": float(step),
        **mask_distance(draw, frozen),
        **near_zero_kept(norms, frozen),
        "output_change": float(output_change),
        **{k: float(v) for k, v in (decision or {}).items()},
    }
