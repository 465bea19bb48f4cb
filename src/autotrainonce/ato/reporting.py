"""What ATO reports and returns: metrics, the mask summary (mask.json), the checked export, its state."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, SurgeryError
from ..space.surgery import exact_math
from ._utils import EvalMode, call_model, device_of, output_tensors, to_device
from .ranks import seek_holdout

__all__ = ["Reporting"]

log = logging.getLogger("autotrainonce.ato.algorithm")


class Reporting:
    """AutoTrainOnce's metrics, mask summary, export (with the equivalence check) and state_dict / load_state_dict."""

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
            "decision_report": dict(self.decision_report),
            "decided_early_at": self.decided_early_at,
            "stable_run": self._stable_run,
            "stable_prev": None if self._stable_prev is None else [m.clone() for m in self._stable_prev],
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
        self.decision_report = {str(k): float(v) for k, v in (state.get("decision_report") or {}).items()}
        # absent in states written before decide_when existed (same version: the keys are optional)
        early = state.get("decided_early_at")
        self.decided_early_at = None if early is None else int(early)
        self._move_decision()
        self._stable_run = int(state.get("stable_run", 0))
        prev = state.get("stable_prev")
        self._stable_prev = None if prev is None else [torch.as_tensor(m) for m in prev]
        if state.get("cut") and not self.cut:
            # Rebuild the compact architecture; its weights come from the caller's model checkpoint.
            self._cut(optimizer, check=False)
        if self.holdout is not None:
            self.holdout.resume(int(state["holdout_drawn"]))
            seek_holdout(self.holdout, int(state["holdout_drawn"]))
        self._ranks_synced = False
