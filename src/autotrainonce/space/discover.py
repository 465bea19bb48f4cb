"""Find the pruning space of a model: trace, annotate shapes, propagate channels, assemble groups."""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ExampleInputError, TraceError
from ..graph.tracing import SHAPE, annotate_shapes, as_input_tuple, trace
from .fallback import discover_by_parts
from .groups import ChannelGroup, GatePoint, Member
from .model_checks import check_model
from .ops import module_rule
from .propagate import ATOMS, Propagation, op_label
from .pruning_space import ParamDim, PruningSpace
from .rules import Rule, apply_rule

__all__ = ["discover", "propagate"]


def discover(
    model: nn.Module, example_inputs: Any, *, rules: Mapping[Any, Rule] | None = None, split_fixed: bool = False
) -> PruningSpace:
    """Trace ``model`` on ``example_inputs`` and return its :class:`PruningSpace`. The model is not modified.

    Channels that cannot be removed without changing the function (network inputs and outputs, channels that
    reach an op without a rule) are grouped as unprunable; an unsupported op warns once, naming itself and its
    module. ``rules`` adds op rules for this call only (same keys as :func:`register_op`), taking precedence
    over the global table; a module class with a rule (here or registered) is traced as one node.

    A model that torch.fx cannot trace (data-dependent Python control flow) falls back to its submodules: each
    maximal submodule that traces on its own gets its inner channels analysed, everything crossing the
    untraceable code is kept, and the cost stays exact. A warning says so.

    By default one fixed channel keeps its whole group. With ``split_fixed=True`` a layer whose channels are
    only partly fixed (e.g. a residual stream that a zero-padding shortcut widens with constant channels) gives
    two groups, its fixed channels (kept) and the rest (prunable); measured, not the default
    (docs/decisions.md).
    """
    check_model(model, "discover")
    try:
        inputs = as_input_tuple(example_inputs)
    except TypeError as e:
        raise ExampleInputError(f"discover: {e}") from None
    def leaf(module: nn.Module) -> bool:  # a module with a rule is one node, whatever its forward does
        return module_rule(module, rules) is not None

    try:
        gm = trace(model, leaf)
    except TraceError as e:
        _check_runs(model, inputs)  # the fallback runs the model: say plainly when the inputs are the problem
        ctx, traced = discover_by_parts(model, inputs, lambda g, prefix: propagate(g, rules, prefix), leaf)
        where = f"{len(traced)} submodules that trace on their own" if traced else "no submodule"
        warnings.warn(
            f"autotrainonce: {e} Falling back to {where}: only channels inside them can be pruned; "
            "every channel that crosses the untraceable code is kept.",
            stacklevel=2,
        )
        return _assemble(model, ctx, inputs, split_fixed)
    params = [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]
    n_args = len(params)
    varargs = any(t.startswith("*") for t in params)  # forward(*xs) takes any number of inputs
    if not varargs and len(inputs) > n_args:
        raise ExampleInputError(
            f"discover: {type(model).__name__}.forward takes {n_args} input(s) but example_inputs holds "
            f"{len(inputs)}; pass one tensor, or a tuple with exactly the positional inputs of forward()"
        )
    try:
        annotate_shapes(gm, inputs)
    except TraceError:
        _check_runs(model, inputs)  # raises ExampleInputError when the eager model fails too
        raise  # the model runs but its traced graph does not: a tracing problem, not the inputs
    return _assemble(model, propagate(gm, rules), inputs, split_fixed)


def _describe_inputs(inputs: tuple) -> str:
    return ", ".join(
        f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}" if isinstance(x, torch.Tensor)
        else type(x).__name__
        for x in inputs
    )  # fmt: skip


def _check_runs(model: nn.Module, inputs: tuple) -> None:
    """Run ``model`` once on ``inputs`` (eval mode, no grad); raise ExampleInputError if that fails."""
    modes = {m: m.training for m in model.modules()}
    model.eval()  # eval mode: BatchNorm running statistics are left untouched
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = ""
        tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
        if any(x.dim() in (1, 3) for x in tensors):
            hint = " (a missing batch dimension? use x.unsqueeze(0))"
        elif any(not x.is_floating_point() for x in tensors):
            hint = " (integer inputs? most models need float32, e.g. x.float())"
        raise ExampleInputError(
            f"discover: {type(model).__name__} cannot run on example_inputs [{_describe_inputs(inputs)}]: "
            f"{type(e).__name__}: {first}{hint}. Pass an input of the shape and dtype the model is trained on, "
            "e.g. torch.randn(1, C, H, W) for an image model"
        ) from e
    finally:
        for m, flag in modes.items():
            m.training = flag


def propagate(gm: fx.GraphModule, rules: Mapping[Any, Rule] | None = None, prefix: str = "") -> Propagation:
    """Run the op rules over an annotated graph; ``prefix`` is the graph's module path inside the model."""
    ctx = Propagation(gm, prefix)
    calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    for node in gm.graph.nodes:
        ctx.node = node
        if node.op in ("placeholder", "get_attr"):
            node.meta[ATOMS] = None  # network inputs and constants: fixed channels
        elif node.op == "output":
            for a in ctx.input_atoms(node):
                ctx.mark(a.ids, "network output" if not prefix else f"output of {prefix}")
        elif node.op == "call_module" and calls[str(node.target)] > 1 and _has_state(ctx.modules[str(node.target)]):
            # one set of weights seen with two sets of channels: slicing it for one call would break the other
            ctx.unknown(node, f"{type(ctx.modules[str(node.target)]).__name__} called more than once")
            node.meta[ATOMS] = None
        else:
            node.meta[ATOMS] = apply_rule(ctx, node, rules)
            if node.meta[ATOMS] is None and isinstance(node.meta.get(SHAPE), torch.Size):
                # channels that stop being tracked can no longer be gated: whatever the rule said, keep them
                ctx.keep(node, f"channels not followed through {op_label(node, ctx.modules)}")
        ctx.add_const(node)  # every node's FLOPs are counted once: as a cost item, or here as a constant
    return ctx


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=True)) or any(True for _ in module.buffers(recurse=True))


def _assemble(model: nn.Module, ctx: Propagation, inputs: tuple, split_fixed: bool = False) -> PruningSpace:
    n_atoms = len(ctx.parent)
    root = torch.tensor([ctx.find(a) for a in range(n_atoms)], dtype=torch.long)
    # group = classes linked through producer blocks (a block's channels form one group). A reason is given
    # per class: with split_fixed, a block's fixed classes and its free ones are linked separately, so one
    # padded-in constant channel no longer keeps every channel of a residual stream.
    fixed = {ctx.find(r) for r in ctx.reason} if split_fixed else set()
    gparent = list(range(n_atoms))

    def gfind(a: int) -> int:
        while gparent[a] != a:
            gparent[a] = gparent[gparent[a]]
            a = gparent[a]
        return a

    for _, ids in ctx.blocks:
        anchor: dict[bool, int] = {}
        for r in root[ids].tolist():
            first = anchor.setdefault(r in fixed, r)
            ra, rb = gfind(first), gfind(r)
            if ra != rb:
                gparent[rb] = ra
    # order groups by the first block that touches them; channels by first appearance
    group_of_root: dict[int, int] = {}
    lid_of_root: dict[int, int] = {}
    names: list[list[str]] = []
    sizes: list[int] = []
    for name, ids in ctx.blocks:
        for r in root[ids].tolist():
            g = gfind(r)
            if g not in group_of_root:
                group_of_root[g] = len(names)
                names.append([])
                sizes.append(0)
            gi = group_of_root[g]
            if name not in names[gi]:
                names[gi].append(name)
            if r not in lid_of_root:
                lid_of_root[r] = sizes[gi]
                sizes[gi] += 1
    gid = torch.full((max(n_atoms, 1),), -1, dtype=torch.long)
    lid = torch.full((max(n_atoms, 1),), -1, dtype=torch.long)
    for a in range(n_atoms):
        r = int(root[a])
        gid[a] = group_of_root[gfind(r)]
        lid[a] = lid_of_root[r]
    reasons: dict[int, str] = {}
    for r, why in ctx.reason.items():
        gi = group_of_root.get(gfind(ctx.find(r)))
        if gi is not None:
            reasons.setdefault(gi, why)

    groups = [
        ChannelGroup(
            name=_group_name(names[i]), size=sizes[i], prunable=i not in reasons, reason=reasons.get(i, "")
        )
        for i in range(len(names))
    ]

    def split(ids: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        pos = torch.nonzero(ids >= 0).flatten()
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if pos.numel() == 0:
            return out
        g, c = gid[ids[pos]], lid[ids[pos]]
        for gi in torch.unique(g).tolist():
            sel = g == gi
            out[gi] = (pos[sel], c[sel])
        return out

    param_dims: dict[tuple[str, str], dict[int, ParamDim]] = defaultdict(dict)
    for (mod, name), rec in ctx.tensors.items():
        for dim, ids in rec.dims.items():
            parts = split(ids)
            for gi, (pos, ch) in parts.items():
                groups[gi].members.append(Member(mod, name, rec.kind, dim, pos, ch, rec.role.get(dim, "")))
            param_dims[(mod, name)][dim] = ParamDim(ids.numel(), _gl(ids, gid), _gl(ids, lid))
    for mod, dim, ids in ctx.gates:
        for gi, (pos, ch) in split(ids).items():
            groups[gi].gates.append(GatePoint(mod, dim, pos, ch))
    activations = {k: ParamDim(v.numel(), _gl(v, gid), _gl(v, lid)) for k, v in ctx.activations.items()}
    return PruningSpace(
        model_class=type(model).__name__,
        groups=groups,
        example_inputs=inputs,
        param_dims=dict(param_dims),
        activations=activations,
        costs=list(ctx.costs),
        const_macs=ctx.const_flops // 2,
        param_numels=_param_numels(model),
    )


def _gl(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(ids, -1)
    ok = ids >= 0
    out[ok] = table[ids[ok]]
    return out


def _group_name(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} tied)"


def _param_numels(model: nn.Module) -> dict[tuple[str, str], int]:
    """Every distinct parameter once, keyed by its first (module, name)."""
    seen: set[int] = set()
    out: dict[tuple[str, str], int] = {}
    for mod_name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            out[(mod_name, pname)] = p.numel()
    return out
