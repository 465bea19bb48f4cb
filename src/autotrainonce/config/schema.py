"""The run config's schema: one dataclass per YAML section, each field typed, defaulted and documented.

The optimiser, LR-schedule and Trainer run options are the training layer's own
(:mod:`autotrainonce.training.config`); this module composes them with the model, data and pruning sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..training.config import LRScheduleConfig, OptimConfig, TrainerRunConfig

__all__ = [
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "LRScheduleConfig",
    "RunConfig",
    "PruneConfig",
    "Config",
]


@dataclass
class ModelConfig:
    """Which network to build."""

    name: str = "resnet20"
    """Zoo model name (see ``autotrainonce.models.list_models()``), or ``module:attr`` of your own ``nn.Module``
    class or model function, e.g. ``mypkg.nets:MyNet`` (imported from the current folder or PYTHONPATH)."""
    num_classes: int | None = None
    """Output classes; None takes the dataset's number of classes."""
    in_channels: int | None = None
    """Input channels; None takes ``data.in_channels`` or else the dataset's channels."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the model builder, e.g. ``{cifar_stem: true}``, or your model's constructor."""


@dataclass
class DataConfig:
    """Which data to train on and how to load it."""

    name: str = "fashion-mnist"
    """Registered dataset name (fashion-mnist, digits, cifar10, cifar100, imagefolder, synthetic)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Dataset-specific options passed to the dataset builder, e.g. ``{num_samples: 256}`` for synthetic."""
    root: str | None = None
    """Dataset directory; None uses the dataset's default location (ATO_DATA_ROOT, Debian's package...)."""
    image_size: int | None = None
    """Resize images to this side length; None keeps the dataset's native size."""
    in_channels: int | None = None
    """Convert images to this many channels (1 or 3); None keeps the dataset's channels."""
    augment: bool = True
    """Use the dataset's training augmentation (random crop / flip)."""
    holdout_fraction: float = 0.0
    """Share of the training set held out for the pruning controller (only used when pruning); 0 (default):
    nothing is held out and the controller learns from the training batches (docs/decisions.md)."""
    train_subset: int | None = None
    """Use only the first N training samples (quick runs); None uses them all."""
    batch_size: int = 128
    """Training mini-batch size."""
    eval_batch_size: int = 256
    """Evaluation batch size."""
    workers: int = 2
    """DataLoader worker processes (0 loads in the main process)."""


@dataclass
class RunConfig(TrainerRunConfig):
    """How long to train, where, and where to write the results: the Trainer's options plus the run's own."""

    seed: int = 0
    """Seed of torch, numpy and Python's random."""
    out_dir: str = "runs"
    """Parent directory of run directories."""
    name: str | None = None
    """Run directory name under out_dir; None uses '<model>-<data>'."""
    resume: str | None = None
    """None/'none' starts fresh, 'auto' resumes from the newest readable checkpoint of the run dir (last.pt,
    else prev.pt), or a checkpoint path."""


@dataclass
class PruneConfig:
    """Structured pruning during training; passed as is to the pruning algorithm."""

    method: str = "none"
    """none trains the dense network; a registered pruning method prunes it while training: ato (Auto-Train-Once),
    l1 (one-shot L1 cut), magnitude (progressive), or one of yours (autotrainonce.pruners.register)."""
    remove_flops: float | None = None
    """Target share of MACs to remove, in (0, 1); None for no MACs target."""
    remove_params: float | None = None
    """Target share of parameters to remove, in (0, 1); None for no parameter target."""
    options: dict[str, Any] = field(default_factory=dict)
    """Algorithm-specific options, passed through untouched."""


@dataclass
class Config:
    """A whole run. It has the sections the Trainer reads (``optim``, ``schedule``, ``run``), so it can be
    passed as ``Trainer(config=)`` (:class:`~autotrainonce.training.config.TrainerSettings`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimiser and loss."""
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    """The learning-rate schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run length, device and outputs."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """Pruning (off by default)."""

    def validate(self) -> Config:
        """Check value ranges that types cannot express, and the pruning options' types; returns self."""
        # Deferred: the checks live with the loading code, which imports this schema.
        from .loading import validate

        return validate(self)
