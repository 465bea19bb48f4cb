"""The op-rule table: how each kind of module, function or Tensor method moves, ties, produces or consumes
channels.

One table, keyed by module class, function (or custom ``torch.autograd.Function`` class) or Tensor-method name.
Each rule takes the propagation state and the node and returns the output's :class:`Atoms` (a tuple of them
for tuple outputs, or None when the output has no tracked channels). Anything not in the table is *unknown*:
its channels become unprunable, with one warning naming the op and the module. The rules themselves live in
:mod:`.rules_channel` and :mod:`.rules_shape`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .propagate import Propagation
from .rules_channel import (
    attention_module,
    channel_norm,
    conv,
    elementwise,
    group_norm,
    layer_norm,
    linear,
    matmul,
    metadata,
    passthrough,
    prelu,
    reduction,
    sdpa,
    softmax,
    spatial_passthrough,
)
from .rules_shape import cat, chunk, flatten, getitem, pad, permute, reshape, squeeze, unsqueeze

__all__ = ["register_op_rule", "MODULE_RULES", "FUNCTION_RULES", "METHOD_RULES", "apply_rule", "Rule"]

Rule = Callable[[Propagation, fx.Node], Any]

MODULE_RULES: dict[type, Rule] = {}
FUNCTION_RULES: dict[Any, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}


def register_op_rule(target: Any, rule: Rule) -> None:
    """Register ``rule(ctx, node)`` for a module class, a function, a custom autograd.Function class, or a
    Tensor method name (str). A later registration replaces an earlier one.

    Example: a custom module whose forward is channel-wise (fx keeps only torch.nn modules as leaves, so this is
    needed for modules in ``torch.nn`` subpackages or for functions the default table lacks)::

        from autotrainonce.space import register_op_rule
        from autotrainonce.space.rules_channel import passthrough
        register_op_rule(torch.special.expit, passthrough)
    """
    if isinstance(target, str):
        METHOD_RULES[target] = rule
    elif isinstance(target, type) and issubclass(target, nn.Module):
        MODULE_RULES[target] = rule
    else:
        FUNCTION_RULES[target] = rule


def _register(targets: list[Any], rule: Rule) -> None:
    for t in targets:
        register_op_rule(t, rule)


def _module_rule(module: nn.Module, table: Mapping[type, Rule]) -> Rule | None:
    """The rule of the module's class, or of a base class whose forward the subclass does not override."""
    cls = type(module)
    if cls in table:
        return table[cls]
    for base in cls.__mro__[1:]:
        if base in table and cls.forward is base.forward:
            return table[base]
    return None


def lookup(ctx: Propagation, node: fx.Node, extra: Mapping[Any, Rule] | None = None) -> Rule | None:
    """The rule for ``node``: ``extra`` (per-call rules) first, then the global table."""
    extra = extra or {}
    if node.op == "call_module":
        module = ctx.modules[str(node.target)]
        modules = {k: v for k, v in extra.items() if isinstance(k, type) and issubclass(k, nn.Module)}
        return _module_rule(module, modules) or _module_rule(module, MODULE_RULES)
    if node.op == "call_method":
        return extra.get(str(node.target)) or METHOD_RULES.get(str(node.target))
    target = getattr(node.target, "ato_autograd_function", node.target)
    return extra.get(target) or FUNCTION_RULES.get(target)


def apply_rule(ctx: Propagation, node: fx.Node, extra: Mapping[Any, Rule] | None = None) -> Any:
    """Run the rule for ``node``; an op without one makes the channels it reads unprunable, with a warning."""
    rule = lookup(ctx, node, extra)
    if rule is None:
        if not ctx.input_atoms(node) and node.meta.get("ato.flops", 0) == 0:
            return None  # touches no tracked channel and costs nothing: nothing to say
        ctx.unknown(node)
        ctx.add_const(node)
        return None
    return rule(ctx, node)


# -- the table -------------------------------------------------------------------------------------------------
_register([nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d], conv)
_register([nn.Linear], linear)
_register(
    [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
     nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d],
    channel_norm,
)
_register([nn.GroupNorm], group_norm)
_register([nn.LayerNorm], layer_norm)
_register([nn.PReLU], prelu)
_register([nn.MultiheadAttention], attention_module)
_register([F.scaled_dot_product_attention], sdpa)
_register([operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm", "__matmul__"], matmul)
_register([nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
           "softmax", "log_softmax"], softmax)
_register(
    [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
     nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
     nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
     F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
     F.hardtanh, F.softplus, F.logsigmoid, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.sigmoid, F.tanh,
     torch.relu, torch.sigmoid, torch.tanh, torch.abs, torch.neg, torch.exp, torch.log, torch.sqrt,
     torch.rsqrt, torch.square, torch.erf, torch.clamp, torch.clip, torch.nn.functional.relu_, torch.relu_,
     operator.neg, operator.pos,
     "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg", "exp", "log", "sqrt", "rsqrt",
     "square", "erf", "clamp", "clamp_", "clip", "contiguous", "clone", "float", "double", "half", "bfloat16",
     "to", "type", "detach", "requires_grad_", "hardswish", "gelu", "silu"],
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
    [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.pow,
     operator.iadd, operator.imul, operator.isub, operator.itruediv,
     operator.gt, operator.ge, operator.lt, operator.le, operator.eq, operator.ne,
     torch.add, torch.sub, torch.mul, torch.div, torch.pow, torch.maximum, torch.minimum, torch.where,
     "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "maximum", "minimum", "masked_fill"],
    elementwise,
)
_register([torch.flatten, "flatten", nn.Flatten], flatten)
_register(["view", "reshape", torch.reshape], reshape)
_register(["permute", torch.permute, "transpose", torch.transpose, "swapaxes", torch.swapaxes, "t"], permute)
_register(["unsqueeze", torch.unsqueeze], unsqueeze)
_register(["squeeze", torch.squeeze], squeeze)
_register(["mean", torch.mean, "sum", torch.sum, "amax", torch.amax, "amin", torch.amin], reduction)
_register([torch.cat, torch.concat, torch.concatenate], cat)
_register([torch.chunk, "chunk", torch.split, "split"], chunk)
_register([operator.getitem], getitem)
_register([F.pad], pad)
_register(["size", "dim", "numel", getattr], metadata)
