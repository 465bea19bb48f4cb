"""Optimisers, per-step learning-rate schedules and the classification loss (with mixup)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from ..errors import ConfigError
from .config import LRScheduleConfig, OptimConfig

__all__ = [
    "WarmupCosine",
    "WarmupStep",
    "build_optimizer",
    "build_scheduler",
    "rebuild_optimizer",
    "ClassificationLoss",
]


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over all of ``model``'s trainable parameters.

    Weight decay applies to every parameter, BatchNorm and biases included: the classic CIFAR-ResNet recipe,
    and what keeps BN scales comparable when a pruner looks at them.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    name = cfg.name.lower()
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.name!r}; choose one of: sgd, adamw")


def rebuild_optimizer(old: Optimizer, model: nn.Module) -> Optimizer:
    """A fresh optimiser of ``old``'s class and hyper-parameters over ``model``'s parameters (no state)."""
    accepted = inspect.signature(type(old).__init__).parameters
    # Optimisers record defaults their constructor does not take (AdamW's decoupled_weight_decay): drop them.
    kwargs = {k: v for k, v in old.defaults.items() if k in accepted}
    new = type(old)([p for p in model.parameters() if p.requires_grad], **kwargs)
    # Carry the current learning rate (and the schedule's initial_lr) over, group by group where possible.
    for g_new, g_old in zip(new.param_groups, old.param_groups):
        for key in ("lr", "initial_lr"):
            if key in g_old:
                g_new[key] = g_old[key]
    return new


class WarmupCosine:
    """LR factor per step: linear warm-up to 1 over ``warmup_steps``, then cosine decay reaching 0 at ``total``.

    It holds only numbers: LambdaLR's state_dict copies its ``__dict__``, which must stay weights-only loadable.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps - 1))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            # (step + 1) so the very first update already moves the weights.
            return (step + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupStep:
    """LR factor per step: linear warm-up, then ``gamma ** k`` after the k-th milestone step."""

    def __init__(self, milestone_steps: Sequence[int], gamma: float, warmup_steps: int = 0) -> None:
        self.milestone_steps = sorted(int(m) for m in milestone_steps)
        self.gamma = float(gamma)
        self.warmup_steps = max(0, int(warmup_steps))

    def __call__(self, step: int) -> float:
        factor = self.gamma ** sum(step >= m for m in self.milestone_steps)
        if step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps
        return factor


def build_scheduler(
    cfg: LRScheduleConfig, optimizer: Optimizer, epochs: int, steps_per_epoch: int
) -> LRScheduler:
    """A LambdaLR stepped once per optimiser step (not per epoch), so short runs still get a smooth schedule.

    Warm-up and milestones are given in epochs and converted to steps here; milestones default to 50% and
    75% of the run.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ConfigError(f"cannot schedule {epochs} epoch(s) of {steps_per_epoch} step(s)")
    total = epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    name = cfg.name.lower()
    if name == "cosine":
        fn: WarmupCosine | WarmupStep = WarmupCosine(total, warmup)
    elif name == "step":
        milestones = cfg.milestones if cfg.milestones is not None else [0.5 * epochs, 0.75 * epochs]
        fn = WarmupStep([round(m * steps_per_epoch) for m in milestones], cfg.gamma, warmup)
    else:
        raise ConfigError(f"unknown schedule {cfg.name!r}; choose one of: cosine, step")
    return LambdaLR(optimizer, fn)


class ClassificationLoss:
    """Cross-entropy with optional label smoothing and mixup.

    Call :meth:`mix` on a training batch first (a no-op when mixup is off), then :meth:`__call__` with the
    logits and the returned targets. Mixup draws from torch's global RNG, so seeding makes it reproducible.
    """

    def __init__(self, label_smoothing: float = 0.0, mixup_alpha: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing)
        self.mixup_alpha = float(mixup_alpha)

    def mix(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, float]]:
        """Mixed inputs and ``(targets_a, targets_b, lam)``; lam is 1.0 when mixup is off."""
        if self.mixup_alpha <= 0:
            return inputs, (targets, targets, 1.0)
        alpha = torch.tensor(self.mixup_alpha)
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(inputs.shape[0]).to(inputs.device)
        mixed = inputs.mul(lam).add_(inputs[perm], alpha=1.0 - lam)
        return mixed, (targets, targets[perm], lam)

    def __call__(
        self, logits: torch.Tensor, mixed_targets: tuple[torch.Tensor, torch.Tensor, float]
    ) -> torch.Tensor:
        a, b, lam = mixed_targets
        loss = F.cross_entropy(logits, a, label_smoothing=self.label_smoothing)
        if lam < 1.0:
            loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits, b, label_smoothing=self.label_smoothing)
        return loss
