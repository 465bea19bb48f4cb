"""The op table: everything the library knows about one kind of op, registered in one place.

Per module class one :class:`OpSpec` holds

- ``rule``: how the op moves, ties, produces or consumes channels, and thereby its cost (:mod:`.rules_channel`,
  :mod:`.rules_shape`). A module class with a rule is also kept as one node when tracing, like torch.nn layers;
- ``fix_attributes``: what surgery updates on the module after slicing its tensors (:mod:`.fixers`);
- ``rebuild``: the constructor arguments, stored as attributes of the same name, that describe the module in
  ``compact.json`` so that :func:`autotrainonce.export.load_compact` can build it again.

Functions, custom ``torch.autograd.Function`` classes and Tensor-method names have a rule only (nothing to fix
or rebuild); they are registered through the same :func:`register_op`. Anything without a rule is *unknown*
to the propagation: its channels become unprunable, with one warning.
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .fixers import fix_channel_norm, fix_conv, fix_group_norm, fix_linear, fix_prelu
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

if TYPE_CHECKING:
    from .propagate import Propagation
    from .pruning_space import PruningSpace

__all__ = [
    "FUNCTION_RULES",
    "METHOD_RULES",
    "MODULE_OPS",
    "Fixer",
    "OpSpec",
    "Rule",
    "module_fixer",
    "module_rule",
    "op_spec",
    "register_op",
    "unregister_op",
]

Rule = Callable[["Propagation", fx.Node], Any]
Fixer = Callable[[nn.Module, "PruningSpace", str, list], None]


@dataclass(frozen=True)
class OpSpec:
    """What the library knows about one module class (each part None when it does not apply)."""

    rule: Rule | None = None
    fix_attributes: Fixer | None = None
    rebuild: tuple[str, ...] | None = None


MODULE_OPS: dict[type[nn.Module], OpSpec] = {}
FUNCTION_RULES: dict[Any, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}


def _is_module_class(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, nn.Module)


def _check_rebuild(cls: type[nn.Module], rebuild: Sequence[str]) -> tuple[str, ...]:
    # A bare string would be read letter by letter; a name the constructor does not take would only fail when
    # the file is loaded, far from the mistake.
    if isinstance(rebuild, str) or not all(isinstance(n, str) for n in rebuild):
        raise TypeError(f"register_op({cls.__name__}): rebuild must be a tuple of argument names, got {rebuild!r}")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no introspectable signature: trust the names
        return tuple(rebuild)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = [n for n in rebuild if n not in params]
        if unknown:
            raise ValueError(
                f"register_op({cls.__name__}): rebuild names {unknown}, which {cls.__name__}() does not take "
                f"(its arguments: {', '.join(params)})"
            )
    return tuple(rebuild)


def register_op(
    target: Any,
    *,
    rule: Rule | None = None,
    fix_attributes: Fixer | None = None,
    rebuild: Sequence[str] | None = None,
) -> None:
    """Register what the library needs to know about an op; a later registration replaces an earlier one.

    ``target`` is a module class, a function, a custom ``torch.autograd.Function`` class or a Tensor-method
    name (str). For a module class the entry holds exactly the parts given:

    - ``rule(ctx, node)``: the channel rule, which also records the op's cost (see docs/pruning-space.md).
      A module class with a rule stays one node when tracing, and the rule also covers subclasses that do
      not override ``forward``;
    - ``fix_attributes(module, space, path, masks)``: runs after surgery sliced the module's tensors, to
      update attributes such as ``out_channels`` (ready-made ones in :mod:`autotrainonce.space.fixers`);
    - ``rebuild``: names of constructor arguments stored as attributes of the same name; ``compact.json``
      records their values (a tensor-or-None argument such as ``bias`` as a bool) and the class as
      ``module:qualname``, and ``load_compact`` rebuilds the module if the class is registered in the
      loading process.

    Functions and method names take ``rule`` only.
    """
    if _is_module_class(target):
        if rule is None and fix_attributes is None and rebuild is None:
            raise ValueError(f"register_op({target.__name__}): give rule=, fix_attributes= and/or rebuild=")
        spec = OpSpec(rule, fix_attributes, None if rebuild is None else _check_rebuild(target, rebuild))
        # pop first: the table's order is the order of the latest registrations (export resolves a class name
        # that two registered classes share, e.g. a class redefined in a notebook, to the newer one)
        MODULE_OPS.pop(target, None)
        MODULE_OPS[target] = spec
        return
    if fix_attributes is not None or rebuild is not None:
        raise TypeError(
            f"register_op({target!r}): only module classes have attributes to fix or a constructor to rebuild"
        )
    if rule is None:
        raise ValueError(f"register_op({target!r}): a function or method needs rule=")
    if isinstance(target, str):
        METHOD_RULES[target] = rule
    elif callable(target):
        FUNCTION_RULES[target] = rule
    else:
        raise TypeError(f"register_op: expected a module class, function or method name, got {target!r}")


def unregister_op(target: Any) -> None:
    """Forget whatever is registered for ``target`` (nothing happens when nothing is)."""
    if _is_module_class(target):
        MODULE_OPS.pop(target, None)
    elif isinstance(target, str):
        METHOD_RULES.pop(target, None)
    else:
        FUNCTION_RULES.pop(target, None)


def update_op(cls: type[nn.Module], **parts: Any) -> None:
    """Set some parts of ``cls``'s entry and keep the others (what the older one-part registrations do)."""
    MODULE_OPS[cls] = dataclasses.replace(MODULE_OPS.get(cls, OpSpec()), **parts)


def op_spec(target: Any) -> OpSpec | None:
    """The entry registered for exactly ``target`` (a function or method gets an OpSpec with its rule)."""
    if _is_module_class(target):
        return MODULE_OPS.get(target)
    rule = METHOD_RULES.get(target) if isinstance(target, str) else FUNCTION_RULES.get(target)
    return None if rule is None else OpSpec(rule=rule)


def _inherited(cls: type, part: Callable[[type], Any]) -> Any:
    """``part(cls)``, else ``part(base)`` of the nearest base class whose ``forward`` ``cls`` does not override."""
    for base in cls.__mro__:
        if base is cls or getattr(cls, "forward", None) is getattr(base, "forward", None):
            found = part(base)
            if found is not None:
                return found
    return None


def _part(name: str) -> Callable[[type], Any]:
    def get(cls: type) -> Any:
        spec = MODULE_OPS.get(cls)
        return None if spec is None else getattr(spec, name)

    return get


def module_rule(module: nn.Module, extra: Mapping[Any, Rule] | None = None) -> Rule | None:
    """The rule for ``module``: per-call ``extra`` rules first, then the table (base classes included)."""
    if extra:
        found = _inherited(type(module), lambda c: extra.get(c) if _is_module_class(c) else None)
        if found is not None:
            return found
    return _inherited(type(module), _part("rule"))


def module_fixer(module: nn.Module) -> Fixer | None:
    """The attribute fixer for ``module`` (base classes whose forward it keeps included, as for rules)."""
    return _inherited(type(module), _part("fix_attributes"))


# -- the built-in table -----------------------------------------------------------------------------------------
_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
         "padding_mode")  # fmt: skip
_NORM = ("num_features", "eps", "momentum", "affine", "track_running_stats")

for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_op(_cls, rule=conv, fix_attributes=fix_conv, rebuild=_CONV)
for _cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_op(_cls, rule=conv, fix_attributes=fix_conv, rebuild=(*_CONV, "output_padding"))
register_op(nn.Linear, rule=linear, fix_attributes=fix_linear, rebuild=("in_features", "out_features", "bias"))
for _cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
             nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):  # fmt: skip
    register_op(_cls, rule=channel_norm, fix_attributes=fix_channel_norm, rebuild=_NORM)
register_op(nn.GroupNorm, rule=group_norm, fix_attributes=fix_group_norm,
            rebuild=("num_groups", "num_channels", "eps", "affine"))  # fmt: skip
register_op(nn.PReLU, rule=prelu, fix_attributes=fix_prelu, rebuild=("num_parameters",))
# Known, but their channels are kept (LayerNorm, attention) or pass unchanged: nothing to fix or rebuild.
register_op(nn.LayerNorm, rule=layer_norm)
register_op(nn.MultiheadAttention, rule=attention_module)


def _rules(targets: list[Any], rule: Rule) -> None:
    for t in targets:
        register_op(t, rule=rule)


_rules([F.scaled_dot_product_attention], sdpa)
_rules([operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm", "__matmul__"], matmul)
_rules([nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
        "softmax", "log_softmax"], softmax)  # fmt: skip
_rules(
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
)  # fmt: skip
_rules(
    [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
     nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
     nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
     nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
     nn.ReplicationPad1d, nn.ReplicationPad2d,
     F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
     F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
     F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample],
    spatial_passthrough,
)  # fmt: skip
_rules(
    [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.pow,
     operator.iadd, operator.imul, operator.isub, operator.itruediv,
     operator.gt, operator.ge, operator.lt, operator.le, operator.eq, operator.ne,
     torch.add, torch.sub, torch.mul, torch.div, torch.pow, torch.maximum, torch.minimum, torch.where,
     "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "maximum", "minimum", "masked_fill"],
    elementwise,
)  # fmt: skip
_rules([torch.flatten, "flatten", nn.Flatten], flatten)
_rules(["view", "reshape", torch.reshape], reshape)
_rules(["permute", torch.permute, "transpose", torch.transpose, "swapaxes", torch.swapaxes, "t"], permute)
_rules(["unsqueeze", torch.unsqueeze], unsqueeze)
_rules(["squeeze", torch.squeeze], squeeze)
_rules(["mean", torch.mean, "sum", torch.sum, "amax", torch.amax, "amin", torch.amin], reduction)
_rules([torch.cat, torch.concat, torch.concatenate], cat)
_rules([torch.chunk, "chunk", torch.split, "split"], chunk)
_rules([operator.getitem], getitem)
_rules([F.pad], pad)
_rules(["size", "dim", "numel", getattr], metadata)
