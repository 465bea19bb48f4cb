"""PruningSpace: the groups of a model plus exact cost, gates and surgery for any choice of kept channels."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedOpError
from .groups import ChannelGroup
from .propagate import CostItem, DimRef

__all__ = ["PruningSpace", "ParamDim", "Masks"]

Masks = Sequence["torch.Tensor | None"] | None


@dataclass
class ParamDim:
    """One dimension of a parameter/buffer/activation: which group and logical channel sits at each position."""

    size: int
    gid: torch.Tensor  # group index per position, -1 = fixed
    lid: torch.Tensor  # logical channel per position
    _counts: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _fixed: int = -1

    def prepare(self, sizes: list[int]) -> None:
        fixed = self.gid < 0
        self._fixed = int(fixed.sum())
        for gi in torch.unique(self.gid[~fixed]).tolist():
            self._counts[gi] = torch.bincount(self.lid[self.gid == gi], minlength=sizes[gi])

    def kept(self, masks: list[torch.Tensor | None], soft: bool) -> Any:
        """Number of positions kept (a float tensor for soft masks, an int otherwise)."""
        total: Any = self._fixed
        for gi, counts in self._counts.items():
            m = masks[gi]
            if m is None:
                total = total + int(counts.sum())
            elif soft:
                total = total + (counts.to(m.dtype).to(m.device) * m).sum()
            else:
                total = total + int(counts[m.cpu().bool()].sum())
        return total

    def keep_index(self, masks: list[torch.Tensor | None]) -> torch.Tensor:
        keep = torch.ones(self.size, dtype=torch.bool)
        for gi in self._counts:
            m = masks[gi]
            if m is not None:
                sel = self.gid == gi
                keep[sel] = m.cpu().bool()[self.lid[sel]]
        return torch.nonzero(keep).flatten()


class PruningSpace:
    """Every channel group of a traced model, with exact cost, gates and physical pruning.

    Built by :func:`autotrainonce.discover`; see ``autotrainonce.space`` for the contract.
    """

    def __init__(
        self,
        *,
        model_class: str,
        groups: list[ChannelGroup],
        example_inputs: tuple,
        param_dims: dict[tuple[str, str], dict[int, ParamDim]],
        activations: dict[tuple[str, str], ParamDim],
        costs: list[CostItem],
        const_macs: int,
        param_numels: dict[tuple[str, str], int],
    ) -> None:
        self.model_class = model_class
        self.groups = groups
        self.example_inputs = example_inputs
        self.param_dims = param_dims
        self.activations = activations
        self.costs = costs
        self.const_macs = const_macs
        self.param_numels = param_numels
        sizes = [g.size for g in groups]
        for dims in param_dims.values():
            for pd in dims.values():
                pd.prepare(sizes)
        for pd in activations.values():
            pd.prepare(sizes)

    # -- masks ---------------------------------------------------------------------------------------------
    @property
    def prunable_indices(self) -> list[int]:
        """Indices into ``groups`` of the prunable groups (the controller's sequence)."""
        return [i for i, g in enumerate(self.groups) if g.prunable]

    def full_masks(self) -> list[torch.Tensor | None]:
        """All channels kept: None for every group."""
        return [None] * len(self.groups)

    def _check(self, masks: Masks, *, allow_fixed: bool = False) -> list[torch.Tensor | None]:
        if masks is None:
            return self.full_masks()
        masks = list(masks)
        if len(masks) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} masks (one per group in space.groups), got {len(masks)}")
        for g, m in zip(self.groups, masks):
            if m is None:
                continue
            if m.shape != (g.size,):
                raise ValueError(f"mask for group {g.name!r} must have shape ({g.size},), got {tuple(m.shape)}")
            if not g.prunable and not allow_fixed and not bool((m.detach() != 0).all()):
                raise UnsupportedOpError(
                    f"group {g.name!r} is not prunable ({g.reason}); pass None (keep all) as its mask"
                )
        return masks

    # -- cost ----------------------------------------------------------------------------------------------
    def _macs(self, masks: list[torch.Tensor | None], soft: bool) -> Any:
        total: Any = self.const_macs
        for c in self.costs:
            term: Any = c.unit
            for ref in c.factors:
                term = term * self._kept(ref, masks, soft)
            total = total + term
        return total

    def _kept(self, ref: DimRef, masks: list, soft: bool) -> Any:
        if ref.kind == "act":
            pd = self.activations.get(ref.key)
        else:
            pd = self.param_dims.get(ref.key, {}).get(ref.dim)
        return ref.size if pd is None else pd.kept(masks, soft)

    def _params(self, masks: list[torch.Tensor | None], soft: bool) -> Any:
        total: Any = 0
        for key, numel in self.param_numels.items():
            dims = self.param_dims.get(key)
            if not dims:
                total = total + numel
                continue
            per = numel
            for pd in dims.values():
                per //= pd.size
            value: Any = per
            for pd in dims.values():
                value = value * pd.kept(masks, soft)
            total = total + value
        return total

    def flops(self, masks: Masks = None) -> int:
        """Multiply-accumulates of the forward pass on the example inputs, for the kept channels (exact)."""
        return int(self._macs(self._check(masks), soft=False))

    def params(self, masks: Masks = None) -> int:
        """Number of parameters the compact model will have (exact)."""
        return int(self._params(self._check(masks), soft=False))

    def soft_flops(self, masks: Masks) -> torch.Tensor:
        """MACs as a differentiable function of float masks in [0, 1] (quadratic: widths multiply)."""
        return torch.as_tensor(self._macs(self._check(masks, allow_fixed=True), soft=True), dtype=torch.float32)

    def soft_params(self, masks: Masks) -> torch.Tensor:
        """Parameter count as a differentiable function of float masks."""
        return torch.as_tensor(self._params(self._check(masks, allow_fixed=True), soft=True), dtype=torch.float32)

    def group_macs_share(self) -> list[float]:
        """For each group, the fraction of the network's MACs that removing all its channels would save."""
        total = self._macs(self.full_masks(), soft=False)
        out = []
        for i, g in enumerate(self.groups):
            masks = self.full_masks()
            masks[i] = torch.zeros(g.size, dtype=torch.bool)
            out.append((total - self._macs(masks, soft=False)) / total if total else 0.0)
        return out

    # -- gates ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def masked(self, model: nn.Module, masks: Masks) -> Iterator[nn.Module]:
        """Within the block, every consumer of a group's channels sees them scaled by the group's mask.

        Hard (bool) masks give exactly what :meth:`prune` computes; float masks are differentiable gates.
        """
        masks = self._check(masks)
        per_module: dict[str, list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        for g, m in zip(self.groups, masks):
            if m is None:
                continue
            for gate in g.gates:
                per_module.setdefault(gate.module, []).append((gate.dim, gate.index, gate.channel, m))
        handles = []
        try:
            for path, items in per_module.items():
                handles.append(model.get_submodule(path).register_forward_pre_hook(_GateHook(items), with_kwargs=True))
            yield model
        finally:
            for h in handles:
                h.remove()

    # -- surgery -------------------------------------------------------------------------------------------
    def prune(
        self,
        model: nn.Module,
        masks: Masks,
        *,
        check: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> nn.Module:
        """A physically smaller copy of ``model`` keeping the masked channels; ``model`` is untouched.

        With ``check`` the compact model is run against the masked model on the example inputs (eval mode)
        and a SurgeryError is raised if they differ by more than 1e-4 (relative to the output scale).
        With ``optimizer``, that same optimizer object is moved onto the compact model's parameters in place,
        its per-parameter state (momentum, Adam moments) sliced to the kept channels, so training continues
        on the compact model exactly where the masked one was.
        """
        from .surgery import prune_model

        return prune_model(self, model, self._check(masks), check=check, optimizer=optimizer)

    def prune_(
        self,
        model: nn.Module,
        masks: Masks,
        *,
        check: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
        report: dict[str, float] | None = None,
    ) -> nn.Module:
        """Cut ``model`` itself to the masked channels and return it (the in-place twin of :meth:`prune`).

        The same module objects stay; shrunk parameters become new, smaller ``nn.Parameter`` objects on them and
        the module attributes (``out_channels``, ``num_features``, ...) follow, so every reference to the model
        or its submodules stays valid. With ``optimizer``, that optimizer is moved onto the new parameters in
        place, its state (momentum, Adam moments) sliced. ``check`` compares the outputs before (masked) and after
        the cut on the example inputs. Refusals (a layer emptied, optimizer state that cannot be sliced, a
        parametrized module) raise before anything changes. This space keeps describing the *uncut* model.
        ``report`` (a dict), if given, receives ``max_abs_diff`` and ``output_scale`` of the check.
        """
        from .surgery import prune_model_

        return prune_model_(self, model, self._check(masks), check=check, optimizer=optimizer, report=report)

    # -- inspection ----------------------------------------------------------------------------------------
    def summary(self) -> str:
        """A table of the groups: name, size, prunable, share of MACs."""
        shares = self.group_macs_share()
        w = max([len(g.name) for g in self.groups] + [5])
        lines = [
            f"{self.model_class}: {len(self.groups)} channel groups, {len(self.prunable_indices)} prunable; "
            f"{self.flops() / 1e6:.2f}M MACs, {self.params() / 1e6:.3f}M params",
            f"{'#':>3}  {'group':<{w}}  {'size':>5}  {'prunable':<8}  {'MACs %':>6}  note",
        ]
        for i, (g, s) in enumerate(zip(self.groups, shares)):
            share = f"{100 * s:.2f}" if g.prunable else "-"  # a kept group saves nothing
            lines.append(
                f"{i:>3}  {g.name:<{w}}  {g.size:>5}  {'yes' if g.prunable else 'no':<8}  {share:>6}  {g.reason}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"PruningSpace({self.model_class}, groups={len(self.groups)}, prunable={len(self.prunable_indices)})"
        )


class _GateHook:
    """forward_pre_hook scaling the first input's channels by the masks of the groups it reads."""

    def __init__(self, items: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.items = items

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            x = args[0]
        else:  # called as module(input=x): fx recorded the keyword, the rule read it as the input
            key = next(iter(kwargs))
            x = kwargs[key]
        gates: dict[int, torch.Tensor] = {}
        for dim, index, channel, mask in self.items:
            d = dim % x.ndim
            gate = gates.get(d)
            if gate is None:
                gate = torch.ones(x.shape[d], dtype=x.dtype, device=x.device)
            values = mask.to(device=x.device, dtype=x.dtype)[channel.to(x.device)]
            gates[d] = gate.index_put((index.to(x.device),), values)
        for d, gate in gates.items():
            shape = [1] * x.ndim
            shape[d] = -1
            x = x * gate.view(shape)
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, key: x}
