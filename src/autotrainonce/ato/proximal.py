"""The controller-guided proximal group-lasso step over channel groups.

A *channel* of a group owns a slice of every parameter member of that group (the producer's filter and bias, the
BatchNorm entries, the consumer's input slice, ...). For channels the mask drops, the step applies the proximal
operator of a group lasso, ``w <- w / ||w|| * max(0, ||w|| - tau)``, where ``||w||`` is the norm over *all* of
the channel's slices, so a dropped channel shrinks as a whole and reaches exactly zero together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..space import ChannelGroup, Member

__all__ = ["GroupProximal"]

# First-moment optimizer buffers that are cleared for channels that became exactly zero (see reset_state).
_MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


class _Slot:
    """One parameter member, resolved to its module so that the live tensor is fetched at each call."""

    def __init__(self, model: nn.Module, member: Member) -> None:
        self.module = model.get_submodule(member.module)
        self.name = member.name
        self.dim = member.dim
        self._index = member.index.long()
        self._channel = member.channel.long()
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def param(self) -> torch.Tensor:
        return getattr(self.module, self.name)

    def idx(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._cache:
            self._cache[device] = (self._index.to(device), self._channel.to(device))
        return self._cache[device]

    def sq_norms(self, size: int) -> torch.Tensor:
        """Squared norm of every logical channel's slice of this member, shape (size,), float32."""
        w = self.param.detach()
        index, channel = self.idx(w.device)
        dims = [d for d in range(w.dim()) if d != self.dim]
        per_pos = w.float().pow(2).sum(dim=dims) if dims else w.float().pow(2)
        out = torch.zeros(size, device=w.device, dtype=torch.float32)
        return out.scatter_add_(0, channel, per_pos.index_select(0, index))

    def factor(self, scale: torch.Tensor) -> torch.Tensor:
        """A broadcastable multiplier along ``dim``: ``scale[channel]`` at the member's positions, 1 elsewhere."""
        w = self.param
        index, channel = self.idx(w.device)
        f = torch.ones(w.shape[self.dim], device=w.device, dtype=w.dtype)
        f.index_copy_(0, index, scale.to(w.dtype).index_select(0, channel))
        shape = [1] * w.dim()
        shape[self.dim] = -1
        return f.view(shape)


class GroupProximal:
    """Applies the guided proximal step to the prunable ``groups`` of ``model``.

    ``groups`` are the prunable groups only, aligned with the ``keep`` masks of :meth:`set_mask`. The mask is
    set rarely (once per epoch, then frozen) and the step runs after every optimizer step, so the step itself
    never synchronises with the device.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
        self.sizes = [g.size for g in groups]
        self.slots = [[_Slot(model, m) for m in g.param_members()] for g in groups]
        self._keep: list[torch.Tensor] | None = None
        self._dropped: list[int] = []
        self._drop_dev: dict[tuple[int, torch.device], torch.Tensor] = {}

    def set_mask(self, keep: Sequence[torch.Tensor]) -> None:
        """Set the keep-masks (bool, one per group) that later :meth:`step` calls use."""
        if len(keep) != len(self.sizes):
            raise ValueError(f"expected {len(self.sizes)} masks, got {len(keep)}")
        self._keep = [k.detach().bool().cpu() for k in keep]
        self._dropped = [int((~k).sum()) for k in self._keep]
        self._drop_dev = {}

    def _drop(self, group: int, device: torch.device) -> torch.Tensor:
        key = (group, device)
        if key not in self._drop_dev:
            self._drop_dev[key] = (~self._keep[group]).to(device)
        return self._drop_dev[key]

    def _norm(self, group: int) -> torch.Tensor:
        """Norm over all parameter slices of every channel of one group, shape (size,), float32."""
        size, slots = self.sizes[group], self.slots[group]
        if not slots:
            return torch.zeros(size)
        sq = slots[0].sq_norms(size)
        for s in slots[1:]:
            sq = sq + s.sq_norms(size).to(sq.device)
        return sq.sqrt()

    @torch.no_grad()
    def channel_norms(self) -> list[torch.Tensor]:
        """Channel norms of every group (all parameter members of each channel together)."""
        return [self._norm(i) for i in range(len(self.sizes))]

    @staticmethod
    def thresholds(dropped: Sequence[int], lam: float, lr: float) -> list[float]:
        """``tau_l = lam * |Z_l| / sum_k |Z_k| * lr`` from the dropped counts (0 where nothing is dropped)."""
        total = sum(dropped)
        if total == 0:
            return [0.0] * len(dropped)
        return [lam * d / total * lr for d in dropped]

    @torch.no_grad()
    def step(self, lam: float, lr: float, optimizer: torch.optim.Optimizer | None = None) -> list[float]:
        """Shrink the dropped channels in place; kept channels are not touched. Returns the thresholds.

        All channel norms are taken before any update, so groups that share a tensor (a consumer conv holds the
        input slice of one group and the output of the next) do not depend on the order of the groups. With an
        ``optimizer``, its first-moment buffers of channels that became exactly zero are cleared.
        """
        if self._keep is None:
            raise RuntimeError("GroupProximal.step before set_mask")
        taus = self.thresholds(self._dropped, lam, lr)
        active = [i for i, d in enumerate(self._dropped) if d and self.slots[i]]
        norms = {i: self._norm(i) for i in active}
        for i in active:
            norm = norms[i]
            drop = self._drop(i, norm.device)
            shrunk = torch.clamp(norm - taus[i], min=0.0) / norm.clamp(min=torch.finfo(norm.dtype).tiny)
            scale = torch.where(drop, shrunk, torch.ones_like(norm))
            for s in self.slots[i]:
                s.param.mul_(s.factor(scale.to(s.param.device)))
            if optimizer is not None:
                self._reset(self.slots[i], drop & (scale == 0), optimizer)
        return taus

    @torch.no_grad()
    def hard_zero(self, optimizer: torch.optim.Optimizer | None = None) -> float:
        """Set every dropped channel exactly to zero; returns the largest channel norm that was zeroed."""
        if self._keep is None:
            raise RuntimeError("GroupProximal.hard_zero before set_mask")
        worst = 0.0
        for i, d in enumerate(self._dropped):
            if not d or not self.slots[i]:
                continue
            norm = self._norm(i)
            drop = self._drop(i, norm.device)
            worst = max(worst, float(norm[drop].max()))
            scale = (~drop).to(norm.dtype)
            for s in self.slots[i]:
                s.param.mul_(s.factor(scale.to(s.param.device)))
            if optimizer is not None:
                self._reset(self.slots[i], drop, optimizer)
        return worst

    @torch.no_grad()
    def scale_dropped(self, factor: float, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Multiply every dropped channel's whole group slice by ``factor`` (variant="decide"'s ramp).

        With an ``optimizer``, the channels' first-moment buffers are scaled alike, so momentum gathered at full
        strength does not push a channel back up against the ramp, and a factor of 0 clears it as
        :meth:`step`'s reset does. Needs no norms: the cost is one multiply per member.
        """
        if self._keep is None:
            raise RuntimeError("GroupProximal.scale_dropped before set_mask")
        for i, d in enumerate(self._dropped):
            if not d or not self.slots[i]:
                continue
            scale = None
            for s in self.slots[i]:
                w = s.param
                if scale is None or scale.device != w.device:
                    drop = self._drop(i, w.device)
                    scale = torch.where(drop, torch.full_like(drop, factor, dtype=torch.float32), 1.0)
                f = s.factor(scale)
                w.mul_(f)
                state = optimizer.state.get(w) if optimizer is not None else None
                for key in _MOMENTUM_KEYS if state else ():
                    buf = state.get(key)
                    if isinstance(buf, torch.Tensor) and buf.shape == w.shape:
                        buf.mul_(f.to(device=buf.device, dtype=buf.dtype))

    @torch.no_grad()
    def count_zero(self) -> tuple[int, int, float]:
        """``(dropped, exactly_zero, max_norm)`` over the channels the current mask drops."""
        if self._keep is None:
            return 0, 0, 0.0
        zero, worst = 0, 0.0
        for i, d in enumerate(self._dropped):
            if not d:
                continue
            norm = self._norm(i)
            sel = norm[self._drop(i, norm.device)]
            zero += int((sel == 0).sum())
            worst = max(worst, float(sel.max()))
        return sum(self._dropped), zero, worst

    @staticmethod
    def _reset(slots: Sequence[_Slot], dead: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        # A zero weight with a non-zero momentum would be pushed off zero by the next step even with a zero
        # gradient; clearing the first moment keeps it at zero unless the gradient itself moves it. Second
        # moments (exp_avg_sq) are kept: clearing them would make Adam's next update on that slice huge.
        keep = (~dead).float()
        for s in slots:
            state = optimizer.state.get(s.param)
            if not state:
                continue
            for key in _MOMENTUM_KEYS:
                buf = state.get(key)
                if isinstance(buf, torch.Tensor) and buf.shape == s.param.shape:
                    buf.mul_(s.factor(keep.to(buf.device)).to(buf.dtype))
