"""Op rules: how each kind of module or function moves, ties, produces or consumes channels.

One table, keyed by module class, function or Tensor-method name. Each rule takes the propagation state and the
node and returns the output's :class:`Atoms` (or None when the output has no tracked channels). Anything not
in the table is *unknown*: its channels become unprunable, with one warning naming the op and the module.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .propagate import Atoms, CostItem, Propagation

__all__ = ["register_op_rule", "MODULE_RULES", "FUNCTION_RULES", "METHOD_RULES", "apply_rule"]

Rule = Callable[[Propagation, fx.Node], Any]

MODULE_RULES: dict[type, Rule] = {}
FUNCTION_RULES: dict[Any, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}


def register_op_rule(target: Any, rule: Rule) -> None:
    """Register ``rule`` for a module class, a function, or a Tensor method name (str)."""
    if isinstance(target, str):
        METHOD_RULES[target] = rule
    elif isinstance(target, type) and issubclass(target, nn.Module):
        MODULE_RULES[target] = rule
    else:
        FUNCTION_RULES[target] = rule


def _register(targets: list[Any], rule: Rule) -> None:
    for t in targets:
        register_op_rule(t, rule)


def apply_rule(ctx: Propagation, node: fx.Node) -> Any:
    if node.op == "call_module":
        rule = MODULE_RULES.get(type(ctx.modules[str(node.target)]))
    elif node.op == "call_method":
        rule = METHOD_RULES.get(str(node.target))
    else:
        rule = FUNCTION_RULES.get(node.target)
    if rule is None:
        if not any(ctx.atoms(n) is not None for n in ctx.tensor_args(node)) and node.meta.get("ato.flops", 0) == 0:
            return None  # touches no tracked channel and costs nothing: nothing to say
        ctx.unknown(node)
        return None
    return rule(ctx, node)


# -- helpers ------------------------------------------------------------------------------------------------
def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _ndim(ctx: Propagation, node: Any) -> int:
    s = ctx.shape(node)
    return len(s) if s is not None else 0


def _first(ctx: Propagation, node: fx.Node) -> fx.Node:
    x = node.args[0] if node.args else next(iter(node.kwargs.values()))
    return x


def _mod(ctx: Propagation, node: fx.Node) -> tuple[str, nn.Module]:
    path = str(node.target)
    return path, ctx.modules[path]


def _const(ctx: Propagation, node: fx.Node) -> None:
    ctx.const_flops += int(node.meta.get("ato.flops", 0))


# -- elementwise / pass-through ------------------------------------------------------------------------------
def passthrough(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Channel-wise op: output channels are the input's."""
    _const(ctx, node)
    return ctx.atoms(_first(ctx, node))


def spatial_passthrough(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Op acting on dims >= 2 (pooling, resize): fine when channels live on dim 1."""
    a = ctx.atoms(_first(ctx, node))
    if a is not None and a.dim != 1:
        ctx.unknown(node)
        return None
    _const(ctx, node)
    return a


def metadata(ctx: Propagation, node: fx.Node) -> None:
    """size(), dim(), shape: reads no values."""
    return None


def elementwise(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Broadcasting elementwise op with any number of operands (add, mul, where, ...)."""
    out_shape = ctx.shape(node)
    if out_shape is None:
        ctx.unknown(node)
        return None
    out_nd = len(out_shape)
    operands = [a for a in ctx.tensor_args(node)]
    tracked = [(n, ctx.atoms(n)) for n in operands if ctx.atoms(n) is not None]
    if not tracked:
        _const(ctx, node)
        return None
    # the output dim each tracked operand's channels align with (broadcasting aligns from the right)
    aligned = {out_nd - (_ndim(ctx, n) - a.dim) for n, a in tracked}
    if len(aligned) != 1:
        ctx.unknown(node, f"{node.target} (operands carry channels on different dims)")
        return None
    d = aligned.pop()
    size = out_shape[d]
    out: Atoms | None = None
    for n, a in tracked:
        if len(a) == size:
            if out is None:
                out = Atoms(d, a.ids)
            else:
                ctx.union(out.ids, a.ids)
        else:  # a broadcast channel (size 1) must never be removed
            ctx.mark(a.ids, f"broadcast across channels at {ctx.where(node)}")
    for n in operands:
        if ctx.atoms(n) is not None:
            continue
        s = ctx.shape(n)
        if s is None:
            continue
        od = d - (out_nd - len(s))
        if od < 0 or s[od] == 1:
            continue
        if n.op == "get_attr" and out is not None:  # a learned per-channel tensor: cut it with the channels
            path, _, name = str(n.target).rpartition(".")
            kind = "param" if isinstance(_get_attr(ctx, n), nn.Parameter) else "buffer"
            ctx.record((path, name), kind, od, out.ids, "channelwise")
        else:
            ctx.unknown(node, f"{node.target} (with a constant tensor along the channel dim)")
            return None
    _const(ctx, node)
    if out is None:  # every tracked operand was broadcast
        return None
    return out


def _get_attr(ctx: Propagation, n: fx.Node) -> Any:
    obj: Any = ctx.gm
    for part in str(n.target).split("."):
        obj = getattr(obj, part)
    return obj


# -- producers / consumers -----------------------------------------------------------------------------------
def conv(ctx: Propagation, node: fx.Node) -> Atoms | None:
    path, m = _mod(ctx, node)
    assert isinstance(m, nn.modules.conv._ConvNd)
    x = ctx.atoms(_first(ctx, node))
    if x is not None and x.dim != 1:  # channels along a spatial dim would be mixed by the kernel
        ctx.unknown(node, f"{type(m).__name__} (input channels not on dim 1)")
        x = None
    w = m.weight
    out_shape = ctx.shape(node)
    flops = int(node.meta.get("ato.flops", 0))
    g = m.groups
    if m.transposed:
        if g != 1:
            ctx.unknown(node, f"{type(m).__name__} with groups > 1")
            return None
        in_dim, out_dim = 0, 1
    else:
        in_dim, out_dim = 1, 0
    cin, cout = m.in_channels, m.out_channels
    name = path
    if not m.transposed and g > 1 and g == cin:  # depthwise (channel multiplier cout // cin): channel-wise
        mult = cout // cin
        out = x.ids.repeat_interleave(mult) if x is not None else ctx.fresh(cout, name)
        ctx.record((path, "weight"), "param", 0, out, "channelwise")
    elif g > 1:  # grouped: channel k of every conv group is tied, so each group keeps the same count
        cin_g, cout_g = cin // g, cout // g
        if x is not None:
            parts = x.ids.view(g, cin_g)
            for j in range(1, g):
                ctx.union(parts[0], parts[j])
            ctx.record((path, "weight"), "param", 1, parts[0], "in")
        block = ctx.fresh(cout_g, name)
        out = block.repeat(g)
        ctx.record((path, "weight"), "param", 0, out, "out")
    else:
        if x is not None:
            ctx.record((path, "weight"), "param", in_dim, x.ids, "in")
        out = ctx.fresh(cout, name)
        ctx.record((path, "weight"), "param", out_dim, out, "out")
    if x is not None and not (g > 1 and g == cin and not m.transposed):
        ctx.gate(path, 1, x)
    if m.bias is not None:
        ctx.record((path, "bias"), "param", 0, out, "out")
    ctx.activations[(path, "in")] = x.ids if x is not None else torch.full((cin,), -1)
    ctx.activations[(path, "out")] = out
    unit, rem = divmod(flops // 2, w.shape[0] * w.shape[1]) if flops else (0, 0)
    if rem == 0 and unit * w.shape[0] * w.shape[1] * 2 == flops and out_shape is not None:
        ctx.costs.append(CostItem(path, unit, ((path, "weight"), 0), ((path, "weight"), 1), (w.shape[0], w.shape[1])))
    else:
        ctx.const_flops += flops
    return Atoms(1, out)


def linear(ctx: Propagation, node: fx.Node) -> Atoms | None:
    path, m = _mod(ctx, node)
    assert isinstance(m, nn.Linear)
    xin = _first(ctx, node)
    x = ctx.atoms(xin)
    nd = _ndim(ctx, xin)
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
    flops = int(node.meta.get("ato.flops", 0))
    per = m.in_features * m.out_features
    if per and flops and flops % (2 * per) == 0:
        ctx.costs.append(
            CostItem(path, flops // (2 * per), ((path, "weight"), 0), ((path, "weight"), 1), tuple(m.weight.shape))
        )
    else:
        ctx.const_flops += flops
    return Atoms(nd - 1, out)


def channel_norm(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """BatchNorm / InstanceNorm: statistics per channel; weight, bias and running stats follow the channels."""
    path, m = _mod(ctx, node)
    x = ctx.atoms(_first(ctx, node))
    if x is None:
        _const(ctx, node)
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
    _const(ctx, node)
    return x


def group_norm(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """GroupNorm: statistics per group of channels, so a whole norm group is removed or kept."""
    path, m = _mod(ctx, node)
    assert isinstance(m, nn.GroupNorm)
    x = ctx.atoms(_first(ctx, node))
    if x is None:
        _const(ctx, node)
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
    _const(ctx, node)
    return x


def layer_norm(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """LayerNorm over the channel dim mixes statistics across channels: those channels are kept."""
    path, m = _mod(ctx, node)
    xin = _first(ctx, node)
    x = ctx.atoms(xin)
    if x is None:
        _const(ctx, node)
        return None
    nd = _ndim(ctx, xin)
    if x.dim >= nd - len(m.normalized_shape):
        ctx.mark(x.ids, f"normalised together by LayerNorm {path}")
    _const(ctx, node)
    return x


def prelu(ctx: Propagation, node: fx.Node) -> Atoms | None:
    path, m = _mod(ctx, node)
    x = ctx.atoms(_first(ctx, node))
    if x is not None and m.num_parameters > 1:
        if x.dim != 1:
            ctx.unknown(node, "PReLU (channels not on dim 1)")
            return None
        ctx.record((path, "weight"), "param", 0, x.ids, "channelwise")
        ctx.activations[(path, "in")] = x.ids
    _const(ctx, node)
    return x


def softmax(ctx: Propagation, node: fx.Node) -> Atoms | None:
    x = ctx.atoms(_first(ctx, node))
    if node.op == "call_module":
        dim = ctx.modules[str(node.target)].dim
    else:
        dim = _arg(node, 1, "dim")
    nd = _ndim(ctx, _first(ctx, node))
    if x is not None and (dim is None or dim % nd == x.dim):
        ctx.unknown(node, "softmax over the channel dim")
        return None
    _const(ctx, node)
    return x


# -- shape ops -------------------------------------------------------------------------------------------------
def flatten(ctx: Propagation, node: fx.Node) -> Atoms | None:
    xin = _first(ctx, node)
    x = ctx.atoms(xin)
    shape = ctx.shape(xin)
    if x is None or shape is None:
        return None
    nd = len(shape)
    if node.op == "call_module":
        m = ctx.modules[str(node.target)]
        start, end = m.start_dim, m.end_dim
    else:
        start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    start, end = start % nd, end % nd
    d = x.dim
    if d < start:
        return x
    if d > end:
        return Atoms(d - (end - start), x.ids)
    if all(shape[i] == 1 for i in range(start, d)):
        inner = math.prod(shape[d + 1 : end + 1])
        return Atoms(start, x.ids.repeat_interleave(inner))
    ctx.unknown(node, "flatten merging dims before the channel dim")
    return None


def reshape(ctx: Propagation, node: fx.Node) -> Atoms | None:
    xin = _first(ctx, node)
    x = ctx.atoms(xin)
    s_in, s_out = ctx.shape(xin), ctx.shape(node)
    if x is None or s_in is None or s_out is None:
        return None
    d = x.dim
    prefix = math.prod(s_in[:d])
    k, acc = 0, 1
    while k < len(s_out) and acc < prefix:
        acc *= s_out[k]
        k += 1
    while k < len(s_out) - 1 and s_out[k] == 1 and s_in[d] != 1:  # skip inserted singleton dims
        k += 1
    ok = acc == prefix and k < len(s_out)
    out: Atoms | None = None
    if ok and s_out[k] == s_in[d]:
        out = Atoms(k, x.ids)
    elif ok:
        j, acc2 = d, 1
        while j < len(s_in) and acc2 < s_out[k]:
            acc2 *= s_in[j]
            j += 1
        if acc2 == s_out[k]:
            out = Atoms(k, x.ids.repeat_interleave(math.prod(s_in[d + 1 : j])))
    if out is None:
        ctx.unknown(node, f"{node.target} splitting or moving the channel dim")
        return None
    # a literal size for the channel dim would break once channels are removed
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    if "shape" in node.kwargs:
        sizes = tuple(node.kwargs["shape"])
    if len(sizes) == len(s_out) and isinstance(sizes[out.dim], int) and sizes[out.dim] != -1:
        ctx.mark(out.ids, f"reshaped to a literal channel count at {ctx.where(node)}")
    return out


def permute(ctx: Propagation, node: fx.Node) -> Atoms | None:
    xin = _first(ctx, node)
    x = ctx.atoms(xin)
    if x is None:
        return None
    nd = _ndim(ctx, xin)
    if node.target in ("transpose", torch.transpose) or node.target == "swapaxes":
        a, b = _arg(node, 1, "dim0") % nd, _arg(node, 2, "dim1") % nd
        d = b if x.dim == a else a if x.dim == b else x.dim
        return Atoms(d, x.ids)
    if node.target == "t":
        return Atoms(nd - 1 - x.dim, x.ids)
    dims = node.args[1:] if node.op == "call_method" else (_arg(node, 1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if "dims" in node.kwargs:
        dims = tuple(node.kwargs["dims"])
    perm = [int(p) % nd for p in dims]
    return Atoms(perm.index(x.dim), x.ids)


def unsqueeze(ctx: Propagation, node: fx.Node) -> Atoms | None:
    x = ctx.atoms(_first(ctx, node))
    if x is None:
        return None
    nd_out = _ndim(ctx, node)
    dim = _arg(node, 1, "dim") % nd_out
    return Atoms(x.dim + 1 if dim <= x.dim else x.dim, x.ids)


def squeeze(ctx: Propagation, node: fx.Node) -> Atoms | None:
    xin = _first(ctx, node)
    x = ctx.atoms(xin)
    s_in, s_out = ctx.shape(xin), ctx.shape(node)
    if x is None or s_in is None or s_out is None:
        return None
    removed = [i for i in range(len(s_in)) if s_in[i] == 1]
    dim = _arg(node, 1, "dim")
    if dim is not None:
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        removed = [i for i in (int(v) % len(s_in) for v in dims) if s_in[i] == 1]
    if x.dim in removed:  # a single channel squeezed away: keep it
        ctx.mark(x.ids, f"squeezed at {ctx.where(node)}")
        return None
    return Atoms(x.dim - sum(1 for i in removed if i < x.dim), x.ids)


def reduction(ctx: Propagation, node: fx.Node) -> Atoms | None:
    xin = _first(ctx, node)
    x = ctx.atoms(xin)
    if x is None:
        _const(ctx, node)
        return None
    nd = _ndim(ctx, xin)
    dim = _arg(node, 1, "dim")
    keep = bool(_arg(node, 2, "keepdim", False))
    if dim is None:
        ctx.unknown(node, f"{node.target} over all dims")
        return None
    dims = {int(v) % nd for v in (dim if isinstance(dim, (tuple, list)) else (dim,))}
    if x.dim in dims:
        ctx.unknown(node, f"{node.target} over the channel dim")
        return None
    _const(ctx, node)
    return Atoms(x.dim if keep else x.dim - sum(1 for v in dims if v < x.dim), x.ids)


def cat(ctx: Propagation, node: fx.Node) -> Atoms | None:
    tensors = list(_arg(node, 0, "tensors"))
    if not any(ctx.atoms(t) is not None for t in tensors):
        return None
    out_shape = ctx.shape(node)
    nd = len(out_shape) if out_shape is not None else 0
    dim = int(_arg(node, 1, "dim", 0)) % nd
    parts = []
    dims = {ctx.atoms(t).dim for t in tensors if ctx.atoms(t) is not None}
    if dims == {dim}:
        for t in tensors:
            a = ctx.atoms(t)
            if a is None:
                s = ctx.shape(t)
                a = Atoms(dim, ctx.fixed(s[dim] if s is not None else 0, "cat constant", "constant in concat"))
            parts.append(a.ids)
        return Atoms(dim, torch.cat(parts))
    return elementwise(ctx, node) if dim not in dims else _unknown(ctx, node)


def _unknown(ctx: Propagation, node: fx.Node) -> None:
    ctx.unknown(node)
    return None


def chunk(ctx: Propagation, node: fx.Node) -> tuple[Atoms | None, ...] | None:
    """chunk/split into equal parts along the channel dim ties channel k of every part."""
    xin = _first(ctx, node)
    x = ctx.atoms(xin)
    outs = node.meta.get("ato.shape")
    if x is None or not isinstance(outs, tuple):
        return None
    nd = _ndim(ctx, xin)
    dim = int(_arg(node, 2, "dim", 0)) % nd
    if dim != x.dim:
        return tuple(Atoms(x.dim, x.ids) for _ in outs)
    sizes = [s[dim] for s in outs]
    if node.target in ("split", torch.split) and not isinstance(_arg(node, 1, "split_size_or_sections"), int):
        ctx.mark(x.ids, f"split with literal sizes at {ctx.where(node)}")
    if len(set(sizes)) != 1:
        ctx.mark(x.ids, f"unequal chunks at {ctx.where(node)}")
    parts = list(torch.split(x.ids, sizes))
    if len(set(sizes)) == 1:
        for p in parts[1:]:
            ctx.union(parts[0], p)
    return tuple(Atoms(dim, p) for p in parts)


def getitem(ctx: Propagation, node: fx.Node) -> Atoms | None:
    src, idx = node.args[0], node.args[1]
    if isinstance(src, fx.Node) and isinstance(src.meta.get("ato.atoms"), tuple):
        return src.meta["ato.atoms"][idx]
    x = ctx.atoms(src)
    if x is None:
        return None
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in items):
        ctx.unknown(node, "tensor indexing")
        return None
    nd = _ndim(ctx, src)
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    out_d, in_d = 0, 0
    for i in items:
        if i is Ellipsis:
            skip = nd - n_real
            if in_d <= x.dim < in_d + skip:
                return Atoms(out_d + (x.dim - in_d), x.ids)
            in_d += skip
            out_d += skip
        elif i is None:
            out_d += 1
        elif isinstance(i, int):
            if in_d == x.dim:
                ctx.mark(x.ids, f"one channel selected at {ctx.where(node)}")
                return None
            in_d += 1
        elif isinstance(i, slice):
            if in_d == x.dim:
                if i == slice(None):
                    return Atoms(out_d, x.ids)
                ctx.mark(x.ids, f"channels sliced by index at {ctx.where(node)}")
                return Atoms(out_d, x.ids[i])
            in_d += 1
            out_d += 1
    return Atoms(out_d + (x.dim - in_d), x.ids)


def pad(ctx: Propagation, node: fx.Node) -> Atoms | None:
    xin = _first(ctx, node)
    x = ctx.atoms(xin)
    if x is None:
        return None
    nd = _ndim(ctx, xin)
    widths = list(_arg(node, 1, "pad"))
    padded = {nd - 1 - i // 2 for i in range(len(widths))}
    if x.dim not in padded:
        return x
    k = (nd - 1 - x.dim) * 2
    before, after = int(widths[k]), int(widths[k + 1])
    if before < 0 or after < 0:
        ctx.unknown(node, "negative padding of the channel dim")
        return None
    reason = f"zero channels padded in at {ctx.where(node)}"
    ids = [ctx.fixed(before, "pad", reason), x.ids, ctx.fixed(after, "pad", reason)]
    return Atoms(x.dim, torch.cat(ids))


def dropout_like(ctx: Propagation, node: fx.Node) -> Atoms | None:
    return passthrough(ctx, node)


# -- the table -------------------------------------------------------------------------------------------------
_register(
    [nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d], conv
)
_register([nn.Linear], linear)
_register(
    [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
     nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d],
    channel_norm,
)
_register([nn.GroupNorm], group_norm)
_register([nn.LayerNorm], layer_norm)
_register([nn.PReLU], prelu)
_register([nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
           "softmax", "log_softmax"], softmax)
_register(
    [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
     nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
     nn.Dropout3d, nn.AlphaDropout,
     F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
     F.hardtanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.sigmoid, F.tanh,
     torch.relu, torch.sigmoid, torch.tanh, torch.abs, torch.neg, torch.exp, torch.sqrt, torch.square,
     torch.clamp, torch.clip, torch.nn.functional.relu_, torch.relu_, operator.neg,
     "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg", "exp", "sqrt", "square", "clamp",
     "clamp_", "clip", "contiguous", "clone", "float", "double", "half", "bfloat16", "to", "type", "detach",
     "requires_grad_", "hardswish", "gelu", "silu"],
    passthrough,
)
_register(
    [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
     nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
     nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
     nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
     nn.ReplicationPad1d, nn.ReplicationPad2d,
     F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
     F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
     F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample],
    spatial_passthrough,
)
_register(
    [operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul, operator.isub,
     torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
     "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum"],
    elementwise,
)
_register([torch.flatten, "flatten", nn.Flatten], flatten)
_register(["view", "reshape", torch.reshape], reshape)
_register(["permute", torch.permute, "transpose", torch.transpose, "swapaxes", "t"], permute)
_register(["unsqueeze", torch.unsqueeze], unsqueeze)
_register(["squeeze", torch.squeeze], squeeze)
_register(["mean", torch.mean, "sum", torch.sum, "amax", torch.amax, "amin", torch.amin], reduction)
_register([torch.cat, torch.concat, torch.concatenate], cat)
_register([torch.chunk, "chunk", torch.split, "split"], chunk)
_register([operator.getitem], getitem)
_register([F.pad], pad)
_register(["size", "dim", "numel", getattr, operator.floordiv, operator.mod], metadata)
