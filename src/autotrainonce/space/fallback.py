"""Fallback for models torch.fx cannot trace as a whole: analyse the submodules that do trace.

fx fails on data-dependent Python control flow anywhere in ``forward`` (fx traces through user modules, so one
``if x.sum() > 0`` deep inside makes the whole model fail). Most of such a model is still plain blocks. We run
the model once, recording each child's inputs, and trace every child that is called exactly once with tensor
inputs. A child that does not trace is split into its own children, and so on. Inside a traced child the
usual rules apply; its inputs and outputs are kept (the code around it is not understood), so channels that
live entirely inside one child are prunable. FLOPs of everything outside the traced children are counted
once on the whole model and added as a constant, which keeps the cost exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import TraceError
from ..graph.tracing import FLOPS, annotate_shapes, trace
from .propagate import Propagation

__all__ = ["discover_by_parts"]

Propagate = Callable[[fx.GraphModule, str], Propagation]


def _record_calls(model: nn.Module, inputs: tuple, targets: dict[str, nn.Module]) -> tuple[int, dict[str, list]]:
    """Run ``model`` once (eval, no grad); return its FLOPs and, per target path, the inputs of every call."""
    calls: dict[str, list] = {path: [] for path in targets}
    handles = []
    for path, module in targets.items():

        def hook(_m: nn.Module, args: tuple, kwargs: dict, path: str = path) -> None:
            calls[path].append((args, kwargs))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes.items():
            m.training = flag
    return counter.get_total_flops(), calls


Leaf = Callable[[nn.Module], bool]


def _is_leaf(module: nn.Module, leaf: Leaf | None) -> bool:
    """A single layer (torch.nn, or one with a registered rule): no channels of its own between input and output."""
    if leaf is not None and leaf(module):
        return True
    return type(module).__module__.startswith("torch.nn") and not list(module.children())


def discover_by_parts(
    model: nn.Module, inputs: tuple, propagate: Propagate, leaf: Leaf | None = None
) -> tuple[Propagation, list[str]]:
    """Propagation state of every maximal submodule that traces, merged; and the traced paths.

    ``leaf(module)`` says which modules stay single nodes when tracing (see :func:`..graph.tracing.trace`).
    """
    merged = Propagation(None)
    traced: list[str] = []
    pending: list[tuple[str, nn.Module]] = [("", model)]
    total_flops, inside_flops = None, 0
    while pending:
        children = {
            f"{prefix}.{name}" if prefix else name: child
            for prefix, module in pending
            for name, child in module.named_children()
        }
        flops, calls = _record_calls(model, inputs, children)
        total_flops = flops if total_flops is None else total_flops
        pending = []
        for path, child in children.items():
            seen = calls[path]
            if len(seen) != 1 or _is_leaf(child, leaf) or not any(True for _ in child.parameters()):
                continue  # unused, shared, a single layer or stateless: nothing inside to prune
            args, kwargs = seen[0]
            if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
                pending.append((path, child))  # cannot replay this call as a graph: look one level down
                continue
            try:
                gm = trace(child, leaf)
                annotate_shapes(gm, args)
            except TraceError:
                pending.append((path, child))
                continue
            merged.absorb(propagate(gm, path))
            inside_flops += sum(int(n.meta.get(FLOPS, 0)) for n in gm.graph.nodes)
            traced.append(path)
    merged.const_flops += (total_flops or 0) - inside_flops
    return merged, traced


