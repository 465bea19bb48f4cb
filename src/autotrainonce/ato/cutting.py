"""ATO's decisive moments: the decision (variant 'decide'), the freeze and the in-place cut."""

from __future__ import annotations

import logging
import warnings
import weakref

import torch
from torch import nn

from ..errors import SurgeryError
from ..measure import eval_outputs, relative_output_change
from ..space.selection import channel_scores, greedy_masks, round_widths
from ._utils import device_of, to_device
from .instruments import freeze_report, order_agreement
from .ranks import is_rank0, world_size

__all__ = ["Cutting"]

log = logging.getLogger("autotrainonce.ato.algorithm")


class Cutting:
    """AutoTrainOnce's decide / freeze / cut, and the checks that keep the user's references valid after it."""

    def decide(self) -> None:
        """variant="decide": fix the mask now to :meth:`final_mask` and stop the controller; from the next step
        the dropped channels ramp to exactly zero at ``freeze_at``, where the freeze cuts this very mask."""
        if self.decided or self.frozen:
            return
        self.decision_report = self._order_report()
        by = self.config.decide_by
        if by == "controller":
            mask = self._rounded(self.final_mask())
        elif by == "widths":
            mask = self._widths_mask(self._rounded(self.final_mask()))
        else:
            mask = self._control_mask(by)
        self._set_mask(self._agree(mask))
        self.decided = True
        if is_rank0():
            flops, params = self._removed(self.mask)
            log.info(
                "ATO: mask decided at step %d (removes %.1f%% MACs, %.1f%% params); ramping its dropped channels "
                "to zero until the freeze at step %d", self.global_step, 100 * flops, 100 * params,
                self.schedule.freeze_at,
            )

    def _order_report(self) -> dict[str, float]:
        """How the controller orders each group's channels at the decision: ``init_order`` (against its order at
        initialisation; 1 = unchanged, NaN when its heads started at zero and had no order) and ``l1_order``
        (against the channels' L1 norms now). Empty without a controller."""
        ctrl = self.controller
        if ctrl is None:
            return {}
        now = ctrl.scores()  # order_agreement ranks on the CPU
        init = self._new_controller(torch.Generator().manual_seed(int(self.config.seed))).scores()
        l1 = channel_scores(self.space, self.model)
        return {"init_order": order_agreement(init, now), "l1_order": order_agreement(now, [l1[gi] for gi in self.prunable])}

    def _widths_mask(self, mask: list[torch.Tensor]) -> list[torch.Tensor]:
        """decide_by="widths": as many channels per group as ``mask`` keeps, but the largest-L1 ones (the cost
        depends on the counts only, so the target is met exactly as by ``mask``)."""
        scores = channel_scores(self.space, self.model)
        out = []
        for gi, keep in zip(self.prunable, mask):
            chosen = torch.zeros_like(keep, dtype=torch.bool)
            chosen[torch.topk(scores[gi], int(keep.sum())).indices] = True
            out.append(chosen)
        return out

    def _rounded(self, mask: list[torch.Tensor], scores: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """``mask`` with kept widths in multiples of ``round_to`` at the cost nearest the target; channels added
        or removed at the margin by ``scores`` (default: the controller's noiseless keep probabilities)."""
        if self.config.round_to <= 1:
            return mask
        if scores is None:
            if self.controller is None:
                scores = channel_scores(self.space, self.model)
            else:
                scores = {gi: torch.sigmoid(s.cpu().double()) for gi, s in zip(self.prunable, self.controller.scores())}
        cfg = self.config
        return self._prunable_part(
            round_widths(self.space, self._full(mask), scores, self.target, cfg.round_to, cfg.min_channels)
        )

    def _control_mask(self, by: str) -> list[torch.Tensor]:
        """Ablation controls of the decision (decide_by): the lowest-L1 channels, or random ones, dropped
        globally until the target is met exactly, as the magnitude baselines choose."""
        if by == "magnitude":
            scores = channel_scores(self.space, self.model)
        else:
            scores = {gi: torch.rand(self.space.groups[gi].size, generator=self.generator, dtype=torch.float64)
                      for gi in self.prunable}  # fmt: skip
        full = greedy_masks(self.space, scores, self.target, self.target.remove, self.config.min_channels)
        return self._rounded(self._prunable_part(full), scores)

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
        if not self.decided:  # the paper variant decides at the freeze
            self.decision_report = self._order_report()
        self._set_mask(self._agree(self.final_mask() if self.decided else self._rounded(self.final_mask())))
        self.frozen = True
        if self.config.zero_at_freeze:
            opt = optimizer if self.config.reset_optimizer_state else None
            self.last["zeroed_at_freeze_max_norm"] = prox.hard_zero(opt)
        if self.config.surgery == "freeze":
            self._cut(optimizer)
        change = relative_output_change(before, eval_outputs(self.model, inputs))
        assert self.mask is not None
        self.freeze_report = r = freeze_report(self.global_step, draw, self.mask, norms, change, self.decision_report)
        if is_rank0():
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
        if world_size() > 1 and not self.owner_rebuilds_wrappers:
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
