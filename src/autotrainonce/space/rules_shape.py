"""Op rules for ops that move channels between dims or tensors: flatten, view, permute, (un)squeeze, cat,
chunk/split, indexing and padding. See :mod:`.rules_channel` for the rule contract.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from .propagate import Atoms, Propagation, arg
from .rules_channel import elementwise

__all__ = ["cat", "chunk", "flatten", "getitem", "pad", "permute", "reshape", "squeeze", "unsqueeze"]


def flatten(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Flattening the channel dim with the dims after it gives each channel a run of positions."""
    xin = ctx.first(node)
    x = ctx.atoms(xin)
    shape = ctx.shape(xin)
    if x is None or shape is None:
        return None
    nd = len(shape)
    if node.op == "call_module":
        m = ctx.modules[str(node.target)]
        start, end = m.start_dim, m.end_dim
    else:
        start, end = arg(node, 1, "start_dim", 0), arg(node, 2, "end_dim", -1)
    start, end = start % nd, end % nd
    d = x.dim
    if d < start:
        return x
    if d > end:
        return Atoms(d - (end - start), x.ids)
    if all(shape[i] == 1 for i in range(start, d)):
        inner = math.prod(shape[d + 1 : end + 1])
        return Atoms(start, x.ids.repeat_interleave(inner))
    ctx.keep(node, "flatten merging dims before the channels")
    return None


def reshape(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """view/reshape keeping the channel dim whole (possibly merged with the dims after it, like flatten)."""
    xin = ctx.first(node)
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
        ctx.keep(node, f"{node.target} splitting or moving the channel dim")
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
    """permute/transpose/t: the channels move with their dim."""
    xin = ctx.first(node)
    x = ctx.atoms(xin)
    if x is None:
        return None
    nd = ctx.ndim(xin)
    if node.target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes):
        a, b = arg(node, 1, "dim0") % nd, arg(node, 2, "dim1") % nd
        d = b if x.dim == a else a if x.dim == b else x.dim
        return Atoms(d, x.ids)
    if node.target == "t":
        return Atoms(nd - 1 - x.dim, x.ids)
    dims = node.args[1:] if node.op == "call_method" else (arg(node, 1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if "dims" in node.kwargs:
        dims = tuple(node.kwargs["dims"])
    perm = [int(p) % nd for p in dims]
    return Atoms(perm.index(x.dim), x.ids)


def unsqueeze(ctx: Propagation, node: fx.Node) -> Atoms | None:
    x = ctx.atoms(ctx.first(node))
    if x is None:
        return None
    nd_out = ctx.ndim(node)
    dim = arg(node, 1, "dim") % nd_out
    return Atoms(x.dim + 1 if dim <= x.dim else x.dim, x.ids)


def squeeze(ctx: Propagation, node: fx.Node) -> Atoms | None:
    xin = ctx.first(node)
    x = ctx.atoms(xin)
    s_in, s_out = ctx.shape(xin), ctx.shape(node)
    if x is None or s_in is None or s_out is None:
        return None
    removed = [i for i in range(len(s_in)) if s_in[i] == 1]
    dim = arg(node, 1, "dim")
    if dim is not None:
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        removed = [i for i in (int(v) % len(s_in) for v in dims) if s_in[i] == 1]
    if x.dim in removed:  # a single channel squeezed away: keep it
        ctx.mark(x.ids, f"squeezed at {ctx.where(node)}")
        return None
    return Atoms(x.dim - sum(1 for i in removed if i < x.dim), x.ids)


def cat(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Concat along the channel dim joins the operands' channels; along another dim it ties them."""
    tensors = list(arg(node, 0, "tensors"))
    if not any(ctx.atoms(t) is not None for t in tensors):
        return None
    out_shape = ctx.shape(node)
    nd = len(out_shape) if out_shape is not None else 0
    dim = int(arg(node, 1, "dim", 0)) % nd
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
    if dim not in dims:
        return elementwise(ctx, node)
    ctx.keep(node, "concat of tensors with channels on different dims")
    return None


def chunk(ctx: Propagation, node: fx.Node) -> tuple[Atoms | None, ...] | None:
    """chunk/split into equal parts along the channel dim ties channel k of every part."""
    xin = ctx.first(node)
    x = ctx.atoms(xin)
    outs = node.meta.get("ato.shape")
    if x is None or not isinstance(outs, tuple):
        return None
    nd = ctx.ndim(xin)
    dim = int(arg(node, 2, "dim", 0)) % nd
    if dim != x.dim:
        return tuple(Atoms(x.dim, x.ids) for _ in outs)
    sizes = [s[dim] for s in outs]
    if node.target in ("split", torch.split):
        # split sizes are literal channel counts unless computed from the tensor's own size at run time
        size_arg = arg(node, 1, "split_size_or_sections", arg(node, 1, "split_size"))
        if not isinstance(size_arg, fx.Node):
            ctx.mark(x.ids, f"split into literal sizes at {ctx.where(node)}")
    elif len(outs) != arg(node, 1, "chunks"):  # chunk(n) gave fewer parts: their count depends on the width
        ctx.mark(x.ids, f"chunk count depends on the width at {ctx.where(node)}")
    if len(set(sizes)) != 1:
        ctx.mark(x.ids, f"unequal chunks at {ctx.where(node)}")
    parts = list(torch.split(x.ids, sizes))
    if len(set(sizes)) == 1:
        for p in parts[1:]:
            ctx.union(parts[0], p)
    return tuple(Atoms(dim, p) for p in parts)


def getitem(ctx: Propagation, node: fx.Node) -> Atoms | None:
    """Picking one output of a tuple, or basic indexing (ints, slices, None, ...) of a tensor."""
    src, idx = node.args[0], node.args[1]
    if isinstance(src, fx.Node) and isinstance(src.meta.get("ato.atoms"), tuple):
        return src.meta["ato.atoms"][idx]
    x = ctx.atoms(src)
    if x is None:
        return None
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in items):
        ctx.keep(node, "tensor indexing")
        return None
    nd = ctx.ndim(src)
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
    """F.pad: constant channels padded in are fixed; reflect/replicate padding copies channels, so keep them."""
    xin = ctx.first(node)
    x = ctx.atoms(xin)
    if x is None:
        return None
    nd = ctx.ndim(xin)
    widths = list(arg(node, 1, "pad"))
    padded = {nd - 1 - i // 2 for i in range(len(widths))}
    if x.dim not in padded:
        return x
    k = (nd - 1 - x.dim) * 2
    before, after = int(widths[k]), int(widths[k + 1])
    if before < 0 or after < 0:
        ctx.keep(node, "channels cropped by negative padding")
        return None
    if arg(node, 2, "mode", "constant") != "constant":
        ctx.keep(node, "channels copied by non-constant padding")
        return x
    reason = f"constant channels padded in at {ctx.where(node)}"
    ids = [ctx.fixed(before, "pad", reason), x.ids, ctx.fixed(after, "pad", reason)]
    return Atoms(x.dim, torch.cat(ids))
