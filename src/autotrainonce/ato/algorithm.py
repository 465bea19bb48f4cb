"""AutoTrainOnce: train from scratch while a controller decides which channel groups to remove.

Call :meth:`AutoTrainOnce.step` after every ``optimizer.step()``; it runs, per the schedule, the controller step
on a held-out batch, resamples the proximal mask, applies the guided proximal step and finally freezes the mask.
:meth:`AutoTrainOnce.export` returns the physically pruned model and proves it equals the masked one.
"""

from __future__ import annotations

import logging
import operator
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..core.pruner import Pruner
from ..errors import CheckpointError, ConfigError, SurgeryError
from ..measure import eval_outputs, relative_output_change
from ..space.model_checks import check_model
from ..space.surgery import exact_math, in_place_blocker
from ._utils import EvalMode, HoldoutStream, Masks, call_model, device_of, output_tensors, to_device
from .config import AtoConfig
from .controller import Controller
from .instruments import freeze_report
from .proximal import GroupProximal
from .resource import Target, calibrated_masks, resolve_target, resource_loss
from .schedule import Schedule

__all__ = ["AutoTrainOnce"]

log = logging.getLogger(__name__)


def _world_size() -> int:
    """Processes of the default process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _is_rank0() -> bool:
    """Whether this process logs for the run (rank 0, or the only process)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _seek_holdout(stream: HoldoutStream, drawn: int) -> None:
    """Position a holdout stream over a ``ResumableBatchSampler`` (auto_epoch) after ``drawn`` batches.

    Such a sampler's pass ``p`` is a pure function of (seed, p), so the stream resumes at pass ``drawn // n``,
    batch ``drawn % n``, without loading the skipped batches; other loaders keep HoldoutStream's replay.
    """
    sampler = getattr(stream.loader, "batch_sampler", None)
    if not (getattr(sampler, "auto_epoch", False) and callable(getattr(sampler, "skip", None))):
        return
    n = len(stream.loader)  # type: ignore[arg-type]
    if n:
        sampler.set_epoch(drawn // n)  # type: ignore[union-attr]
        sampler.skip(drawn % n)  # type: ignore[union-attr]
        stream._skip = 0  # the sampler skips instead


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


class AutoTrainOnce(Pruner):
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
        self.budget = resolve_target(target, space, cfg.min_channels)  # raises TargetError for bad or unreachable targets
        self.prunable = [i for i, g in enumerate(space.groups) if g.prunable]
        groups = [space.groups[i] for i in self.prunable]
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        # The controller's init depends on `seed` only and leaves the global RNG alone, so turning ATO on does
        # not change the model's init, data order or augmentation draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            self.controller: Controller | None = Controller(
                [g.size for g in groups],
                embed_dim=cfg.embed_dim,
                hidden_size=cfg.hidden_size,
                temperature=cfg.temperature,
                offset=cfg.offset,
                min_channels=cfg.min_channels,
                generator=self.generator,
            ).to(device_of(model))
        self.controller_optimizer: torch.optim.Optimizer | None = torch.optim.AdamW(
            self.controller.parameters(), lr=cfg.controller_lr, weight_decay=cfg.controller_weight_decay
        )
        self.proximal: GroupProximal | None = GroupProximal(model, groups)
        self.holdout = None if holdout is None else HoldoutStream(holdout)
        self.criterion = criterion or F.cross_entropy
        self.global_step = 0
        self.frozen = False
        self.decided = False  # variant="decide": the mask is fixed (from decide_at) and ramping to zero
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

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Resample the proximal mask once per epoch of ``steps_per_epoch`` (unless mask_interval is set)."""
        if self.config.mask_interval is None:
            self.schedule = Schedule.build(self.config.schedule(), self.schedule.total_steps, steps_per_epoch)

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

    def decide(self) -> None:
        """variant="decide": fix the mask now to :meth:`final_mask` and stop the controller; from the next step
        the dropped channels ramp to exactly zero at ``freeze_at``, where the freeze cuts this very mask."""
        if self.decided or self.frozen:
            return
        self._set_mask(self._agree(self.final_mask()))
        self.decided = True
        if _is_rank0():
            flops, params = self._removed(self.mask)
            log.info(
                "ATO: mask decided at step %d (removes %.1f%% MACs, %.1f%% params); ramping its dropped channels "
                "to zero until the freeze at step %d", self.global_step, 100 * flops, 100 * params,
                self.schedule.freeze_at,
            )

    def freeze(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Fix the mask to the controller's deterministic choice (noiseless logits) and stop the controller.

        With ``zero_at_freeze`` the dropped channels are set exactly to zero here, so the rest of training
        already runs the sub-network that export() will cut out. :attr:`freeze_report` records how the frozen
        mask relates to what the proximal step was shrinking, and how far the freeze moved the outputs.
        """
        if self.frozen:
            return
        prox = self._prox()
        draw = self.mask  # the latest draw: the channels the proximal step has been shrinking
        # Norms and outputs before the freeze zeroes or cuts anything: the state the decision is taken on.
        norms = [n if slots else None for n, slots in zip(prox.channel_norms(), prox.slots)]
        inputs = to_device(self.example_inputs, device_of(self.model))
        before = eval_outputs(self.model, inputs)
        self._set_mask(self._agree(self.final_mask()))
        self.frozen = True
        if self.config.zero_at_freeze:
            opt = optimizer if self.config.reset_optimizer_state else None
            self.last["zeroed_at_freeze_max_norm"] = prox.hard_zero(opt)
        if self.config.surgery == "freeze":
            self._cut(optimizer)
        change = relative_output_change(before, eval_outputs(self.model, inputs))
        assert self.mask is not None
        self.freeze_report = r = freeze_report(self.global_step, draw, self.mask, norms, change)
        if _is_rank0():
            log.info(
                "ATO: mask frozen at step %d: it differs from the last shrunk draw on %d of %d channels (%.1f%%: "
                "%d shrunk but kept, %d cut but never shrunk); %d kept channels already near zero (%d exactly); "
                "relative output change at the %s %.3g",
                self.global_step, r["hamming"], r["channels"], 100 * r["hamming_frac"], r["shrunk_kept"],
                r["cut_unshrunk"], r["kept_near_zero"], r["kept_zero"], "cut" if self.cut else "freeze", change,
            )  # fmt: skip

    def _cut(self, optimizer: torch.optim.Optimizer | None, check: bool = True) -> None:
        """Cut the network physically to the frozen mask (surgery="freeze"), in place.

        ``self.model`` stays the same object (same submodules; shrunk parameters are new, smaller Parameters on
        them), so the user's ``model`` variable and a ``torch.compile`` wrapper keep working on the compact
        network; ``optimizer`` (if given) is moved onto the new parameters in place with its state sliced. The
        next :meth:`step` raises if its optimizer still holds replaced parameters. The proximal step and the
        controller are dropped.
        """
        assert self.mask is not None
        masks = self._full(self.mask)
        if check:
            prox = self._prox()
            dropped, zero, _ = prox.count_zero()
            if zero < dropped:  # zero_at_freeze=False: the masked model must equal the compact one
                prox.hard_zero(optimizer if self.config.reset_optimizer_state else None)
        self.cut_report = {
            "step": self.global_step,
            "macs_before": self.space.flops(None),
            "macs_after": self.space.flops(masks),
            "params_before": self.space.params(None),
            "params_after": self.space.params(masks),
        }
        before = {id(p): p for p in self.model.parameters()}
        # check: kept for the results table, the comparison export() makes with surgery="end"
        self.space.prune_(self.model, masks, check=check, optimizer=optimizer, report=self.cut_report)
        now = {id(p) for p in self.model.parameters()}
        self._replaced = [weakref.ref(p) for i, p in before.items() if i not in now]
        self._optimizer_checked = False
        if _world_size() > 1 and not self.owner_rebuilds_wrappers:
            warnings.warn(
                "the network was cut in place: rebuild your DistributedDataParallel wrapper now "
                "(ddp = DistributedDataParallel(pruner.model, ...)); its buckets still have the dense sizes",
                stacklevel=3,
            )
        self.cut = True
        self.proximal = None
        self.controller = None
        self.controller_optimizer = None

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise (once checked, never again) if ``optimizer`` still holds parameters the cut replaced."""
        self._optimizer_checked = True
        old = {id(p) for r in self._replaced if (p := r()) is not None}
        self._replaced = []
        if any(id(p) in old for g in optimizer.param_groups for p in g["params"]):
            raise SurgeryError(
                "the optimizer given to pruner.step() still holds parameters of the network from before the cut, "
                "so it no longer trains the model: pass that optimizer to the call that cut (pruner.step(optimizer), "
                "or pruner.load_state_dict(state, optimizer=optimizer) when resuming), or build the optimizer "
                "after the cut from model.parameters()"
            )

    def apply_cut_(self, module: nn.Module) -> nn.Module:
        """Cut another copy of the uncut network (an EMA copy, say) in place to the frozen mask, and return it.

        The copy must have the architecture the pruner was built for (``copy.deepcopy`` of the model before
        the cut). Call it after the cut; raises if the mask is not final yet.
        """
        if not self.frozen or self.mask is None:
            raise SurgeryError("apply_cut_() needs the final mask: call it after the cut (pruner.cut is True)")
        return self.space.prune_(module, self._full(self.mask), check=False)

    # ----------------------------------------------------------------------------------------- ranks
    def _agree(self, keep: list[torch.Tensor]) -> list[torch.Tensor]:
        """Rank 0's masks on every rank (a no-op in a single process): every rank zeroes and cuts the same
        channels, whatever drifted."""
        if _world_size() == 1 or not keep:
            return keep
        flat = torch.cat([k.detach().reshape(-1).to(torch.uint8) for k in keep]).to(device_of(self.model))
        dist.broadcast(flat, src=0)
        parts = flat.cpu().bool().split([k.numel() for k in keep])
        return [p.reshape(k.shape) for p, k in zip(parts, keep)]

    def _broadcast_controller(self) -> None:
        """Rank 0's controller parameters and buffers on every rank (once after construction or a resume)."""
        self._ranks_synced = True
        if _world_size() == 1 or self.controller is None:
            return
        for t in [*self.controller.parameters(), *self.controller.buffers()]:
            dist.broadcast(t.data, src=0)

    def _average_over_ranks(
        self, grads: list[torch.Tensor], task: torch.Tensor
    ) -> tuple[list[torch.Tensor], float]:
        """Mean over ranks of the controller gradients and of the task loss (for logging)."""
        world = _world_size()
        if world == 1:
            return grads, float(task.detach())
        flat = torch.cat([g.reshape(-1) for g in grads] + [task.detach().reshape(1).to(grads[0].dtype)])
        dist.all_reduce(flat)
        flat /= world
        out = list(flat[:-1].split([g.numel() for g in grads]))
        return [o.reshape(g.shape) for o, g in zip(out, grads)], float(flat[-1])

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
        inputs, targets = to_device(tuple(self._next_holdout(batch))[:2], device_of(self.model))
        ctrl.train()
        params = [p for p in ctrl.parameters() if p.requires_grad]
        with torch.enable_grad():
            soft, hard = ctrl()
            with EvalMode(self.model), self.space.masked(self.model, self._full(soft)):
                task = self.criterion(call_model(self.model, inputs), targets)
            r = self.budget.kept_fraction(self.target.soft_cost(self.space, self._full(hard)))
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
                if not self.lr_decayed and t >= s.controller_lr_decay:
                    assert self.controller_optimizer is not None
                    for group in self.controller_optimizer.param_groups:
                        group["lr"] *= self.config.lr_decay_factor
                    self.lr_decayed = True
                if s.controller_step_due(t):
                    self._controller_step(batch)
            if s.mask_due(t) or (self.mask is None and s.proximal_active(t)):
                self._set_mask(self._agree(ctrl.sample()))
        if s.proximal_active(t) and self.mask is not None:
            lr = float(optimizer.param_groups[0]["lr"])
            opt = optimizer if self.config.reset_optimizer_state else None
            self._prox().step(s.lam(t), lr, opt)
        return False

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
            if s.controller_active(t) and t < s.decide_at:
                if not self.lr_decayed and t >= s.controller_lr_decay:
                    assert self.controller_optimizer is not None
                    for group in self.controller_optimizer.param_groups:
                        group["lr"] *= self.config.lr_decay_factor
                    self.lr_decayed = True
                if s.controller_step_due(t):
                    self._controller_step(batch)
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

    # ----------------------------------------------------------------------------------------- reporting
    def _removed(self, keep: list[torch.Tensor] | None) -> tuple[float, float]:
        masks = None if keep is None else self._full(keep)
        flops = 1.0 - self.space.flops(masks) / max(1, self.space.flops(None))
        params = 1.0 - self.space.params(masks) / max(1, self.space.params(None))
        return flops, params

    def metrics(self) -> dict[str, float]:
        """Numbers for logging (metrics.csv / TensorBoard), all floats."""
        t = self.global_step
        flops, params = self._removed(self.mask)
        out = {
            "ato/frozen": float(self.frozen),
            "ato/lambda": self.schedule.lam(t)
            if self.config.variant == "paper" and self.schedule.proximal_active(t)
            else 0.0,
            "ato/decided": float(self.decided or self.frozen),
            "ato/target_removed": float(self.target.remove),
            "ato/flops_removed": flops,
            "ato/params_removed": params,
        }
        if self.controller is not None and not self.frozen:
            # The controller's own noiseless choice (plain threshold, before any calibration): watching it
            # approach the target shows the search converging.
            removed = self._removed(self.controller.sample(deterministic=True))
        else:
            removed = (flops, params)
        out["ato/controller_removed"] = removed[0 if self.target.kind == "flops" else 1]
        if self.proximal is not None:
            dropped, zero, worst = self.proximal.count_zero()
        else:  # cut: the dropped channels are gone, i.e. exactly zero
            dropped = zero = sum(int((~k).sum()) for k in self.mask or [])
            worst = 0.0
        out["ato/cut"] = float(self.cut)
        out["ato/dropped_channels"] = float(dropped)
        out["ato/dropped_groups"] = float(sum(1 for k in self.mask or [] if not bool(k.all())))
        out["ato/zero_channels"] = float(zero)
        out["ato/max_dropped_norm"] = worst
        for key in ("task_loss", "resource_loss", "kept_fraction"):
            out[f"ato/{key}"] = self.last.get(key, float("nan"))
        for key, value in self.freeze_report.items():  # from the freeze on
            out[f"ato/freeze_{key}"] = float(value)
        return out

    def mask_summary(self) -> dict[str, Any]:
        """The mask per group as plain data (for mask.json): name, size, kept count and the 0/1 keep list."""
        groups = []
        for gi, keep in zip(self.prunable, self.mask or [None] * len(self.prunable)):
            g = self.space.groups[gi]
            k = torch.ones(g.size, dtype=torch.bool) if keep is None else keep
            groups.append({"name": g.name, "size": g.size, "kept": int(k.sum()), "keep": k.int().tolist()})
        flops, params = self._removed(self.mask)
        return {
            "target": {"kind": self.target.kind, "remove": self.target.remove, "p": self.budget.p},
            "frozen": self.frozen,
            "cut": self.cut,
            "step": self.global_step,
            "flops_removed": flops,
            "params_removed": params,
            "groups": groups,
        }

    # ----------------------------------------------------------------------------------------- export
    @torch.no_grad()
    def export(self) -> nn.Module:
        """The physically pruned model; checks that it computes what the masked model computes.

        Raises SurgeryError when the outputs differ by more than ``tolerance`` on ``example_inputs``.
        After a cut (surgery="freeze") it returns :attr:`model` itself, once a probe run on ``example_inputs``
        shows that it runs and returns finite outputs.
        """
        if not self.frozen:
            warnings.warn(
                f"AutoTrainOnce.export() at step {self.global_step}, before the mask froze "
                f"(step {self.schedule.freeze_at}); freezing now, the dropped channels are hard-zeroed",
                stacklevel=2,
            )
            self.freeze()
        if self.cut:
            return self._export_cut()
        assert self.mask is not None
        prox = self._prox()
        dropped, zero, worst = prox.count_zero()
        if zero < dropped:
            warnings.warn(
                f"{dropped - zero} of {dropped} dropped channels were not exactly zero at export "
                f"(largest norm {worst:.3g}); setting them to zero changes the trained function",
                stacklevel=2,
            )
            prox.hard_zero()
            dropped, zero, worst = prox.count_zero()
        if zero != dropped:  # an invariant of hard_zero, not a user error
            raise SurgeryError(f"{dropped - zero} dropped channels are still non-zero after hard-zeroing")
        masks = self._full(self.mask)
        compact = self.space.prune(self.model, masks)
        inputs = to_device(self.example_inputs, device_of(self.model))
        with EvalMode(self.model, compact), exact_math():
            with self.space.masked(self.model, masks):
                ref = output_tensors(call_model(self.model, inputs))
            dense = output_tensors(call_model(self.model, inputs))
            out = output_tensors(call_model(compact, to_device(inputs, device_of(compact))))
        if len(ref) != len(out):
            raise SurgeryError(f"the compact model returns {len(out)} tensors, the masked model {len(ref)}")
        diff = max((float((a.float() - b.float().to(a.device)).abs().max()) for a, b in zip(ref, out)), default=0.0)
        dense_diff = max((float((a.float() - b.float()).abs().max()) for a, b in zip(dense, ref)), default=0.0)
        # Relative to the output size, as space.prune checks: float32 rounding grows with the logits.
        scale = max((float(a.float().abs().max()) for a in ref if a.numel()), default=0.0)
        self.export_report = {"max_abs_diff": diff, "max_abs_diff_dense": dense_diff, "output_scale": scale}
        if not diff <= self.config.tolerance * max(1.0, scale):
            raise SurgeryError(
                f"the pruned model differs from the masked model by {diff:.3g} (> {self.config.tolerance:g} x "
                f"max(1, output scale {scale:.3g})) on the example inputs; a channel group is probably wrong "
                "for this architecture"
            )
        self.controller = None  # the controller has done its job; free it
        self.controller_optimizer = None
        return compact

    def _export_cut(self) -> nn.Module:
        inputs = to_device(self.example_inputs, device_of(self.model))
        with EvalMode(self.model):
            out = output_tensors(call_model(self.model, inputs))
        if not out or not all(bool(torch.isfinite(o.float()).all()) for o in out):
            raise SurgeryError("the compact model returned no or non-finite outputs on the example inputs")
        # The masked-vs-compact comparison was made at the cut, while the dense network still existed.
        self.export_report = {k: self.cut_report[k] for k in ("max_abs_diff", "output_scale") if k in self.cut_report}
        return self.model

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically; loads with ``torch.load(weights_only=True)``."""
        return {
            "version": 1,
            "global_step": self.global_step,
            "total_steps": self.schedule.total_steps,
            "frozen": self.frozen,
            "decided": self.decided,
            "cut": self.cut,
            "lr_decayed": self.lr_decayed,
            "controller": None if self.controller is None else self.controller.state_dict(),
            "controller_optimizer": None
            if self.controller_optimizer is None
            else self.controller_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "mask": None if self.mask is None else [m.clone() for m in self.mask],
            "holdout_drawn": 0 if self.holdout is None else self.holdout.drawn,
            "last": dict(self.last),
            "freeze_report": dict(self.freeze_report),
        }

    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Restore :meth:`state_dict`; call before the first :meth:`step` of the resumed run.

        A state written after the cut cuts the model in place again, before its weights are loaded: load this
        first, then ``model.load_state_dict(...)``; pass the ``optimizer`` already built over the dense model
        (it is moved onto the compact parameters) or build the optimizer afterwards.
        """
        if state.get("version") != 1:
            raise ConfigError(f"unknown AutoTrainOnce state version {state.get('version')!r}")
        if state["total_steps"] != self.schedule.total_steps:
            warnings.warn(
                f"resuming an ATO run planned for {state['total_steps']} steps with total_steps="
                f"{self.schedule.total_steps}; the schedule boundaries move",
                stacklevel=2,
            )
        sizes = [self.space.groups[i].size for i in self.prunable]
        if state["mask"] is not None and [len(m) for m in state["mask"]] != sizes:
            raise CheckpointError(
                f"the ATO state holds masks of sizes {[len(m) for m in state['mask']]}, but this model's prunable "
                f"groups have sizes {sizes}; the checkpoint belongs to another model"
            )
        if state["controller"] is not None and self.controller is not None:
            try:
                self.controller.load_state_dict(state["controller"])
            except RuntimeError as e:
                raise CheckpointError(f"the ATO controller state does not fit this model: {e}") from e
            assert self.controller_optimizer is not None
            self.controller_optimizer.load_state_dict(state["controller_optimizer"])
        elif state["controller"] is None:
            self.controller = None
            self.controller_optimizer = None
        self.generator.set_state(state["generator"])
        self.global_step = int(state["global_step"])
        self.frozen = bool(state["frozen"])
        self.decided = bool(state.get("decided", False))  # absent in states written before the variants
        self.lr_decayed = bool(state["lr_decayed"])
        if state["mask"] is not None:
            self._set_mask([torch.as_tensor(m) for m in state["mask"]])
        else:
            self.mask = None
        self.last = {str(k): float(v) for k, v in state["last"].items()}
        # states written before the freeze report existed have none (same version: the key is optional)
        self.freeze_report = {str(k): float(v) for k, v in (state.get("freeze_report") or {}).items()}
        if state.get("cut") and not self.cut:
            # Rebuild the compact architecture; its weights come from the caller's model checkpoint.
            self._cut(optimizer, check=False)
        if self.holdout is not None:
            self.holdout.resume(int(state["holdout_drawn"]))
            _seek_holdout(self.holdout, int(state["holdout_drawn"]))
        self._ranks_synced = False
