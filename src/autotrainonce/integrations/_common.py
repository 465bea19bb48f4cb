"""Helpers shared by the framework callbacks; imports no framework."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..ato import AutoTrainOnce
from ..ato._utils import device_of, to_device
from ..ato.config import AtoConfig
from ..ato.resource import Target
from ..errors import ConfigError, SurgeryError

__all__ = [
    "MappedLoader",
    "adopt_cut",
    "build_pruner",
    "check_options",
    "cut_line",
    "loggable",
    "resolve_module",
    "unwrap_optimizer",
]

# Options the callbacks take from the framework's own loop: the user sets the trainer's epochs / steps instead.
_DERIVED = ("total_steps", "steps_per_epoch", "epochs")


def check_options(target: Any, options: dict[str, Any], framework: str) -> AtoConfig:
    """Validate the ATO keyword options when the callback is built (not only when training starts)."""
    if not isinstance(target, Target):
        raise ConfigError(
            f"target={target!r}: give autotrainonce.Flops(remove=...) or autotrainonce.Params(remove=...)"
        )
    derived = sorted(set(options) & set(_DERIVED))
    if derived:
        raise ConfigError(
            f"{', '.join(derived)} must not be given to the {framework} callback: it takes the number of optimizer "
            f"steps from the {framework} trainer when training starts; set the trainer's epochs or max steps instead"
        )
    return AtoConfig.from_options({k: v for k, v in options.items() if k not in ("space", "criterion")})


def resolve_module(root: nn.Module, path: str | None) -> nn.Module:
    """``root`` itself (``path`` None) or its submodule at the dotted attribute ``path``."""
    if path is None or path == "":
        return root
    try:
        return root.get_submodule(path)
    except AttributeError:
        names = ", ".join(n for n, _ in root.named_children()) or "none"
        raise ConfigError(
            f"module={path!r}: {type(root).__name__} has no submodule {path!r}; give the attribute name of the "
            f"network to prune (dotted for nested ones; its direct children are: {names}), or module=None for "
            "the whole model"
        ) from None


def build_pruner(
    module: nn.Module,
    example_inputs: Any,
    target: Target,
    holdout: Iterable[Any] | None,
    total_steps: float,
    steps_per_epoch: int | None,
    criterion: Callable[[Any, torch.Tensor], torch.Tensor] | None,
    options: dict[str, Any],
    framework: str,
) -> AutoTrainOnce:
    """The pruner for ``module``, with ``total_steps`` taken from the framework's trainer."""
    if not (isinstance(total_steps, (int, float)) and math.isfinite(total_steps) and total_steps > 0):
        raise ConfigError(
            f"the {framework} trainer reports {total_steps!r} optimizer steps for this run; AutoTrainOnce needs a "
            "finite number to place its schedule: set max_steps (or max_epochs with a data loader that has a length)"
        )
    kwargs = dict(options)
    if criterion is not None:
        kwargs["criterion"] = criterion
    spe = int(steps_per_epoch) if steps_per_epoch and math.isfinite(steps_per_epoch) else None
    return AutoTrainOnce(
        module,
        to_device(example_inputs, device_of(module)),
        target,
        holdout=holdout,
        total_steps=int(total_steps),
        steps_per_epoch=spe,
        **kwargs,
    )


def adopt_cut(pruner: AutoTrainOnce, root: nn.Module, path: str | None) -> None:
    """After the cut, make sure ``root`` runs the compact network.

    With an in-place cut ``pruner.model`` is the very module the trainer holds and nothing is to do. When the
    cut built a new module instead, it is put in place of the submodule ``path``; the whole model cannot be
    swapped under a running trainer.
    """
    if pruner.model is resolve_module(root, path):
        return
    if path is None or path == "":
        raise SurgeryError(
            "the network was cut into a new module object, which cannot replace the whole model inside the "
            "running trainer; pass module='<attribute of the network to prune>' or the option surgery='end'"
        )
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, pruner.model)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside framework wrappers (Lightning's ``LightningOptimizer``, accelerate's
    ``AcceleratedOptimizer``), whose state the cut slices in place."""
    for _ in range(8):
        inner = getattr(optimizer, "_optimizer", None)  # Lightning
        if inner is None:
            inner = getattr(optimizer, "optimizer", None)  # accelerate
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            f"the optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer; AutoTrainOnce needs "
            "the torch optimizer to read the learning rate and to slice its state at the cut"
        )
    return optimizer


def loggable(metrics: dict[str, float]) -> dict[str, float]:
    """``pruner.metrics()`` without the NaN entries (controller losses before the first controller step)."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def cut_line(pruner: AutoTrainOnce) -> str:
    """One log line describing the cut."""
    r = pruner.cut_report
    return (
        f"ATO: cut at step {int(r.get('step', pruner.global_step))}: MACs {int(r.get('macs_before', 0))} -> "
        f"{int(r.get('macs_after', 0))}, params {int(r.get('params_before', 0))} -> {int(r.get('params_after', 0))}"
    )


class MappedLoader:
    """An iterable of batches with ``fn`` applied to each (a holdout loader turned into (inputs, targets))."""

    def __init__(self, loader: Iterable[Any], fn: Callable[[Any], Any]) -> None:
        self.loader = loader
        self.fn = fn

    def __iter__(self) -> Iterator[Any]:
        return (self.fn(b) for b in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]
