"""AutoTrainOnce: train from scratch while a controller decides which channel groups to remove.

Call :meth:`AutoTrainOnce.step` after every ``optimizer.step()``; it runs, per the schedule, the controller step
on a held-out batch, resamples the proximal mask, applies the guided proximal step and finally freezes the mask.
:meth:`AutoTrainOnce.export` returns the physically pruned model and proves it equals the masked one.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.pruner import Pruner
from ..errors import ConfigError
from ..space.model_checks import check_model
from ..space.surgery import in_place_blocker
from ._utils import EvalMode, HoldoutStream, Masks, call_model, device_of, first_rows, to_device
from .config import AtoConfig
from .controller import Controller
from .cutting import Cutting
from .proximal import GroupProximal
from .ranks import RankSync
from .reporting import Reporting
from .resource import Target, calibrated_masks, resolve_target, resource_loss
from .schedule import Schedule

__all__ = ["AutoTrainOnce"]

log = logging.getLogger(__name__)


def _total_steps(total_steps: int | None, epochs: int | None, steps_per_epoch: int | None) -> int:
    """total_steps, or epochs * steps_per_epoch; a ConfigError saying how to give it otherwise."""
    if total_steps is None and epochs is not None and steps_per_epoch is not None:
        total_steps = int(epochs) * int(steps_per_epoch)
    if total_steps is None:
        raise ConfigError(
            "AutoTrainOnce needs the length of the run to place its schedule: pass total_steps=<optimizer steps "
            "of the whole run> (e.g. epochs * len(train_loader)), or epochs=<E> with steps_per_epoch=<len(loader)>"
        )
    try:
        steps = operator.index(total_steps)  # ints and numpy ints; not floats or bools
    except TypeError:
        steps = 0
    if isinstance(total_steps, bool) or steps <= 0:
        raise ConfigError(f"total_steps must be a positive int (optimizer steps of the whole run), got {total_steps!r}")
    return steps


class AutoTrainOnce(Cutting, RankSync, Reporting, Pruner):
    """The ATO pruner for one model and one run (registered as ``"ato"`` in :mod:`autotrainonce.pruners`).

    Args:
        model: the network being trained (modified in place only by the proximal step).
        example_inputs: a tensor (or tuple of tensors) the model accepts; used to discover the pruning space
            and as the probe of the export check.
        target: :class:`Flops` or :class:`Params` with the fraction of the whole network to remove.
        holdout: an iterable of ``(inputs, targets)`` batches for the controller (a held-out split). If None,
            the batch given to :meth:`step` is used instead.
        total_steps: optimizer steps of the whole run (epochs * batches per epoch); the schedule scales to it.
            Required (keyword), unless ``epochs`` and ``steps_per_epoch`` are given.
        epochs: with ``steps_per_epoch``, gives ``total_steps = epochs * steps_per_epoch``.
        steps_per_epoch: if given, the proximal mask is resampled once per epoch (unless ``mask_interval`` says
            otherwise); e.g. ``len(train_loader)``.
        space: a pruning space already discovered for ``model`` (default: ``discover(model, example_inputs)``).
        criterion: the controller's task loss ``criterion(outputs, targets)`` (default: cross-entropy).
        **options: see :class:`AtoConfig` and docs/ato.md.

    Distributed training: inside an initialised ``torch.distributed`` process group every rank builds its own
    pruner with the same arguments and calls :meth:`step` at the same steps (these calls synchronise). The
    controller's gradients are averaged over ranks (each rank may draw its own holdout shard), the
    controller's parameters are broadcast from rank 0 at the first step (and after a resume), and every mask
    (each resample and the frozen one) is broadcast from rank 0, so all ranks take the same decisions even
    when their data, augmentation or RNG differ.
    """

    name = "ato"
    uses_holdout = True

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        target: Target,
        holdout: Iterable[Any] | None = None,
        *,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        space: Any = None,
        criterion: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
        **options: Any,
    ) -> None:
        check_model(model, "AutoTrainOnce")
        total_steps = _total_steps(total_steps, epochs, steps_per_epoch)
        self.config = cfg = AtoConfig.from_options(options)
        self.schedule = Schedule.build(cfg.schedule(), total_steps, steps_per_epoch)
        self.model = model
        self.example_inputs = example_inputs
        if space is None:
            from ..space import discover

            space = discover(model, example_inputs)
        self.space = space
        blocker = in_place_blocker(model)
        if blocker is not None:
            raise ConfigError(
                f"ATO cannot prune this model: {blocker}, so neither the proximal step nor the cut can act on "
                "them; remove the parametrization first (torch.nn.utils.parametrize.remove_parametrizations)"
            )
        self.target = target
        # raises TargetError for bad targets, and for ones the smallest network allowed (min_channels, round_to) misses
        self.budget = resolve_target(target, space, cfg.min_channels, cfg.round_to)
        self.prunable = [i for i, g in enumerate(space.groups) if g.prunable]
        groups = [space.groups[i] for i in self.prunable]
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        self._controller_sizes = [g.size for g in groups]
        self.controller: Controller | None = self._new_controller(self.generator).to(device_of(model))
        self.controller_optimizer: torch.optim.Optimizer | None = torch.optim.AdamW(
            self.controller.parameters(), lr=cfg.controller_lr, weight_decay=cfg.controller_weight_decay
        )
        self.proximal: GroupProximal | None = GroupProximal(model, groups)
        self.holdout = None if holdout is None else HoldoutStream(holdout)
        self.criterion = criterion or F.cross_entropy
        self.global_step = 0
        self.frozen = False
        self.decided = False  # variant="decide": the mask is fixed (from decide_at) and ramping to zero
        #: decide_when="stable": the step of an early decision (the schedule's decide_at and freeze_at move)
        self.decided_early_at: int | None = None
        self._stable_run = 0  # consecutive stable controller steps
        self._stable_prev: list[torch.Tensor] | None = None  # the controller's own mask at the previous one
        self.cut = False  # surgery="freeze": self.model is the physically pruned network
        self.cut_report: dict[str, float] = {}
        #: set by owners (the Trainer callback) that rebuild their DDP wrapper themselves after a cut
        self.owner_rebuilds_wrappers = False
        self._replaced: list[weakref.ref] = []  # parameters the cut replaced (an optimizer must not hold them)
        self._optimizer_checked = True
        self.lr_decayed = False
        self.mask: list[torch.Tensor] | None = None  # bool keep-masks of the prunable groups (CPU)
        self._ranks_synced = False  # controller broadcast from rank 0 done (distributed runs)
        self.last: dict[str, float] = {}  # losses of the latest controller step
        self.export_report: dict[str, float] = {}
        #: measured once at the freeze (draw vs frozen mask, near-zero kept channels, output change), see freeze()
        self.freeze_report: dict[str, float] = {}
        #: measured when the mask is decided (init_order, l1_order), merged into freeze_report at the freeze
        self.decision_report: dict[str, float] = {}

    def _new_controller(self, generator: torch.Generator) -> Controller:
        """A controller as initialised for this run (on the CPU); ``generator`` draws its embeddings and noise."""
        cfg = self.config
        # The controller's init depends on `seed` only and leaves the global RNG alone, so turning ATO on does
        # not change the model's init, data order or augmentation draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            return Controller(
                self._controller_sizes,
                embed_dim=cfg.embed_dim,
                hidden_size=cfg.hidden_size,
                temperature=cfg.temperature,
                offset=cfg.offset,
                min_channels=cfg.min_channels,
                head_init=cfg.head_init,
                generator=generator,
            )

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Resample the proximal mask once per epoch of ``steps_per_epoch`` (unless mask_interval is set)."""
        if self.config.mask_interval is None:
            self.schedule = Schedule.build(self.config.schedule(), self.schedule.total_steps, steps_per_epoch)
            self._move_decision()

    def describe(self) -> str:
        """A short multi-line summary: target, budget, groups, schedule."""
        b, groups = self.budget, [self.space.groups[i] for i in self.prunable]
        return "\n".join(
            [
                f"ATO target {self.target}: keep p={b.p:.4f} of the prunable {b.target.kind} "
                f"({b.prunable} of {b.total}; at most {b.max_remove:.1%} removable)",
                f"{len(groups)} prunable groups, {sum(g.size for g in groups)} channels",
                "schedule: " + self.schedule.describe(),
            ]
        )

    # ----------------------------------------------------------------------------------------- masks
    def _full(self, per_prunable: list[torch.Tensor]) -> Masks:
        """Expand prunable-group masks to a list aligned with ``space.groups`` (None for the others)."""
        out: Masks = [None] * len(self.space.groups)
        for i, m in zip(self.prunable, per_prunable):
            out[i] = m
        return out

    def _prunable_part(self, full: Masks) -> list[torch.Tensor]:
        """The inverse of :meth:`_full`: bool masks of the prunable groups only (None: every channel kept)."""
        return [torch.ones(self.space.groups[i].size, dtype=torch.bool) if full[i] is None else full[i].bool()
                for i in self.prunable]  # fmt: skip

    def current_masks(self) -> Masks | None:
        """The mask in force (frozen, or the latest sample) aligned with ``space.groups``; None before any."""
        return None if self.mask is None else self._full(self.mask)

    def _set_mask(self, keep: list[torch.Tensor]) -> None:
        self.mask = [k.detach().bool().cpu() for k in keep]
        if self.proximal is not None:
            self.proximal.set_mask(self.mask)

    def _prox(self) -> GroupProximal:
        if self.proximal is None:
            raise RuntimeError("the network was already cut (surgery='freeze'); there is no proximal step left")
        return self.proximal

    def _require_controller(self) -> Controller:
        if self.controller is None:
            raise RuntimeError("the controller was discarded by export(); the mask is final")
        return self.controller

    def _kept_fraction(self, keep: list[torch.Tensor]) -> float:
        return float(self.budget.kept_fraction(self.target.cost(self.space, self._full(keep))))

    def final_mask(self) -> list[torch.Tensor]:
        """The mask a freeze would fix now: the controller's noiseless scores thresholded (bool, CPU).

        With ``calibrate_freeze`` the threshold moves from 0 to the value whose mask is closest to the target
        when the plain threshold misses it by more than the dead zone (the noisy draws the controller was
        trained on sit on the target; their noiseless mean need not).
        """
        if self.frozen or self.decided or self.controller is None:
            assert self.mask is not None, "no controller and no mask"
            return self.mask
        if not self.config.calibrate_freeze:
            return self.controller.sample(deterministic=True)
        cfg = self.config
        scores = [s.cpu() for s in self.controller.scores()]
        return calibrated_masks(scores, self._kept_fraction, self.budget.p, cfg.dead_zone, cfg.min_channels)

    # ----------------------------------------------------------------------------------------- stepping
    def _sync_device(self) -> None:
        # The trainer may move the model after the pruner was built; the controller follows it.
        dev = device_of(self.model)
        ctrl = self.controller
        if ctrl is None or ctrl.embeddings.device == dev:
            return
        ctrl.to(dev)
        assert self.controller_optimizer is not None
        for state in self.controller_optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(dev)

    def _next_holdout(self, batch: Any) -> Any:
        if self.holdout is not None:
            return self.holdout.next()
        if batch is None:
            raise ConfigError(
                "AutoTrainOnce needs batches for its controller: pass holdout=<loader of a held-out split> "
                "or give the training batch as pruner.step(optimizer, batch=(inputs, targets))"
            )
        return batch

    def _controller_step(self, batch: Any) -> None:
        ctrl = self._require_controller()
        opt = self.controller_optimizer
        assert opt is not None
        inputs, targets = tuple(self._next_holdout(batch))[:2]
        rows = self.config.controller_rows(self.schedule.cost_capped)
        if rows is not None:  # slice before the move: only the rows used travel to the device
            inputs, targets = first_rows(inputs, rows), first_rows(targets, rows)
        inputs, targets = to_device((inputs, targets), device_of(self.model))
        ctrl.train()
        params = [p for p in ctrl.parameters() if p.requires_grad]
        with torch.enable_grad():
            soft, hard = ctrl()
            with EvalMode(self.model), self.space.masked(self.model, self._full(soft)):
                task = self.criterion(call_model(self.model, inputs), targets)
            # the paper prices the step's hard draw; "expected" prices the keep probabilities (same mean, no noise)
            priced = hard if self.config.resource_cost == "draw" else ctrl.keep_probabilities()
            r = self.budget.kept_fraction(self.target.soft_cost(self.space, self._full(priced)))
            res = resource_loss(r, self.budget.p, self.config.resource_loss, self.config.dead_zone)
            loss = task + 2.0 * self.config.reg_weight * res.to(task.device)
            # Gradients for the controller only: the model's weights get no .grad and no wasted backward.
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        filled = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        # Distributed: every rank applies the same mean gradient, so the controllers stay identical.
        filled, task_value = self._average_over_ranks(filled, task)
        for p, g in zip(params, filled):
            p.grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.last.update(
            task_loss=task_value, resource_loss=float(res.detach()), kept_fraction=float(r.detach())
        )

    def step(self, optimizer: torch.optim.Optimizer, batch: Any = None) -> bool:
        """Call after every ``optimizer.step()`` of the model; does what the schedule says for this step.

        ``batch`` is only used for controller steps when no holdout loader was given. Returns True at the one
        step where the network was cut (surgery="freeze"). The cut happens in place: the model object you hold
        is now the compact network and ``optimizer`` keeps training it (its state sliced); nothing to swap.
        """
        self.global_step += 1
        t, s = self.global_step, self.schedule
        self._sync_device()
        if self.cut:
            if not self._optimizer_checked:
                self._check_optimizer(optimizer)
            return False
        if not self._ranks_synced:
            self._broadcast_controller()
        if self.config.variant == "decide":
            return self._step_decide(optimizer, batch)
        if not self.frozen and t >= s.freeze_at:
            self.freeze(optimizer)
            if self.cut:
                return True
        if not self.frozen:
            ctrl = self._require_controller()
            if s.controller_active(t):
                self._search_step(t, batch)
            if s.mask_due(t) or (self.mask is None and s.proximal_active(t)):
                self._set_mask(self._agree(ctrl.sample()))
        if s.proximal_active(t) and self.mask is not None:
            lr = float(optimizer.param_groups[0]["lr"])
            opt = optimizer if self.config.reset_optimizer_state else None
            self._prox().step(s.lam(t), lr, opt)
        return False

    def _search_step(self, t: int, batch: Any) -> None:
        """One step of the controller's search: its lr decays once at ``controller_lr_decay``, and it takes a
        step every ``hyper_step`` steps (both variants)."""
        if not self.lr_decayed and t >= self.schedule.controller_lr_decay:
            assert self.controller_optimizer is not None
            for group in self.controller_optimizer.param_groups:
                group["lr"] *= self.config.lr_decay_factor
            self.lr_decayed = True
        if self.schedule.controller_step_due(t):
            self._controller_step(batch)

    def _stable(self) -> bool:
        """decide_when="stable", after a controller step: True once the controller's own mask (noiseless scores
        >= 0) has kept within ``stable_tol`` of the target with at most ``stable_tol`` of its channels flipped
        since the previous controller step, ``stable_patience`` times in a row."""
        cfg = self.config
        keep = [s.cpu() >= 0 for s in self._require_controller().scores()]
        on_target = abs(self._kept_fraction(keep) - self.budget.p) <= cfg.stable_tol
        prev, self._stable_prev = self._stable_prev, keep
        flips = None if prev is None else sum(int((a != b).sum()) for a, b in zip(keep, prev))
        total = sum(k.numel() for k in keep)
        ok = on_target and flips is not None and flips <= cfg.stable_tol * total
        self._stable_run = self._stable_run + 1 if ok else 0
        return self._stable_run >= cfg.stable_patience

    def _move_decision(self) -> None:
        """Apply an early decision to the schedule: decide at that step, freeze after the same ramp length."""
        t, s = self.decided_early_at, self.schedule
        if t is None or s.decide_at is None or s.decide_at == t:
            return
        ramp = s.freeze_at - s.decide_at
        self.schedule = dataclasses.replace(s, decide_at=t, freeze_at=t + ramp)

    def _step_decide(self, optimizer: torch.optim.Optimizer, batch: Any) -> bool:
        """variant="decide": search without shrinking, decide, ramp the decided channels to 0, freeze and cut.

        No proximal step touches the weights before the decision, so no channel is weakened by a draw that the
        decision may overturn; the ramp is a pure multiplier (no lambda, no lr), so it means the same under any
        optimizer, learning rate and run length.
        """
        t, s = self.global_step, self.schedule
        assert s.decide_at is not None
        opt = optimizer if self.config.reset_optimizer_state else None
        if not self.decided and not self.frozen:
            if s.controller_active(t) and t < s.decide_at and self.config.decide_by in ("controller", "widths"):
                self._search_step(t, batch)
                if self.config.decide_when == "stable" and s.controller_step_due(t) and self._stable():
                    self.decided_early_at = t
                    self._move_decision()
                    s = self.schedule
            if t >= s.decide_at:
                self.decide()
        if self.decided and not self.frozen:
            factor = s.ramp_factor(t)
            if factor < 1.0:
                # at t = freeze_at the factor is 0: the channels the freeze cuts are exactly zero before it looks
                self._prox().scale_dropped(factor, opt)
        if not self.frozen and t >= s.freeze_at:
            self.freeze(optimizer)
            return self.cut
        if self.frozen and not self.cut:
            # surgery="end": keep the cut channels at exactly zero for the rest of training
            self._prox().scale_dropped(0.0, opt)
        return False
