"""Physical pruning: slice every member tensor to the kept channels and fix module attributes.

The op table (:mod:`.ops`) gives each module type an attribute fixer (:mod:`.fixers`) that runs after the
tensors are sliced, so the compact model is made of the user's own classes and plain torch modules with
consistent attributes, needing nothing from autotrainonce to run, save or export.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import SurgeryError
from .ops import Fixer, module_fixer, update_op
from .optimizer_state import check_sliceable, remap_optimizer_, retarget_optimizer
from .slicing import slice_dims

if TYPE_CHECKING:
    from .pruning_space import PruningSpace

__all__ = ["exact_math", "prune_model", "prune_model_", "register_attribute_fixer", "max_output_diff", "in_place_blocker"]


def register_attribute_fixer(cls: type[nn.Module], fixer: Fixer) -> None:
    """Register ``fixer(module, space, path, masks)`` to update attributes of ``cls`` after slicing.

    Sets only the fixer part of ``cls``'s op-table entry; :func:`~autotrainonce.space.register_op` registers a
    module class's rule, fixer and rebuild description together.
    """
    update_op(cls, fix_attributes=fixer)


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


Keep = dict[int, torch.Tensor]  # cut dimension -> kept positions


def _plan(
    space: PruningSpace, model: nn.Module, masks: list
) -> list[tuple[nn.Module, str, torch.Tensor, torch.Tensor, Keep]]:
    """(module, attribute, old tensor, sliced tensor, kept positions per cut dim) for every tensor that shrinks.

    Computed before anything changes, so that a refusal (a layer emptied, say) leaves the model as it was.
    A tensor reachable under two names (tied weights) is planned once.
    """
    plan = []
    seen: set[int] = set()
    with torch.no_grad():
        for (path, name), dims in space.param_dims.items():
            mod = model.get_submodule(path)
            old = getattr(mod, name)
            if old is None or id(old) in seen:
                continue
            keep = {d: idx for d, pd in dims.items() if (idx := pd.keep_index(masks)).numel() != old.shape[d]}
            if not keep:  # nothing of this tensor is cut
                continue
            new = slice_dims(old.detach(), keep)
            if new.numel() == 0:
                raise ValueError(_emptied(space, path, name, dims, masks))
            seen.add(id(old))
            plan.append((mod, name, old, new, keep))
    return plan


def _fix_attributes(space: PruningSpace, model: nn.Module, touched: set[str], masks: list) -> None:
    # activations keyed (module path, "in"/"out") name modules; other keys (matmul costs) name graph nodes
    for path in sorted(touched | {p for p, kind in space.activations if kind in ("in", "out")}):
        mod = model.get_submodule(path)
        fixer = module_fixer(mod)
        if fixer is not None:
            fixer(mod, space, path, masks)


def _check_equal(diff: float, scale: float) -> None:
    if diff > 1e-4 * max(1.0, scale):
        raise SurgeryError(
            f"the compact model differs from the masked model by {diff:.3g} (output scale {scale:.3g}) on the "
            "example inputs; this is a bug in a pruning rule — please report it with the model definition"
        )


def prune_model(
    space: PruningSpace,
    model: nn.Module,
    masks: list,
    *,
    check: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module:
    """Implementation of :meth:`PruningSpace.prune` (a compact copy; ``model`` is untouched)."""
    compact = copy.deepcopy(model)
    plan = _plan(space, compact, masks)
    keep: dict[tuple[str, str], Keep] = {}
    paths = {id(m): p for p, m in compact.named_modules(remove_duplicate=False)}
    touched: set[str] = set()
    with torch.no_grad():
        for mod, name, old, new, cut in plan:
            path = paths[id(mod)]
            keep[(path, name)] = cut
            if isinstance(old, nn.Parameter):
                setattr(mod, name, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                mod.register_buffer(name, new, persistent=name not in mod._non_persistent_buffers_set)
            touched.add(path)
        _fix_attributes(space, compact, touched, masks)
    if check:
        _check_equal(*max_output_diff(space, model, compact, masks))
    if optimizer is not None:
        retarget_optimizer(optimizer, model, compact, keep)
    return compact


def in_place_blocker(model: nn.Module) -> str | None:
    """Why ``model`` cannot be cut in place (None when it can).

    Parametrized modules (``torch.nn.utils.parametrize``: weight norm, spectral norm, orthogonal, ...)
    compute their weight from other tensors, so there is no single tensor to shrink.
    """
    from torch.nn.utils import parametrize

    for path, mod in model.named_modules():
        if parametrize.is_parametrized(mod):
            return (
                f"module {path or type(model).__name__!r} ({type(mod).__name__}) has parametrizations "
                f"({', '.join(mod.parametrizations.keys())}), whose weights are computed from other tensors"
            )
    return None


def prune_model_(
    space: PruningSpace,
    model: nn.Module,
    masks: list,
    *,
    check: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
    report: dict[str, float] | None = None,
) -> nn.Module:
    """Implementation of :meth:`PruningSpace.prune_`: cut ``model`` itself and return it.

    Every module object stays the same; a shrunk parameter becomes a new, smaller ``nn.Parameter`` on the same
    module (buffers likewise) and the module attributes (``out_channels``, ``num_features``, ...) follow. So a
    reference to the model or its submodules (the user's ``model`` variable, a ``torch.compile`` wrapper, an
    EMA helper that reads ``model.parameters()``) stays valid; ``optimizer`` (if given) is moved onto the new
    parameters in place with its state sliced. Another optimizer over the old parameters must be rebuilt.
    """
    reason = in_place_blocker(model)
    if reason is not None:
        raise SurgeryError(f"cannot cut {type(model).__name__} in place: {reason}; use space.prune(model, masks) for a copy")
    plan = _plan(space, model, masks)
    cuts = {id(old): cut for _, _, old, _, cut in plan if isinstance(old, nn.Parameter)}
    if optimizer is not None:
        check_sliceable(optimizer, cuts)  # before anything changes
    ref = _masked_outputs(space, model, masks) if check else None
    # New Parameter objects (as Torch-Pruning does) rather than a new .data: autograd caches each leaf's shape
    # in its gradient accumulator, which a graph still alive in the user's loop (a `loss` variable) keeps.
    fresh: dict[int, tuple[nn.Parameter, dict[int, torch.Tensor]]] = {}
    buffers: dict[int, torch.Tensor] = {}
    for _, _, old, new, cut in plan:
        if isinstance(old, nn.Parameter):
            fresh[id(old)] = (nn.Parameter(new, requires_grad=old.requires_grad), cut)
        else:
            buffers[id(old)] = new
    touched: set[str] = set()
    with torch.no_grad():
        for path, mod in model.named_modules(remove_duplicate=False):
            for name, value in list(mod._parameters.items()):
                if value is not None and id(value) in fresh:
                    mod._parameters[name] = fresh[id(value)][0]  # tied weights get the same new parameter
                    touched.add(path)
            for name, value in list(mod._buffers.items()):
                if value is not None and id(value) in buffers:
                    mod._buffers[name] = buffers[id(value)]
                    touched.add(path)
        _fix_attributes(space, model, touched, masks)
        if optimizer is not None:
            remap_optimizer_(optimizer, fresh)
    if ref is not None:
        diff, scale = _compare(ref, _plain_outputs(space, model))
        if report is not None:
            report.update(max_abs_diff=diff, output_scale=scale)
        _check_equal(diff, scale)
    return model


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


def _run_eval(model: nn.Module, inputs: tuple, masked: tuple | None = None) -> list[torch.Tensor]:
    """The model's output tensors in eval mode without grad (each module's mode restored afterwards)."""
    modes = [(m, m.training) for m in model.modules()]
    first = next(iter(model.parameters()), None)
    if first is not None:  # the model may have moved to an accelerator after discovery
        inputs = tuple(t.to(first.device) if isinstance(t, torch.Tensor) else t for t in inputs)
    model.eval()
    try:
        with torch.no_grad(), exact_math():
            if masked is None:
                return _flat(model(*inputs))
            space, masks = masked
            with space.masked(model, masks):
                return _flat(model(*inputs))
    finally:
        for m, flag in modes:
            m.training = flag


def _masked_outputs(space: PruningSpace, model: nn.Module, masks: list) -> list[torch.Tensor]:
    return _run_eval(model, space.example_inputs, (space, masks))


def _plain_outputs(space: PruningSpace, model: nn.Module) -> list[torch.Tensor]:
    return _run_eval(model, space.example_inputs)


def _compare(ref: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float]:
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return float("inf"), 0.0
    diff = max((float((a.float() - b.float().to(a.device)).abs().max()) for a, b in zip(ref, got) if a.numel()), default=0.0)
    scale = max((float(a.float().abs().max()) for a in ref if a.numel()), default=0.0)
    return diff, scale


def max_output_diff(
    space: PruningSpace, model: nn.Module, compact: nn.Module, masks: list, inputs: tuple | None = None
) -> tuple[float, float]:
    """(max |compact(x) - masked(x)|, max |masked(x)|) in eval mode on ``inputs`` (default: example inputs)."""
    inputs = space.example_inputs if inputs is None else inputs
    return _compare(_run_eval(model, inputs, (space, masks)), _run_eval(compact, inputs))
