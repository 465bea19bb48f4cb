"""Any registered pruner as a Trainer callback, and the factory the Trainer and the CLI call."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ..core.callbacks import Callback
from ..core.pruner import Pruner
from ..errors import ConfigError
from ..space.targets import Flops, Params, Target

__all__ = ["PrunerCallback", "make_callback", "target_from_config", "MASK_FILE", "WIDTHS_FILE", "SPACE_OPTIONS"]

log = logging.getLogger(__name__)

#: options of the pruning space that every method built by name takes (make_callback discovers with them)
SPACE_OPTIONS = ("split_fixed",)
MASK_FILE = "mask.json"
WIDTHS_FILE = "widths.png"


class PrunerCallback(Callback):
    """Runs a :class:`~autotrainonce.core.Pruner` inside ``Trainer.fit``: one step after every optimizer step.

    Writes ``mask.json`` into the run directory when the mask becomes final (and ``widths.png`` at the end); in
    a distributed run only the main process writes (``trainer.is_main``), while every rank steps its own pruner
    in lockstep. The pruner works on ``trainer.model``, the plain module, never on the DDP wrapper. The
    checkpoint key is the method's name (``"ato"``, ``"l1"``, ...).
    """

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner
        pruner.owner_rebuilds_wrappers = True  # the Trainer rebuilds its DDP wrapper after the cut
        self._warned_step = False

    @property
    def state_key(self) -> str:
        return self.pruner.name or type(self.pruner).__name__

    def on_fit_start(self, trainer: Any) -> None:
        spe = getattr(trainer, "steps_per_epoch", None)
        set_spe = getattr(self.pruner, "set_steps_per_epoch", None)  # methods with per-epoch schedules
        if spe and set_spe is not None:
            set_spe(int(spe))

    def on_after_optimizer_step(self, trainer: Any, optimizer: Optimizer) -> None:
        p = self.pruner
        expected = int(trainer.global_step) - 1
        if p.global_step != expected:
            # The trainer's step counter is the truth (e.g. a resume from a checkpoint without ATO state).
            if not self._warned_step:
                warnings.warn(
                    f"{self.state_key} step counter {p.global_step} != trainer step {expected}; following the trainer",
                    stacklevel=2,
                )
                self._warned_step = True
            p.global_step = expected
        was_final = _final(p)
        # the training batch of this step: ATO's controller learns from it when the run holds no data out
        cut = p.step(optimizer, batch=getattr(trainer, "batch", None))
        if _final(p) and not was_final and _is_main(trainer):
            self.write_mask(getattr(trainer, "run_dir", None))
        if cut:
            # The model was cut in place and the optimizer's state sliced; keep both and the LR schedule. Every
            # rank cuts at this same step with the same (broadcast) mask; the Trainer rebuilds its DDP wrapper
            # (and takes the copy when an in-place cut was impossible).
            trainer.replace_model(p.model, optimizer=trainer.optimizer, scheduler=getattr(trainer, "scheduler", None))
            p.model = trainer.model
            r = p.cut_report
            if _is_main(trainer):
                log.info(
                    "%s: cut at step %d: MACs %d -> %d, params %d -> %d", self.state_key.upper(),
                    r["step"], r["macs_before"], r["macs_after"], r["params_before"], r["params_after"],
                )  # fmt: skip

    def on_load_checkpoint(self, trainer: Any, ckpt: dict[str, Any]) -> None:
        # Called after load_state_dict and before the model/optimizer states load: when the checkpoint was
        # written after the cut, the pruner rebuilt the compact architecture; train it with a fresh optimizer
        # (same hyper-parameters) whose state then comes from the checkpoint.
        p = self.pruner
        if p.cut:  # the trainer's optimizer holds the dense parameters; a fresh one takes the checkpoint's state
            trainer.replace_model(p.model)
            p.model = trainer.model

    def on_train_epoch_end(self, trainer: Any, epoch: int) -> dict[str, float] | None:
        return self.pruner.metrics()

    def on_fit_end(self, trainer: Any) -> None:
        run_dir = getattr(trainer, "run_dir", None)
        summary = self.pruner.mask_summary()
        if run_dir is None or summary is None or not _is_main(trainer):
            return
        self.write_mask(run_dir)
        from ..viz import plot_widths

        plot_widths(summary, Path(run_dir) / WIDTHS_FILE)

    def write_mask(self, run_dir: str | Path | None) -> Path | None:
        """Write the current mask per group to ``run_dir/mask.json``; returns the path (None without a dir)."""
        summary = self.pruner.mask_summary()
        if run_dir is None or summary is None:
            return None
        path = Path(run_dir) / MASK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1))
        return path

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state)

    def export(self) -> nn.Module:
        """The physically pruned model (see :meth:`Pruner.export`)."""
        return self.pruner.export()


def _final(pruner: Pruner) -> bool:
    """Whether the pruner's mask is final (ATO: frozen; others: once cut)."""
    return bool(getattr(pruner, "frozen", pruner.cut))


def _is_main(trainer: Any) -> bool:
    """Whether this process writes files: the Trainer's ``is_main``; trainer-like objects without it do."""
    return bool(getattr(trainer, "is_main", True))


def target_from_config(prune_cfg: Any) -> Target:
    """``Flops`` or ``Params`` from a prune config's ``remove_flops`` / ``remove_params`` (exactly one)."""
    flops = getattr(prune_cfg, "remove_flops", None)
    params = getattr(prune_cfg, "remove_params", None)
    if (flops is None) == (params is None):
        raise ConfigError(
            "pruning needs exactly one target: set prune.remove_flops (fraction of MACs) or prune.remove_params "
            f"(fraction of parameters), got remove_flops={flops!r}, remove_params={params!r}"
        )
    return Flops(remove=float(flops)) if flops is not None else Params(remove=float(params))


def make_callback(
    prune_cfg: Any, model: nn.Module, example_inputs: Any, holdout_loader: Any, total_steps: int
) -> PrunerCallback:
    """Build the registered method ``prune_cfg.method`` (with ``.remove_flops``/``.remove_params`` and
    ``.options``) for ``model`` and wrap it as a Trainer callback."""
    from . import create  # the registry imports this module

    method = str(getattr(prune_cfg, "method", "ato")).lower()
    options = dict(getattr(prune_cfg, "options", None) or {})
    space_options = {k: option_bool(options.pop(k), k) for k in SPACE_OPTIONS if k in options}
    if space_options:  # options of the pruning space, shared by every method: build the space here
        from ..space import discover

        options["space"] = discover(model, example_inputs, **space_options)
    pruner = create(method, model, example_inputs, target_from_config(prune_cfg), holdout_loader,
                    total_steps=int(total_steps), **options)  # fmt: skip
    return PrunerCallback(pruner)


def option_bool(value: Any, name: str) -> bool:
    """``value`` from a config file, a CLI override or a bench method string as a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"option {name} must be true or false, got {value!r}")
