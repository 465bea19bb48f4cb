"""The pruner interface every pruning method implements (ATO, L1 one-shot, progressive magnitude, yours).

A pruner is built for one model and one run, before training starts, and is stepped after every optimizer
step. It cuts the model *in place* (same module objects, smaller parameters; the optimizer it is given is
moved along), so the training loop never has to swap models::

    pruner = autotrainonce.pruners.create("l1", model, example_inputs, Flops(0.5), total_steps=n)
    for x, y in loader:
        loss_fn(model(x), y).backward(); optimizer.step(); optimizer.zero_grad()
        pruner.step(optimizer, batch=(x, y))     # True at the step where the network was cut
    compact = pruner.export()                    # `model`, physically smaller

The Trainer, the CLI and the benchmark only see this interface; :mod:`autotrainonce.pruners` holds the
registry of the methods.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

__all__ = ["Pruner"]


class Pruner(abc.ABC):
    """One pruning method applied to one model during one training run.

    Attributes every implementation sets: ``global_step`` (steps seen), ``model`` (the network being pruned; the same object after a cut),
    ``space`` (its :class:`~autotrainonce.space.PruningSpace`, describing the *uncut* network), ``cut``
    (whether the network was physically cut), ``cut_report`` (step, MACs/params before and after, and the
    masked-vs-cut output difference when it was checked) and ``owner_rebuilds_wrappers`` (set by an owner that
    rebuilds its DDP wrapper itself after a cut, so the pruner does not warn about it).
    """

    #: registry name of the method (``"ato"``, ``"l1"``, ...)
    name: str = ""
    #: whether the method draws batches from a held-out split (the run builder splits one off only then)
    uses_holdout: bool = False
    model: nn.Module
    space: Any
    cut: bool = False
    #: optimizer steps seen (``step`` increments it first thing); an owner may set it to re-synchronise
    global_step: int = 0
    cut_report: dict[str, float]
    owner_rebuilds_wrappers: bool = False

    @abc.abstractmethod
    def step(self, optimizer: torch.optim.Optimizer, batch: Any = None) -> bool:
        """Call after every ``optimizer.step()``; returns True at the one step where the network was cut.

        ``batch`` (the step's ``(inputs, targets)``) is used by methods that need data (ATO's controller when
        no holdout loader was given); others ignore it.
        """

    @abc.abstractmethod
    def export(self) -> nn.Module:
        """The physically pruned model (``model`` itself when it was cut during training)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically; loads with ``torch.load(weights_only=True)``."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Restore :meth:`state_dict` before the first step of a resumed run.

        A state written after the cut cuts ``model`` in place again; load it before the model's weights, and
        pass the optimizer built over the uncut model (it is moved onto the new parameters).
        """

    def metrics(self) -> dict[str, float]:
        """Numbers for metrics.csv / TensorBoard, all floats, keys prefixed with the method's name."""
        return {}

    def current_masks(self) -> list[torch.Tensor | None] | None:
        """The keep-mask in force per group of ``space`` (None for kept groups), or None before any decision."""
        return None

    def mask_summary(self) -> dict[str, Any] | None:
        """The mask per group as plain data (written as ``mask.json``), or None when there is none yet."""
        return None

    def describe(self) -> str:
        """A few lines on the method, its target and its schedule (logged at the start of a run)."""
        return type(self).__name__
