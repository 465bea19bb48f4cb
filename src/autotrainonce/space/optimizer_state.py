"""Move an optimizer onto a pruned model in place, slicing its per-parameter state to the kept channels.

In place, because LR schedulers and gradient scalers hold a reference to the optimizer object and must keep
working after the cut.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import SurgeryError
from .slicing import slice_dims

__all__ = ["retarget_optimizer", "remap_optimizer_", "check_sliceable"]

Keep = dict[tuple[str, str], dict[int, torch.Tensor]]


def retarget_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, compact: nn.Module, keep: Keep) -> None:
    """Point ``optimizer`` at ``compact``'s parameters; slice state of pruned parameters along the cut dims.

    ``keep[(module, name)]`` gives, per cut dimension, the kept positions. State tensors shaped like their
    parameter are sliced (SGD momentum, Adam/AdamW ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``); scalars such
    as Adam's ``step`` are kept; any other state of a pruned parameter cannot be sliced safely and is refused.
    Parameters that were not pruned keep their state untouched (moved to the compact model's tensor).
    """
    compact_params = dict(compact.named_parameters(remove_duplicate=False))
    mapping: dict[int, tuple[nn.Parameter, dict[int, torch.Tensor]]] = {}
    for qual, p in model.named_parameters(remove_duplicate=False):
        path, _, name = qual.rpartition(".")
        mapping[id(p)] = (compact_params[qual], keep.get((path, name), {}))

    remap_optimizer_(optimizer, mapping)


def remap_optimizer_(
    optimizer: torch.optim.Optimizer, mapping: dict[int, tuple[torch.Tensor, dict[int, torch.Tensor]]]
) -> None:
    """Replace, in place, each parameter ``p`` of ``optimizer`` with ``mapping[id(p)] = (new, {dim: kept})``,
    its state re-keyed to ``new`` and sliced along the cut dims. Parameters not in ``mapping`` keep theirs.

    Everything is checked before anything changes, so a refusal leaves the optimizer as it was.
    """
    check_sliceable(optimizer, {pid: cut for pid, (_, cut) in mapping.items()})
    new_state: dict[Any, Any] = {}
    for group in optimizer.param_groups:
        new_params = []
        for p in group["params"]:
            if id(p) not in mapping:  # not part of this model: leave it alone
                new_params.append(p)
                if p in optimizer.state:
                    new_state[p] = optimizer.state[p]
                continue
            q, cut = mapping[id(p)]
            new_params.append(q)
            if p not in optimizer.state:
                continue
            state = {}
            for key, value in optimizer.state[p].items():
                if isinstance(value, torch.Tensor) and cut and value.shape == p.shape:
                    state[key] = slice_dims(value, cut)
                else:
                    state[key] = value
            new_state[q] = state
        group["params"] = new_params
    optimizer.state.clear()
    optimizer.state.update(new_state)


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def check_sliceable(optimizer: torch.optim.Optimizer, cuts: dict[int, dict[int, torch.Tensor]]) -> None:
    """Raise SurgeryError if the state of a parameter about to be cut cannot be sliced along its cut dims.

    ``cuts[id(param)] = {dim: kept positions}``; parameters without cut dims are not checked.
    """
    for p in _params(optimizer):
        if not cuts.get(id(p)):
            continue
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.shape != p.shape and value.dim() > 0:
                raise SurgeryError(
                    f"cannot slice state {key!r} of {type(optimizer).__name__} (shape {tuple(value.shape)} for a "
                    f"parameter of shape {tuple(p.shape)}); prune without optimizer= and build a new "
                    f"{type(optimizer).__name__} for the compact model"
                )
            if not isinstance(value, (torch.Tensor, int, float, bool)) and value is not None:
                raise SurgeryError(
                    f"cannot slice state {key!r} ({type(value).__name__}) of {type(optimizer).__name__}; "
                    "prune without optimizer= and build a new optimizer for the compact model"
                )
