"""Trace a model with torch.fx and annotate every node with its output shape and exact forward FLOPs.

The annotations live under ``node.meta["ato.shape"]`` (a ``torch.Size``, a tuple of them for tuple outputs, or
None for non-tensors) and ``node.meta["ato.flops"]`` (FLOPs that ``torch.utils.flop_counter`` counts for that
node alone). Later passes read these keys and never edit the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import TraceError

__all__ = ["annotate_shapes", "node_module_path", "trace", "as_input_tuple"]

SHAPE = "ato.shape"
FLOPS = "ato.flops"


def as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """Normalise ``example_inputs`` (a tensor or a sequence of positional inputs) to a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
        return tuple(example_inputs)
    raise TypeError(
        f"example_inputs must be a tensor or a tuple of positional inputs, got {type(example_inputs).__name__}"
    )


def _function_leaf(cls: type) -> Any:
    """A plain function calling ``cls.apply``: the graph target standing for a custom autograd.Function."""

    def apply(*args: Any, **kwargs: Any) -> Any:
        return cls.apply(*args, **kwargs)

    apply.__name__ = f"{cls.__name__}_apply"
    apply.__qualname__ = apply.__name__
    apply.__module__ = cls.__module__
    apply.ato_autograd_function = cls  # type: ignore[attr-defined]  # read by the op rules
    return apply


class _Tracer(fx.Tracer):
    """fx tracer that keeps custom ``torch.autograd.Function``s, and modules ``leaf`` accepts, as leaf calls.

    Plain fx runs a Function's forward on proxies, which loses its custom backward from the graph's point of
    view and fails outright when forward leaves torch (numpy, C extensions). As a leaf, the function is one
    node that the op rules do not know, so its channels stay unprunable and a warning names it.
    fx keeps only torch.nn layers as leaves; a user's layer that has an op rule must stay one node too, or
    its rule would never see it.
    """

    def __init__(self, leaf: Callable[[nn.Module], bool] | None = None) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or (self.leaf is not None and self.leaf(m))

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        original = torch.autograd.Function.__dict__["apply"]
        tracer = self
        leaves: dict[type, Any] = {}

        def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
            found: list[bool] = []
            torch.utils._pytree.tree_map(lambda v: found.append(isinstance(v, fx.Proxy)), (args, kwargs))
            if not any(found):
                return original.__func__(cls, *args, **kwargs)
            leaf = leaves.setdefault(cls, _function_leaf(cls))
            return tracer.create_proxy("call_function", leaf, args, kwargs)

        # Function.apply is a classmethod looked up on each subclass, so one class attribute covers them all;
        # it is restored before trace returns.
        torch.autograd.Function.apply = classmethod(apply)  # type: ignore[method-assign, assignment]
        try:
            return super().trace(root, concrete_args)
        finally:
            torch.autograd.Function.apply = original  # type: ignore[method-assign]


def trace(model: nn.Module, leaf: Callable[[nn.Module], bool] | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (torch.nn modules, custom autograd Functions and modules for which
    ``leaf(module)`` is true stay leaves).

    Raises TraceError naming the cause.
    """
    try:
        graph = _Tracer(leaf).trace(model)
        name = type(model).__name__
        return fx.GraphModule(model, graph, name)
    except Exception as e:  # fx raises many kinds; all mean "cannot trace this forward"
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}. "
            "Data-dependent Python control flow in forward() is the usual cause; move it into a leaf module "
            "or make it depend only on shapes."
        ) from e


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(v.shape if isinstance(v, torch.Tensor) else None for v in value)
    return None


class _ShapeFlopsInterpreter(fx.Interpreter):
    """Runs the graph once, recording each node's output shape and the FLOPs counted while it ran."""

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode) -> None:
        super().__init__(gm)
        self.counter = counter

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops()
        try:
            result = super().run_node(n)
        except Exception as e:
            raise TraceError(
                f"running traced node {n.format_node()} on the example inputs failed: {type(e).__name__}: {e}. "
                "Check that example_inputs has the shape and dtype the model expects."
            ) from e
        n.meta[SHAPE] = _shape_of(result)
        n.meta[FLOPS] = self.counter.get_total_flops() - before
        return result


def annotate_shapes(gm: fx.GraphModule, example_inputs: Any) -> Any:
    """Run ``gm`` on ``example_inputs`` in eval mode without gradients; annotate nodes; return the output.

    Eval mode keeps BatchNorm running statistics untouched, so the user's model is not modified.
    """
    inputs = as_input_tuple(example_inputs)
    was_training = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = _ShapeFlopsInterpreter(gm, counter).run(*inputs)
    finally:
        for m, flag in was_training.items():
            m.training = flag
    return out


def node_module_path(node: fx.Node) -> str:
    """The dotted path of the module a node belongs to (its own target for call_module), for messages."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        last = list(stack.values())[-1]
        path = last[0] if isinstance(last, tuple) else str(last)
        return str(path)
    return "<model>"
