"""Physical pruning: slice every member tensor to the kept channels and fix module attributes.

A table maps module types to an attribute fixer that runs after the tensors are sliced, so the compact model
is made of plain torch modules that need nothing from autotrainonce to run, save or export.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import SurgeryError
from .optimizer_state import retarget_optimizer

if TYPE_CHECKING:
    from .pruning_space import PruningSpace

__all__ = ["exact_math", "prune_model", "register_attribute_fixer", "max_output_diff"]

Fixer = Callable[[nn.Module, "PruningSpace", str, list], None]
ATTRIBUTE_FIXERS: dict[type, Fixer] = {}


def register_attribute_fixer(cls: type, fixer: Fixer) -> None:
    """Register ``fixer(module, space, path, masks)`` to update attributes of ``cls`` after slicing."""
    ATTRIBUTE_FIXERS[cls] = fixer


def _kept_in(space: PruningSpace, path: str, masks: list, default: int) -> int:
    pd = space.activations.get((path, "in"))
    return int(pd.kept(masks, soft=False)) if pd is not None else default


def _fix_conv(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    assert isinstance(m, nn.modules.conv._ConvNd)
    w = m.weight
    if m.transposed:
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        return
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise: groups follow the channels
        mult = m.out_channels // m.in_channels
        m.out_channels = w.shape[0]
        m.in_channels = m.groups = m.out_channels // mult
    else:
        m.out_channels = w.shape[0]
        m.in_channels = w.shape[1] * m.groups


def _fix_linear(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    m.out_features, m.in_features = m.weight.shape


def _fix_channel_norm(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    m.num_features = _kept_in(space, path, masks, m.num_features)


def _fix_group_norm(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    per_group = m.num_channels // m.num_groups
    m.num_channels = _kept_in(space, path, masks, m.num_channels)
    m.num_groups = m.num_channels // per_group


def _fix_prelu(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    m.num_parameters = m.weight.numel()


for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_attribute_fixer(_cls, _fix_conv)
register_attribute_fixer(nn.Linear, _fix_linear)
for _cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
             nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
    register_attribute_fixer(_cls, _fix_channel_norm)
register_attribute_fixer(nn.GroupNorm, _fix_group_norm)
register_attribute_fixer(nn.PReLU, _fix_prelu)


def _slice(t: torch.Tensor, dims: dict, masks: list) -> torch.Tensor:
    out = t
    for dim, pd in dims.items():
        keep = pd.keep_index(masks)
        if keep.numel() != out.shape[dim]:
            out = out.index_select(dim, keep.to(out.device))
    return out.contiguous()


def _emptied(space: PruningSpace, path: str, name: str, dims: dict, masks: list) -> str:
    groups = {
        space.groups[int(g)].name
        for pd in dims.values()
        if pd.keep_index(masks).numel() == 0
        for g in torch.unique(pd.gid[pd.gid >= 0])
    }
    return (
        f"the masks remove every channel of {path}.{name} (groups {sorted(groups)}); a layer cannot shrink to zero "
        "width. Keep at least one of its channels (a group tied through chunk/split can hold channels that this "
        "layer does not produce, so one kept channel per group is not always enough)."
    )


def prune_model(
    space: PruningSpace,
    model: nn.Module,
    masks: list,
    *,
    check: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module:
    """Implementation of :meth:`PruningSpace.prune`."""
    compact = copy.deepcopy(model)
    touched: set[str] = set()
    keep: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    with torch.no_grad():
        for (path, name), dims in space.param_dims.items():
            mod = compact.get_submodule(path)
            old = getattr(mod, name)
            if old is None:
                continue
            new = _slice(old.detach(), dims, masks)
            if new.shape == old.shape:
                continue
            if new.numel() == 0:
                raise ValueError(_emptied(space, path, name, dims, masks))
            keep[(path, name)] = {
                d: idx for d, pd in dims.items() if (idx := pd.keep_index(masks)).numel() != old.shape[d]
            }
            if isinstance(old, nn.Parameter):
                setattr(mod, name, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                mod.register_buffer(name, new, persistent=name not in mod._non_persistent_buffers_set)
            touched.add(path)
        # activations keyed (module path, "in"/"out") name modules; other keys (matmul costs) name graph nodes
        for path in sorted(touched | {p for p, kind in space.activations if kind in ("in", "out")}):
            mod = compact.get_submodule(path)
            fixer = ATTRIBUTE_FIXERS.get(type(mod))
            if fixer is not None:
                fixer(mod, space, path, masks)
    if check:
        diff, scale = max_output_diff(space, model, compact, masks)
        if diff > 1e-4 * max(1.0, scale):
            raise SurgeryError(
                f"the compact model differs from the masked model by {diff:.3g} (output scale {scale:.3g}) on the "
                "example inputs; this is a bug in a pruning rule — please report it with the model definition"
            )
    if optimizer is not None:
        retarget_optimizer(optimizer, model, compact, keep)
    return compact


@contextlib.contextmanager
def exact_math() -> Iterator[None]:
    """Disable TF32 on CUDA while comparing models: its 10-bit mantissa alone exceeds a 1e-4 tolerance."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return []


def max_output_diff(
    space: PruningSpace, model: nn.Module, compact: nn.Module, masks: list, inputs: tuple | None = None
) -> tuple[float, float]:
    """(max |compact(x) - masked(x)|, max |masked(x)|) in eval mode on ``inputs`` (default: example inputs)."""
    inputs = space.example_inputs if inputs is None else inputs
    modes = [(m, m.training) for m in (*model.modules(), *compact.modules())]
    model.eval()
    compact.eval()
    try:
        with torch.no_grad(), exact_math():
            with space.masked(model, masks):
                ref = _flat(model(*inputs))
            got = _flat(compact(*inputs))
    finally:
        for m, flag in modes:
            m.training = flag
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return float("inf"), 0.0
    diff = max((float((a - b).abs().max()) for a, b in zip(ref, got) if a.numel()), default=0.0)
    scale = max((float(a.abs().max()) for a in ref if a.numel()), default=0.0)
    return diff, scale
