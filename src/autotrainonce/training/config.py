"""The training layer's own config: the optimiser, the LR schedule and the run options the Trainer reads.

The front end's run config (:class:`autotrainonce.config.Config`) is built from these sections and adds the
model, data and pruning ones; it imports them from here, never the other way round, so the Trainer can be
configured without knowing that a whole run exists. Range checks of the values live with the YAML loading
(``autotrainonce.config.loading``), which names the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "OptimConfig",
    "LRScheduleConfig",
    "TrainerRunConfig",
    "TrainingConfig",
    "TrainerSettings",
]


@dataclass
class OptimConfig:
    """The optimiser and the loss."""

    name: Literal["sgd", "adamw"] = "sgd"
    """Optimiser: sgd (with momentum) or adamw."""
    lr: float = 0.1
    """Peak learning rate (reached at the end of the warm-up)."""
    momentum: float = 0.9
    """SGD momentum (ignored by adamw)."""
    nesterov: bool = True
    """Use Nesterov momentum with SGD."""
    weight_decay: float = 5e-4
    """L2 weight decay (decoupled for adamw)."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy loss, in [0, 1)."""
    mixup_alpha: float = 0.0
    """Mixup Beta(alpha, alpha) parameter; 0 turns mixup off."""


@dataclass
class LRScheduleConfig:
    """The learning-rate schedule, applied every optimiser step (not ATO's phases: ``ato.ScheduleConfig``)."""

    name: Literal["cosine", "step"] = "cosine"
    """cosine: linear warm-up then cosine decay to 0; step: warm-up then multiply by gamma at each milestone."""
    warmup_epochs: float = 0.0
    """Length of the linear warm-up in epochs (fractions allowed)."""
    milestones: list[float] | None = None
    """Epochs at which the step schedule multiplies the LR by gamma; None means 50% and 75% of the run."""
    gamma: float = 0.1
    """Factor of the step schedule."""


@dataclass
class TrainerRunConfig:
    """The run options the Trainer reads: how long, where, and how often it checkpoints.

    The front end's ``RunConfig`` extends it with the seed, the output folder and the resume choice.
    """

    epochs: int = 10
    """Number of training epochs."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda or cuda:N."""
    channels_last: bool | Literal["auto"] = "auto"
    """Channels-last memory format; auto enables it on CUDA for networks with 2-D convolutions."""
    checkpoint_every_steps: int = 500
    """Also write last.pt every this many optimiser steps, mid-epoch (resumes at that exact batch); 0 writes
    checkpoints at epoch ends only."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard package)."""
    max_steps_per_epoch: int | None = None
    """Cut every epoch after this many steps (smoke tests); None runs full epochs."""
    amp: bool = False
    """Mixed precision on CUDA (bfloat16 when supported, else float16 with loss scaling); ignored on CPU."""


@dataclass
class TrainingConfig:
    """Everything the Trainer reads from a config; the default when it is given none."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimiser and loss."""
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    """The learning-rate schedule."""
    run: TrainerRunConfig = field(default_factory=TrainerRunConfig)
    """Run length, device and checkpoints."""


class TrainerSettings(Protocol):
    """What ``Trainer(config=)`` accepts: a :class:`TrainingConfig`, or any config holding the same sections.

    The front end's whole-run ``Config`` is one (its ``run`` section extends :class:`TrainerRunConfig`). Read-only
    properties, so a section of a subclass type still matches.
    """

    @property
    def optim(self) -> OptimConfig: ...

    @property
    def schedule(self) -> LRScheduleConfig: ...

    @property
    def run(self) -> TrainerRunConfig: ...
