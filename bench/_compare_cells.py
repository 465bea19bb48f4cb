"""One cell of bench/compare.py: train one (model, method, target, seed) and measure its compact model.

Every method trains through the same :class:`~autotrainonce.training.Trainer` with the same data, model,
optimizer recipe and epochs; a method is a set of Trainer callbacks plus a ``finish`` step that hands back
the compact network. Runs in the main process or in a worker process (``--jobs``); a cell returns a plain
dict, and saves its compact model for the latency measurement that compare.py does afterwards.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml
from _common import EpochTimer, probe_images, warm_up_models
from _peers import (
    OtoHessoCallback,
    TorchPruningCallback,
    missing_peer,
    probe_outputs,
    relative_change,
)
from _turns import Turnstile, TurnTaker
from torch import nn
from torch.utils.data import DataLoader

from autotrainonce import data, discover, models
from autotrainonce.config import Config, merge_overrides
from autotrainonce.measure import count_macs, count_params, relative_output_change
from autotrainonce.runner import build_data, resolve_model_config
from autotrainonce.space import PruningSpace
from autotrainonce.training import Callback, Trainer
from autotrainonce.training.evaluation import evaluate_model
from autotrainonce.training.utils import count_steps, resolve_device, seed_everything

__all__ = [
    "METHODS",
    "PRUNING_METHODS",
    "split_method",
    "parse_methods",
    "LIBRARY_METHODS",
    "CellSpec",
    "run_cell",
    "safe_run_cell",
    "warm_up",
    "worker_init",
    "kept_widths",
    "window_steps",
]

log = logging.getLogger("bench.compare")

METHODS = ("dense", "ato", "ato-freeze", "torch-pruning", "oto-hesso", "l1-oneshot", "magnitude")
PRUNING_METHODS = METHODS[1:]
LIBRARY_METHODS = ("dense", "ato", "ato-freeze", "l1-oneshot", "magnitude")  # a failure here is a failure of the benchmark
OPTION_METHODS = ("ato", "ato-freeze", "l1-oneshot", "magnitude")  # methods that take [key=value;...] options
# cell options that belong to the data config (e.g. ato-freeze[holdout_fraction=0]: no held-out split)
DATA_OPTIONS = ("holdout_fraction",)
CUT_TOLERANCE = 1e-3  # relative output change above which a cut is lossy (the network must train on after it)
# ATO's freeze report (AutoTrainOnce.freeze_report) in the rows, as freeze_<key> columns
FREEZE_KEYS = ("hamming", "hamming_frac", "shrunk_kept", "cut_unshrunk", "kept_near_zero", "kept_near_zero_frac",
               "kept_zero", "init_order", "l1_order")  # fmt: skip


def split_method(method: str) -> tuple[str, dict[str, Any]]:
    """``"ato-freeze[variant=paper;decide_at=0.3]"`` -> ``("ato-freeze", {"variant": "paper", "decide_at": 0.3})``.

    The options (values read as YAML) go to that cell's pruner options only, so one invocation can put
    several settings of a library method side by side (an ablation) with the same dense runs and seeds.
    """
    text = method.strip()
    if "[" not in text:
        return text, {}
    if not text.endswith("]") or text.count("[") != 1 or text.count("]") != 1:
        raise ValueError(f"method {method!r}: write options as name[key=value;key=value]")
    base, _, body = text[:-1].partition("[")
    options: dict[str, Any] = {}
    for item in filter(None, (i.strip() for i in body.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"method {method!r}: option {item!r} is not key=value")
        options[key.strip()] = yaml.safe_load(value)
    if options and base.strip() not in OPTION_METHODS:
        raise ValueError(f"method {base!r} takes no options (only {', '.join(OPTION_METHODS)} do)")
    return base.strip(), options


def parse_methods(text: str, sep: str = ",") -> list[str]:
    """``sep``-separated methods; separators inside ``[...]`` belong to the options."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == sep and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [m for m in out if m]


@dataclass(frozen=True)
class CellSpec:
    """Everything a (possibly separate) process needs to run one cell."""

    model: str
    method: str
    target: float | None  # fraction of MACs to remove; None for dense
    seed: int
    config: Config  # the shared recipe (data, optimizer, schedule, epochs, ATO options)
    out_dir: str
    window: tuple[float, float] = (0.2, 0.51)  # pruning window as fractions of training
    prune_steps: int = 5  # Torch-Pruning steps inside the window
    hesso_periods: int = 1  # HESSO pruning periods inside the window (OTO's default: 1)
    extra: dict[str, Any] = field(default_factory=dict)
    turn: int | None = None  # --interleave: this cell's index in its group's turnstile

    @property
    def base(self) -> str:
        """The method without its ``[options]``."""
        return split_method(self.method)[0]

    @property
    def options(self) -> dict[str, Any]:
        """This cell's own pruner options (from ``method[key=value;...]``)."""
        return split_method(self.method)[1]

    @property
    def name(self) -> str:
        method = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.method).strip("_")  # a folder name
        tag = method if self.target is None else f"{method}{self.target * 100:g}"
        return f"{self.model}-s{self.seed}-{tag}"

    @property
    def target_pct(self) -> float:
        return 0.0 if self.target is None else 100.0 * self.target


# ------------------------------------------------------------------------------------------------ helpers
def window_steps(window: tuple[float, float], total_steps: int, steps: int) -> list[int]:
    """``steps`` optimizer-step numbers (1-based) spread evenly from the start to the end of ``window``."""
    start = max(1, min(total_steps, round(window[0] * total_steps)))
    end = max(start, min(total_steps, round(window[1] * total_steps)))
    if steps <= 1:
        return [end]
    return sorted({round(start + (end - start) * k / (steps - 1)) for k in range(steps)})


def kept_widths(dense: nn.Module, compact: nn.Module) -> dict[str, float]:
    """Kept fraction of output channels of every conv of ``dense`` (by module name) in ``compact``."""
    out: dict[str, float] = {}
    for name, module in dense.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        try:
            other = compact.get_submodule(name)
        except AttributeError:
            continue
        out[name] = float(other.out_channels) / float(module.out_channels)
    return out


def _prunable_modules(space: PruningSpace) -> list[str]:
    """Modules producing channels of prunable groups (the layers whose widths a pruner may change)."""
    names = {m.module for g in space.groups if g.prunable for m in g.members if m.role == "out"}
    return sorted(n for n in names if n)


def _unprunable_modules(space: PruningSpace) -> list[str]:
    """Modules producing channels of unprunable groups (outputs, residual streams behind a padding shortcut)."""
    names = {m.module for g in space.groups if not g.prunable for m in g.members if m.role == "out"}
    return sorted(n for n in names if n)


def _loader(ds: Any, batch_size: int, device: torch.device, train: bool) -> DataLoader:
    n = len(ds)
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train and n >= batch_size,
                      num_workers=0, pin_memory=device.type == "cuda")  # fmt: skip


# ------------------------------------------------------------------------------------------------ our methods
class _CutProbe:
    """Measures how much a pruner's decisive method (ATO's ``freeze``: hard zeroing and, with surgery="freeze",
    the cut; the magnitude methods' ``_cut``) changes the outputs on the probe batch, the first time it runs:
    ``change`` (max-abs, :func:`relative_change`) and ``l2`` (:func:`autotrainonce.measure.relative_output_change`,
    the definition of the library's own ``output_change`` reports)."""

    def __init__(self, pruner: Any, probe: torch.Tensor, method: str = "freeze") -> None:
        self.probe = probe
        self.change = math.nan
        self.l2 = math.nan
        original = getattr(pruner, method)

        def observed(*args: Any, **kwargs: Any) -> Any:
            if not math.isnan(self.change) or getattr(pruner, "frozen", False):
                return original(*args, **kwargs)
            before = probe_outputs(pruner.model, probe)
            out = original(*args, **kwargs)
            after = probe_outputs(pruner.model, probe)
            self.change = relative_change(before, after)
            self.l2 = relative_output_change(before, after)
            return out

        setattr(pruner, method, observed)  # instance attribute: only this pruner is observed


@dataclass
class _Method:
    """What one method adds to the shared Trainer run."""

    callbacks: list[Callback]
    finish: Callable[[Trainer], nn.Module]
    cut_changes: Callable[[], list[float]]
    describe: Callable[[], str]
    search_seconds: Callable[[], float] = lambda: 0.0
    #: L2 relative output change of each removal (row["cut_change_l2"] is the largest)
    out_changes: Callable[[], list[float]] = lambda: []
    #: extra row values read after ``finish`` (ATO: its freeze report)
    instruments: Callable[[], dict[str, Any]] = lambda: {}
    #: the step of the method's last cut (None: the end of the pruning window), for the pre-cut epochs
    cut_step: Callable[[], int | None] = lambda: None


def _setup(spec: CellSpec, cfg: Config, model: nn.Module, example: torch.Tensor, probe: torch.Tensor,
           holdout: DataLoader | None, total_steps: int, cell_dir: Path, dense_macs: int) -> _Method:  # fmt: skip
    """The callbacks and the finishing step of ``spec.method``."""
    method = spec.base
    if method == "dense":
        return _Method([], lambda t: t.model, lambda: [], lambda: "")
    if method in ("ato", "ato-freeze"):
        from autotrainonce.pruners import make_callback

        cb = make_callback(cfg.prune, model, example, holdout, total_steps)
        cut_probe = _CutProbe(cb.pruner, probe)
        state: dict[str, float] = {}

        def finish(trainer: Trainer) -> nn.Module:
            compact = cb.export()
            if not cb.pruner.cut:  # surgery="end": the masked trained network against the exported one
                with cb.pruner.space.masked(trainer.model, cb.pruner.current_masks()):
                    masked = probe_outputs(trainer.model, probe)
                state["export"] = relative_change(masked, probe_outputs(compact, probe))
            return compact

        def freeze_instruments() -> dict[str, Any]:
            report = dict(cb.pruner.freeze_report)
            return {"freeze_report": report, **{f"freeze_{k}": report.get(k, math.nan) for k in FREEZE_KEYS}}

        options = cfg.prune.options
        return _Method(
            [cb], finish,
            lambda: [c for c in (cut_probe.change, state.get("export", math.nan)) if not math.isnan(c)],
            lambda: f"surgery={options.get('surgery', 'end')}, hyper_step={cb.pruner.schedule.hyper_step}, "
            f"controller batch {cb.pruner.config.controller_rows(cb.pruner.schedule.cost_capped) or 'all'}, holdout {100 * cfg.data.holdout_fraction:g}%"
            + (f", variant={options['variant']}" if "variant" in options else "")  # ablations tell rows apart
            + "".join(f", {k}={options[k]}" for k in ("controller_start", "decide_at", "freeze_at", "round_to") if k in options),
            out_changes=lambda: [cut_probe.l2], instruments=freeze_instruments,
            cut_step=lambda: cb.pruner.schedule.freeze_at,
        )  # fmt: skip
    if method in ("l1-oneshot", "magnitude"):  # the library's registered methods, built as `ato train` builds them
        from autotrainonce.pruners import make_callback

        at = window_steps(spec.window, total_steps, 1)[0]
        if method == "l1-oneshot":
            name, opts = "l1", {"at": at}
        else:  # progressive: spec.prune_steps decisions across the window, the cut at its end (as Torch-Pruning)
            start = window_steps(spec.window, total_steps, 2)[0]
            name, opts = "magnitude", {"start": start, "at": at, "stages": max(1, spec.prune_steps)}
        opts.update({k: v for k, v in spec.options.items() if k not in DATA_OPTIONS})
        l1_cfg = SimpleNamespace(method=name, remove_flops=float(spec.target), remove_params=None, options=opts)
        l1 = make_callback(l1_cfg, model, example, None, total_steps)
        l1_probe = _CutProbe(l1.pruner, probe, "_cut")

        def l1_removed() -> float:
            r = l1.pruner.cut_report
            return 1.0 - r["macs_after"] / r["macs_before"] if r else math.nan

        return _Method([l1], lambda t: l1.export(), lambda: [l1_probe.change],
                       lambda: f"{l1.pruner.describe()} ({100 * l1_removed():.1f}% MACs by the exact cost)",
                       out_changes=lambda: [l1_probe.l2], cut_step=lambda: l1.pruner.cut_step)  # fmt: skip
    # The peers always get the whole-group space, also when the library's methods run with split_fixed=1: a
    # layer with any fixed channel (a residual stream behind a zero-padding shortcut) stays out of their reach,
    # because neither library rewrites the padding (docs/decisions.md).
    space = discover(copy.deepcopy(model).eval(), example, split_fixed=False)
    unprunable = _unprunable_modules(space)
    if method == "torch-pruning":
        at = window_steps(spec.window, total_steps, spec.prune_steps)
        tp_cb = TorchPruningCallback(float(spec.target), at, example, unprunable, dense_macs, probe)
        return _Method([tp_cb], lambda t: t.model, lambda: tp_cb.cut_changes, tp_cb.describe,
                       lambda: tp_cb.search_seconds, out_changes=lambda: tp_cb.out_changes,
                       cut_step=lambda: max(at))  # fmt: skip
    if method == "oto-hesso":
        steps = window_steps(spec.window, total_steps, 2)
        params = [
            f"{name}.{p}" for name in unprunable for p, _ in model.get_submodule(name).named_parameters()
        ]
        (cell_dir / "oto").mkdir(parents=True, exist_ok=True)
        oto_cb = OtoHessoCallback(
            float(spec.target), steps[0], steps[-1] - steps[0], spec.hesso_periods, example, params, dense_macs,
            probe, str(cell_dir / "oto"), momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
        )  # fmt: skip
        return _Method([oto_cb], oto_cb.finish, lambda: [oto_cb.cut_change], oto_cb.describe,
                       lambda: oto_cb.search_seconds, out_changes=lambda: [oto_cb.out_change],
                       cut_step=lambda: steps[-1])  # fmt: skip
    raise ValueError(f"unknown method {method!r}")


# ------------------------------------------------------------------------------------------------ one cell
def cell_config(spec: CellSpec) -> Config:
    """The shared recipe with this cell's model, seed, run name and (for ATO) the target and surgery."""
    prune: dict[str, Any] = {"method": "none"}
    cell_options = dict(spec.options)
    data_options = {k: cell_options.pop(k) for k in DATA_OPTIONS if k in cell_options}
    if spec.base in ("ato", "ato-freeze"):
        options = dict(spec.config.prune.options)
        options["surgery"] = "freeze" if spec.base == "ato-freeze" else "end"
        options.update(cell_options)
        prune = {"method": "ato", "remove_flops": spec.target, "options": options}
    overrides: dict[str, Any] = {"model": {"name": spec.model}, "run": {"seed": spec.seed, "name": spec.name},
                                 "prune": prune}  # fmt: skip
    if data_options:
        overrides["data"] = data_options
    return merge_overrides(spec.config, overrides)


#: --interleave: the turnstile of this worker's group (set by worker_init)
_TURNSTILE: Turnstile | None = None


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """Train and measure one cell; raises on failure (see :func:`safe_run_cell`).

    With ``spec.turn`` (``--interleave``) the cell trains in turns with the other cells of its group and its
    times count only its own turns (set-up, training with the pruner's work, export)."""
    taker = None
    if spec.turn is not None:
        if _TURNSTILE is None:
            raise RuntimeError("an interleaved cell needs the worker's turnstile (worker_init(turnstile=...))")
        taker = TurnTaker(_TURNSTILE, spec.turn)
        taker.start()
    try:
        return _run_cell(spec, taker)
    finally:
        if taker is not None:
            taker.close()


def _run_cell(spec: CellSpec, taker: TurnTaker | None) -> dict[str, Any]:
    row: dict[str, Any] = {"model": spec.model, "method": spec.method, "target_pct": spec.target_pct,
                           "seed": spec.seed, "error": ""}  # fmt: skip
    missing = missing_peer(spec.base)
    if missing:
        raise ModuleNotFoundError(missing)
    started = time.perf_counter()
    cfg = cell_config(spec)
    seed_everything(spec.seed)
    device = resolve_device(cfg.run.device)
    cfg = resolve_model_config(cfg, data.info(cfg.data.name, root=cfg.data.root, **cfg.data.options))
    run_data = build_data(cfg)
    model = models.create(cfg.model.name, num_classes=cfg.model.num_classes, in_channels=cfg.model.in_channels,
                          **cfg.model.kwargs)  # fmt: skip
    example = run_data.test[0][0].unsqueeze(0)
    cell_dir = Path(spec.out_dir) / spec.name
    cell_dir.mkdir(parents=True, exist_ok=True)
    d = cfg.data
    train_loader = _loader(run_data.train, d.batch_size, device, train=True)
    test_loader = _loader(run_data.test, d.eval_batch_size, device, train=False)
    holdout = (
        _loader(run_data.holdout, d.batch_size, device, train=True) if run_data.holdout is not None else None
    )
    probe = probe_images(test_loader, 64)
    dense_macs = count_macs(model, example)
    total_steps = cfg.run.epochs * count_steps(train_loader, cfg.run.max_steps_per_epoch)
    method = _setup(spec, cfg, model, example, probe, holdout, total_steps, cell_dir, dense_macs)
    timer = EpochTimer()
    callbacks = [timer, *method.callbacks, *([taker] if taker is not None else [])]  # the taker last
    trainer = Trainer(model, train_loader, None, config=cfg, callbacks=callbacks,
                      run_dir=cell_dir, model_name=cfg.model.name, progress=False)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        trainer.fit()
        compact = method.finish(trainer)
    if taker is not None:
        taker.close()  # the rest is measurement, not timed
        row["run_s"], epoch_times, row["timing"] = taker.active_s, list(taker.epoch_s), "interleaved"
    else:
        row["run_s"], epoch_times = time.perf_counter() - started, list(timer.train_seconds)
        row["timing"] = "sequential"
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    row["warnings"] = " | ".join(messages)[:500]

    # ---- measurements of the finished cell (not timed)
    row["epochs"] = cfg.run.epochs
    row["epoch_times"] = epoch_times
    row["epoch_s"] = sum(epoch_times) / max(1, len(epoch_times))
    row["steps_per_epoch"] = int(trainer.steps_per_epoch)
    # the epochs that end before this method's last cut (ATO: its freeze; dense: the end of the window): the
    # cost of the search; the report compares them with the same epochs of the dense run
    last = method.cut_step() or spec.window[1] * total_steps
    pre = [t for i, t in enumerate(epoch_times) if (i + 1) * row["steps_per_epoch"] <= last]
    row["precut_epochs"] = len(pre)
    row["precut_epoch_s"] = sum(pre) / len(pre) if pre else math.nan
    row["step_ms"] = 1000.0 * row["epoch_s"] / max(1, row["steps_per_epoch"])
    row["train_images"] = len(run_data.train)
    row["search_s"] = method.search_seconds()
    row["test_top1"] = evaluate_model(compact, test_loader, trainer.device)["top1"]
    dense_cpu = models.create(cfg.model.name, num_classes=cfg.model.num_classes,
                              in_channels=cfg.model.in_channels, **cfg.model.kwargs).eval()  # fmt: skip
    compact_cpu = copy.deepcopy(compact).to("cpu", memory_format=torch.contiguous_format).eval()
    x1 = probe[:1]
    row["dense_macs"], row["dense_params"] = count_macs(dense_cpu, x1), count_params(dense_cpu)
    row["compact_macs"], row["compact_params"] = count_macs(compact_cpu, x1), count_params(compact_cpu)
    row["macs_removed_pct"] = 100.0 * (1.0 - row["compact_macs"] / row["dense_macs"])
    row["params_removed_pct"] = 100.0 * (1.0 - row["compact_params"] / row["dense_params"])
    row["macs_gap_pp"] = row["macs_removed_pct"] - spec.target_pct if spec.target is not None else 0.0
    changes = [c for c in method.cut_changes() if not math.isnan(c)]
    row["cut_change"] = max(changes) if changes else math.nan
    l2 = [c for c in method.out_changes() if not math.isnan(c)]
    row["cut_change_l2"] = max(l2) if l2 else math.nan
    row.update(method.instruments())
    if spec.base == "dense":
        row["finetune"] = "—"
    elif not changes:
        row["finetune"] = "?"
    else:
        row["finetune"] = "yes" if row["cut_change"] > CUT_TOLERANCE else "no"
    row["setting"] = method.describe()
    row["widths"] = kept_widths(dense_cpu, compact_cpu)
    row["prunable_layers"] = _prunable_modules(discover(dense_cpu, x1))
    row["num_classes"], row["in_channels"] = cfg.model.num_classes, cfg.model.in_channels
    row["run_dir"] = str(cell_dir)
    row["compact_path"] = str(cell_dir / "compact.pt")
    torch.save(compact_cpu, cell_dir / "compact.pt")  # for the latency measurement after all cells
    torch.save(probe, cell_dir / "probe.pt")
    return row


def safe_run_cell(spec: CellSpec) -> dict[str, Any]:
    """:func:`run_cell`, with a failure turned into a row whose ``error`` says why (the run goes on)."""
    log.info("=== %s (%s)", spec.name, spec.method)
    try:
        return run_cell(spec)
    except Exception as exc:
        if not isinstance(exc, ModuleNotFoundError):
            log.error("%s failed:\n%s", spec.name, traceback.format_exc())
        else:
            log.warning("%s skipped: %s", spec.name, exc)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"model": spec.model, "method": spec.method, "target_pct": spec.target_pct, "seed": spec.seed,
                "run_dir": str(Path(spec.out_dir) / spec.name),
                "error": f"{type(exc).__name__}: {message}"[:300]}  # fmt: skip


# ------------------------------------------------------------------------------------------------ processes
def warm_up(base: Config, model_names: Sequence[str], methods: Sequence[str]) -> None:
    """Pay one-time costs before any timed cell: data files, lazy imports, first kernels, peer imports."""
    import autotrainonce.ato  # noqa: F401

    warm_up_models(base, model_names)
    for method in (split_method(m)[0] for m in methods):
        if missing_peer(method):
            continue
        try:
            if method == "torch-pruning":
                import torch_pruning  # noqa: F401
            elif method == "oto-hesso":
                from _peers import import_oto

                import_oto()
        except Exception as exc:  # the cell will fail and say why
            log.warning("importing the %s peer failed: %s", method, exc)


def worker_init(
    threads: int | None, level: int, base: Config, model_names: list[str], methods: list[str],
    turnstile: Turnstile | None = None,
) -> None:
    """Initializer of a ``--jobs`` (or ``--interleave``) worker process: threads, logging, warm-up."""
    global _TURNSTILE
    _TURNSTILE = turnstile
    if threads is not None:
        torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(message)s")
    warm_up(base, model_names, methods)
