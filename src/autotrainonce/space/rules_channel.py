"""Op rules for ops that compute on channels: activations, elementwise arithmetic, convs, linears, norms,
reductions, matmul and attention.

Every rule has the signature ``rule(ctx, node) -> Atoms | tuple | None``; the table in :mod:`.rules` maps op
targets to them. A rule that returns None for a tensor output must have made the channels it read unprunable
(``ctx.keep``/``ctx.mark``/``ctx.unknown``): channels that vanish from tracking can no longer be gated.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .propagate import Atoms, DimRef, Propagation, arg

__all__ = [
    "attention_module",
    "channel_norm",
    "conv",
    "elementwise",
    "group_norm",
    "layer_norm",
    "linear",
    "matmul",
    "metadata",
    "passthrough",
    "prelu",
    "reduction",
    "sdpa",
    "softmax",
    "spatial_passthrough",
]


# -- channel-wise ops -----------------------------------------------------------------------------------------
def passthrough(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Channel-wise op of one tensor (activation, dropout, dtype cast): output channels are the input's."""
    x = ctx.atoms(ctx.first(node))
    for other in ctx.tensor_args(node)[1:]:  # e.g. clamp(x, min=t): t's channels are read but not gated
        a = ctx.atoms(other)
        if a is not None:
            ctx.mark(a.ids, f"extra tensor argument of {node.target} at {ctx.where(node)}")
    ctx.add_const(node)
    return x


def _spatial_dims(node: fx.Node, ctx: Propagation, nd: int) -> int:
    """How many trailing dims a pooling/resize op works on (from a '1d'/'2d'/'3d' suffix, else all but 2)."""
    label = type(ctx.modules[str(node.target)]).__name__ if node.op == "call_module" else str(
        getattr(node.target, "__name__", node.target)
    )
    found = re.search(r"([123])d$", label)
    return int(found.group(1)) if found else max(nd - 2, 1)


def spatial_passthrough(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Pooling, resizing, padding of trailing (spatial) dims: channels pass unless they are one of those dims."""
    xin = ctx.first(node)
    a = ctx.atoms(xin)
    ctx.add_const(node)
    if a is None:
        return None
    nd = ctx.ndim(xin)
    if a.dim >= nd - _spatial_dims(node, ctx, nd):
        ctx.keep(node, "channels pooled together")
    return a


def metadata(ctx: Propagation, node: fx.Node) -> None:
    """size(), dim(), shape: reads no values."""
    return None


def elementwise(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Broadcasting elementwise op with any number of operands (add, mul, where, ...).

    Operands carrying channels along the same output dim are tied channel by channel (a residual add). A
    learned per-channel tensor (``get_attr``) becomes a member cut with them; any other untracked operand along
    that dim holds fixed channels, so the tied channels become unprunable.
    """
    operands = ctx.tensor_args(node)
    tracked = [(n, ctx.atoms(n)) for n in operands if ctx.atoms(n) is not None]
    ctx.add_const(node)
    if not tracked:
        return None
    out_shape = ctx.shape(node)
    if out_shape is None:
        ctx.unknown(node)
        return None
    out_nd = len(out_shape)
    # the output dim each tracked operand's channels align with (broadcasting aligns from the right)
    aligned = {out_nd - (ctx.ndim(n) - a.dim) for n, a in tracked}
    if len(aligned) != 1:
        ctx.keep(node, f"{node.target} of operands with channels on different dims")
        return None
    d = aligned.pop()
    size = out_shape[d]
    out: Atoms | None = None
    for _n, a in tracked:
        if len(a) == size:
            if out is None:
                out = Atoms(d, a.ids)
            else:
                ctx.union(out.ids, a.ids)
        else:  # a single channel broadcast over all of them must never be removed
            ctx.mark(a.ids, f"broadcast across channels at {ctx.where(node)}")
    for n in operands:
        if ctx.atoms(n) is not None:
            continue
        s = ctx.shape(n)
        if s is None:
            continue
        od = d - (out_nd - len(s))
        if od < 0 or s[od] == 1 or out is None:
            continue
        if n.op == "get_attr":  # a learned per-channel tensor: cut it with the channels
            path, _, name = str(n.target).rpartition(".")
            kind = "param" if isinstance(_get_attr(ctx, n), nn.Parameter) else "buffer"
            ctx.record((path, name), kind, od, out.ids, "channelwise")
        else:
            ctx.mark(out.ids, f"combined with fixed channels by {node.target} at {ctx.where(node)}")
    return out


def _get_attr(ctx: Propagation, n: fx.Node) -> Any:
    obj: Any = ctx.gm
    for part in str(n.target).split("."):
        obj = getattr(obj, part)
    return obj


# -- producers / consumers -----------------------------------------------------------------------------------
def _weight_cost(ctx: Propagation, node: fx.Node, path: str, w: torch.Tensor) -> None:
    """MACs of a conv/linear: unit * kept(weight dim 0) * kept(weight dim 1), else a constant."""
    flops = int(node.meta.get("ato.flops", 0))
    per = w.shape[0] * w.shape[1]
    if per and flops and flops % (2 * per) == 0:
        key = (path, "weight")
        ctx.add_cost(node, flops // (2 * per), (DimRef("param", key, 0, w.shape[0]), DimRef("param", key, 1, w.shape[1])))
    else:
        ctx.add_const(node)


def conv(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Conv/ConvTranspose 1-3d: plain, grouped (channel k of each group tied) and depthwise (channel-wise)."""
    path, m = ctx.module(node)
    assert isinstance(m, nn.modules.conv._ConvNd)
    x = ctx.atoms(ctx.first(node))
    if x is not None and x.dim != 1:  # channels along a spatial dim would be mixed by the kernel
        ctx.unknown(node, f"{type(m).__name__} (input channels not on dim 1)")
        x = None
    w, g = m.weight, m.groups
    cin, cout = m.in_channels, m.out_channels
    depthwise = not m.transposed and g > 1 and g == cin
    if m.transposed and g != 1:
        ctx.unknown(node, f"{type(m).__name__} with groups > 1")
        return None
    in_dim, out_dim = (0, 1) if m.transposed else (1, 0)
    if depthwise:  # channel multiplier cout // cin: output j * mult + r reads input j only
        if x is None:  # on fixed inputs the groups cannot shrink
            out = ctx.fixed(cout, path, f"depthwise conv {path} on fixed input channels")
        else:
            out = x.ids.repeat_interleave(cout // cin)
        ctx.record((path, "weight"), "param", 0, out, "channelwise")
    elif g > 1:  # grouped: channel k of every conv group is tied, so each group keeps the same count
        cin_g, cout_g = cin // g, cout // g
        if x is not None:
            parts = x.ids.view(g, cin_g)
            for j in range(1, g):
                ctx.union(parts[0], parts[j])
            ctx.record((path, "weight"), "param", 1, parts[0], "in")
        out = ctx.fresh(cout_g, path).repeat(g)
        ctx.record((path, "weight"), "param", 0, out, "out")
    else:
        if x is not None:
            ctx.record((path, "weight"), "param", in_dim, x.ids, "in")
        out = ctx.fresh(cout, path)
        ctx.record((path, "weight"), "param", out_dim, out, "out")
    if x is not None and not depthwise:
        ctx.gate(path, 1, x)
    if m.bias is not None:
        ctx.record((path, "bias"), "param", 0, out, "out")
    ctx.activations[(path, "in")] = x.ids if x is not None else torch.full((cin,), -1)
    ctx.activations[(path, "out")] = out
    _weight_cost(ctx, node, path, w)
    return Atoms(1, out)


def linear(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Linear: reads channels on the last dim, produces fresh ones there."""
    path, m = ctx.module(node)
    assert isinstance(m, nn.Linear)
    xin = ctx.first(node)
    x = ctx.atoms(xin)
    nd = ctx.ndim(xin)
    if x is not None and x.dim != nd - 1:
        # Linear does not mix other dims, but only one dim is tracked per tensor: keep those channels.
        ctx.mark(x.ids, f"channels not on the last dim entering Linear {path}")
        x = None
    if x is not None:
        ctx.record((path, "weight"), "param", 1, x.ids, "in")
        ctx.gate(path, nd - 1, x)
    out = ctx.fresh(m.out_features, path)
    ctx.record((path, "weight"), "param", 0, out, "out")
    if m.bias is not None:
        ctx.record((path, "bias"), "param", 0, out, "out")
    ctx.activations[(path, "in")] = x.ids if x is not None else torch.full((m.in_features,), -1)
    ctx.activations[(path, "out")] = out
    _weight_cost(ctx, node, path, m.weight)
    return Atoms(nd - 1, out)


def channel_norm(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """BatchNorm / InstanceNorm: statistics per channel; weight, bias and running stats follow the channels."""
    path, m = ctx.module(node)
    x = ctx.atoms(ctx.first(node))
    ctx.add_const(node)
    if x is None:
        return None
    if x.dim != 1:
        ctx.unknown(node, f"{type(m).__name__} (channels not on dim 1)")
        return None
    for name in ("weight", "bias"):
        if getattr(m, name, None) is not None:
            ctx.record((path, name), "param", 0, x.ids, "channelwise")
    for name in ("running_mean", "running_var"):
        if getattr(m, name, None) is not None:
            ctx.record((path, name), "buffer", 0, x.ids, "channelwise")
    ctx.activations[(path, "in")] = x.ids
    return x


def group_norm(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """GroupNorm: statistics per group of channels, so a whole norm group is removed or kept."""
    path, m = ctx.module(node)
    assert isinstance(m, nn.GroupNorm)
    x = ctx.atoms(ctx.first(node))
    ctx.add_const(node)
    if x is None:
        return None
    if x.dim != 1:
        ctx.unknown(node, "GroupNorm (channels not on dim 1)")
        return None
    for grp in x.ids.view(m.num_groups, -1):
        ctx.union_all(grp)
    if m.affine:
        ctx.record((path, "weight"), "param", 0, x.ids, "channelwise")
        ctx.record((path, "bias"), "param", 0, x.ids, "channelwise")
    ctx.activations[(path, "in")] = x.ids
    return x


def layer_norm(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """LayerNorm over the channel dim mixes statistics across channels: those channels are kept."""
    path, m = ctx.module(node)
    xin = ctx.first(node)
    x = ctx.atoms(xin)
    ctx.add_const(node)
    if x is not None and x.dim >= ctx.ndim(xin) - len(m.normalized_shape):
        ctx.mark(x.ids, f"normalised together by LayerNorm {path}")
    return x


def prelu(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """PReLU with one slope per channel: the slopes follow the channels."""
    path, m = ctx.module(node)
    x = ctx.atoms(ctx.first(node))
    ctx.add_const(node)
    if x is not None and m.num_parameters > 1:
        if x.dim != 1:
            ctx.unknown(node, "PReLU (channels not on dim 1)")
            return None
        ctx.record((path, "weight"), "param", 0, x.ids, "channelwise")
        ctx.activations[(path, "in")] = x.ids
    return x


def softmax(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Softmax normalises along one dim: fine across other dims, channel-mixing along the channel dim."""
    xin = ctx.first(node)
    x = ctx.atoms(xin)
    ctx.add_const(node)
    dim = ctx.modules[str(node.target)].dim if node.op == "call_module" else arg(node, 1, "dim")
    if x is not None and (dim is None or int(dim) % ctx.ndim(xin) == x.dim):
        ctx.mark(x.ids, f"softmax over the channels at {ctx.where(node)}")
    return x


def reduction(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """mean/sum/amax/amin over some dims: channels survive unless reduced away."""
    xin = ctx.first(node)
    x = ctx.atoms(xin)
    ctx.add_const(node)
    if x is None:
        return None
    nd = ctx.ndim(xin)
    dim = arg(node, 1, "dim")
    keep = bool(arg(node, 2, "keepdim", False))
    dims = set(range(nd)) if dim is None else {int(v) % nd for v in (dim if isinstance(dim, (tuple, list)) else (dim,))}
    if x.dim in dims:
        ctx.keep(node, f"{node.target} over the channels")
        return None
    return Atoms(x.dim if keep else x.dim - sum(1 for v in dims if v < x.dim), x.ids)


# -- attention -----------------------------------------------------------------------------------------------
def matmul(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """``a @ b``: a contracted dim is consumed with no module input to gate, so it is kept; channels on the
    row dim of ``a``, the column dim of ``b`` or a batch dim pass to the output (cost linear in them)."""
    a_node, b_node = node.args[0], node.args[1]
    out_nd = ctx.ndim(node)
    if ctx.ndim(a_node) < 2 or ctx.ndim(b_node) < 2 or out_nd < 2:
        ctx.keep(node, "matrix-vector product")
        ctx.add_const(node)
        return None
    outs: list[Atoms] = []
    contracted: list[Atoms] = []
    for n, col_dim in ((a_node, -1), (b_node, -2)):
        a = ctx.atoms(n)
        if a is None:
            continue
        nd = ctx.ndim(n)
        rel = a.dim - nd  # negative index of the channel dim in this operand
        if rel == col_dim:
            contracted.append(a)
        else:  # a's rows, b's columns and batch dims keep their place counted from the right
            outs.append(Atoms(out_nd + rel, a.ids))
    for a in contracted:
        ctx.mark(a.ids, f"contracted by matmul at {ctx.where(node)}")
    if len(contracted) == 2 and len(contracted[0]) == len(contracted[1]):
        ctx.union(contracted[0].ids, contracted[1].ids)
    out: Atoms | None = None
    for a in outs:
        if out is None:
            out = a
        elif a.dim == out.dim and len(a) == len(out):  # a shared batch dim
            ctx.union(out.ids, a.ids)
        else:  # only one dim per tensor is tracked
            ctx.mark(a.ids, f"second channel dim of a matmul at {ctx.where(node)}")
    flops = int(node.meta.get("ato.flops", 0))
    if out is not None and flops and (flops // 2) % len(out) == 0:
        key = (node.name, "cost")
        ctx.activations[key] = out.ids
        ctx.add_cost(node, flops // 2 // len(out), (DimRef("act", key, 0, len(out)),))
    ctx.add_const(node)
    return out


def attention_module(ctx: Propagation, node: fx.Node) -> None:
    """nn.MultiheadAttention: heads are not pruned, so every channel it reads or writes is kept."""
    ctx.keep(node, "read by MultiheadAttention (heads are not pruned)")
    ctx.add_const(node)
    return None


def sdpa(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """scaled_dot_product_attention: q/k channels are contracted and v's are mixed by head: all kept."""
    ctx.keep(node, "read by scaled_dot_product_attention")
    ctx.add_const(node)
    v = ctx.atoms(arg(node, 2, "value"))
    return v
