"""The pruning space of a model: channel groups, exact cost, gates and physical surgery.

Public contract (other layers and external tools rely on these names)::

    space = discover(model, example_inputs)   # PruningSpace; the model is not modified
    space.groups                              # list[ChannelGroup]
    space.flops(masks=None) -> int            # MACs of conv/linear/matmul for the kept channels
    space.params(masks=None) -> int           # parameters of the compact model
    space.soft_flops(masks) / soft_params(masks) -> Tensor   # differentiable in float masks
    with space.masked(model, masks): ...      # gates on; removed on exit
    compact = space.prune(model, masks)       # new, physically smaller nn.Module
    space.prune_(model, masks, optimizer=opt) # the same model object, cut in place (optimizer state sliced)

``masks`` is a list aligned with ``space.groups``: one bool (or float) tensor of shape ``(group.size,)`` per
group, or None for "keep all". Unprunable groups must be None or all-kept.

What the library knows about each op (channel rule and cost, attribute fixer, ``compact.json`` description)
is one entry of the op table, :func:`register_op` (``space/ops.py``).
"""

from __future__ import annotations

from .discover import discover
from .groups import ChannelGroup, GatePoint, Member
from .ops import register_op, unregister_op
from .pruning_space import PruningSpace
from .rules import register_op_rule
from .surgery import max_output_diff, register_attribute_fixer

__all__ = [
    "ChannelGroup",
    "GatePoint",
    "Member",
    "PruningSpace",
    "discover",
    "max_output_diff",
    "register_attribute_fixer",
    "register_op",
    "register_op_rule",
    "unregister_op",
]
