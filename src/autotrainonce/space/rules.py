"""Rule lookup: find and run the channel rule of each graph node.

The rules are registered in the op table (:mod:`.ops`, :func:`~autotrainonce.space.register_op`), keyed by
module class, function (or custom ``torch.autograd.Function`` class) or Tensor-method name. Each rule takes the
propagation state and the node and returns the output's :class:`Atoms` (a tuple of them for tuple outputs, or
None when the output has no tracked channels). Anything without a rule is *unknown*: its channels become
unprunable, with one warning naming the op and the module. The rules themselves live in :mod:`.rules_channel`
and :mod:`.rules_shape`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.fx as fx
from torch import nn

from .ops import FUNCTION_RULES, METHOD_RULES, Rule, module_rule, register_op, update_op
from .propagate import Propagation

__all__ = ["register_op_rule", "FUNCTION_RULES", "METHOD_RULES", "apply_rule", "lookup", "Rule"]


def register_op_rule(target: Any, rule: Rule) -> None:
    """Register ``rule(ctx, node)`` for a module class, a function, a custom autograd.Function class, or a
    Tensor method name (str); a module class keeps its other registered parts (fixer, rebuild).

    The same as ``register_op(target, rule=rule)`` for functions and methods; for a module class prefer
    :func:`~autotrainonce.space.register_op`, which also says how surgery and ``compact.json`` handle it::

        from autotrainonce.space import register_op_rule
        from autotrainonce.space.rules_channel import passthrough
        register_op_rule(torch.special.expit, passthrough)
    """
    if isinstance(target, type) and issubclass(target, nn.Module):
        update_op(target, rule=rule)
    else:
        register_op(target, rule=rule)


def lookup(ctx: Propagation, node: fx.Node, extra: Mapping[Any, Rule] | None = None) -> Rule | None:
    """The rule for ``node``: ``extra`` (per-call rules) first, then the global table."""
    extra = extra or {}
    if node.op == "call_module":
        return module_rule(ctx.modules[str(node.target)], extra)
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
