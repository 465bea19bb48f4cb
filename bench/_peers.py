"""Adapters for the peer pruning libraries of bench/compare.py: Torch-Pruning and OTO/HESSO.

Each adapter is a Trainer callback, so that every method of the comparison trains with the same Trainer, data
and schedule. Both peers are optional (the ``bench`` extra); :func:`missing_peer` says when one cannot be
imported. Not part of the library: compare.py puts this folder on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import io
import logging
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from autotrainonce.measure import count_macs, relative_output_change
from autotrainonce.space.slicing import memory_layout
from autotrainonce.training import Callback

__all__ = [
    "PEERS",
    "missing_peer",
    "search_setting",
    "relative_change",
    "probe_outputs",
    "follow_schedule",
    "TorchPruningCallback",
    "OtoHessoCallback",
    "import_oto",
]

log = logging.getLogger("bench.compare")

# method name -> (importable module, pip requirement)
PEERS: dict[str, tuple[str, str]] = {
    "torch-pruning": ("torch_pruning", "torch-pruning==1.6.1"),
    "oto-hesso": ("only_train_once", "only-train-once==3.0.1"),
}


def missing_peer(method: str) -> str | None:
    """None when ``method``'s peer package can be imported (or it is not a peer), else why not."""
    if method not in PEERS:
        return None
    module, requirement = PEERS[method]
    if importlib.util.find_spec(module) is None:
        return f"{requirement} is not installed (pip install -e '.[bench]')"
    return None


# ------------------------------------------------------------------------------------------------ helpers
def search_setting(
    measure: Callable[[float], float],
    goal: float,
    lo: float,
    hi: float,
    *,
    iters: int = 12,
    tol: float = 0.002,
) -> tuple[float, float]:
    """Bisection for the setting ``x`` in [lo, hi] whose ``measure(x)`` is closest to ``goal``.

    ``measure`` must be non-decreasing in ``x`` (e.g. the fraction of MACs removed by a pruning ratio or a
    group sparsity); it may be a step function. Returns ``(x, measure(x))`` of the best setting tried; stops
    early once a setting lands within ``tol`` of the goal.
    """
    tried: dict[float, float] = {}
    a, b = lo, hi
    for _ in range(max(1, iters)):
        mid = 0.5 * (a + b)
        value = tried[mid] = float(measure(mid))
        if abs(value - goal) <= tol:
            break
        if value < goal:
            a = mid
        else:
            b = mid
    best = min(tried, key=lambda x: (abs(tried[x] - goal), x))
    return best, tried[best]


@torch.no_grad()
def probe_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs on ``x`` in eval mode (its train/eval mode is restored)."""
    training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        return model(x.to(device)).detach().float().cpu()
    finally:
        model.train(training)


def relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    """max |after - before| relative to max |before|: how much a cut changed what the network computes."""
    scale = float(before.abs().max())
    return float((after - before).abs().max()) / max(scale, 1e-12)


def follow_schedule(optimizer: Optimizer, old: LambdaLR) -> LambdaLR:
    """A LambdaLR on ``optimizer`` continuing ``old`` (same factor function, base LR and step count).

    Needed when the new optimizer has a different number of parameter groups (HESSO has one per channel
    group), which ``Trainer.replace_model``'s default re-attachment does not handle.
    """
    fn = old.lr_lambdas[0]
    base = old.base_lrs[0]
    for group in optimizer.param_groups:
        group["initial_lr"] = base
    # The constructor takes one step itself: start one before the old count so both end at the same step.
    scheduler = LambdaLR(optimizer, [fn] * len(optimizer.param_groups), last_epoch=old.last_epoch - 1)
    return scheduler


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------------ Torch-Pruning
class TorchPruningCallback(Callback):
    """Progressive Torch-Pruning (DependencyGraph + MetaPruner, global ranking, group-norm importance).

    At each step of ``at_steps`` (optimizer steps, 1-based) the network is pruned to remove
    ``target * k / K`` of the dense MACs (k-th of K steps), then training continues on the smaller network with
    a rebuilt optimizer (``Trainer.replace_model``). Each step builds a one-shot MetaPruner on the current
    network; its channel ratio is found by bisection on copies so that the step lands on its MACs goal (a
    MetaPruner cannot be copied to try a ratio, and it only takes a channel ratio, not a MACs budget).
    ``ignored`` names modules whose output channels must stay (the network output, and layers tied across a
    zero-padding shortcut, which Torch-Pruning treats as an element-wise op and would cut inconsistently).
    """

    def __init__(
        self,
        target: float,
        at_steps: Sequence[int],
        example: torch.Tensor,
        ignored: Sequence[str],
        dense_macs: int,
        probe: torch.Tensor,
        max_ratio: float = 0.95,
    ) -> None:
        import torch_pruning  # noqa: F401  (fail here, before training, when it is missing)

        self.target = float(target)
        self.at_steps = sorted(set(int(s) for s in at_steps))
        self.example = example
        self.ignored = list(ignored)
        self.dense_macs = int(dense_macs)
        self.probe = probe
        self.max_ratio = float(max_ratio)
        self.cut_changes: list[float] = []  # max-abs relative change of each pruning step (relative_change)
        self.out_changes: list[float] = []  # L2 relative change of each step (as the library's pruners report)
        self.ratios: list[float] = []
        self.search_seconds = 0.0

    @property
    def state_key(self) -> str:
        return "torch_pruning"

    def _prune(self, model: nn.Module, ratio: float) -> None:
        """Prune ``model`` in place: one global MetaPruner step at channel ratio ``ratio``."""
        import torch_pruning as tp

        if ratio <= 0:
            return
        ignored = [model.get_submodule(name) for name in self.ignored]
        channels_last = any(memory_layout(p) == torch.channels_last for p in model.parameters())
        training = model.training
        model.eval()  # the graph is traced with a forward pass: keep BatchNorm statistics as they are
        try:
            pruner = tp.pruner.MetaPruner(
                model,
                self.example.to(_model_device(model)),
                importance=tp.importance.GroupMagnitudeImportance(p=2),
                global_pruning=True,
                pruning_ratio=ratio,
                ignored_layers=ignored,
            )
            pruner.step()
        finally:
            model.train(training)
        if channels_last:  # Torch-Pruning's slices come back row-major; a channels-last run stays channels-last
            model.to(memory_format=torch.channels_last)

    def _removed_after(self, model: nn.Module, ratio: float) -> float:
        trial = copy.deepcopy(model)
        self._prune(trial, ratio)
        return 1.0 - count_macs(trial, self.example.to(_model_device(trial))) / self.dense_macs

    def on_after_optimizer_step(self, trainer: Any, optimizer: Optimizer) -> None:
        step = int(trainer.global_step)
        if step not in self.at_steps:
            return
        k = self.at_steps.index(step) + 1
        goal = self.target * k / len(self.at_steps)
        model = trainer.model
        started = time.perf_counter()
        ratio, removed = search_setting(lambda r: self._removed_after(model, r), goal, 0.0, self.max_ratio)
        self.search_seconds += time.perf_counter() - started
        before = probe_outputs(model, self.probe)
        self._prune(model, ratio)
        after = probe_outputs(model, self.probe)
        self.cut_changes.append(relative_change(before, after))
        self.out_changes.append(relative_output_change(before, after))
        self.ratios.append(ratio)
        log.info("torch-pruning: step %d (%d/%d): ratio %.3f -> %.1f%% MACs removed (goal %.1f%%)",
                 step, k, len(self.at_steps), ratio, 100 * removed, 100 * goal)  # fmt: skip
        trainer.replace_model(model)  # new parameter tensors: a fresh optimizer at the current LR

    def describe(self) -> str:
        steps = ",".join(str(s) for s in self.at_steps)
        ratios = ",".join(f"{r:.3f}" for r in self.ratios)
        return f"steps {steps}; channel ratio per step {ratios}"


# ------------------------------------------------------------------------------------------------ OTO / HESSO
def _oto_compat() -> None:
    """Let only-train-once 3.0.1 import on torch >= 2.9, where the TorchScript ONNX helpers it uses moved.

    It imports ``torch.onnx._globals`` and calls ``torch.onnx._optimize_graph``; both now live in
    ``torch.onnx._internal.torchscript_exporter``. We alias them (and give it an empty ``imp`` module on
    Python >= 3.12, which dropped it; OTO imports it but never uses it); nothing else is changed.
    """
    if importlib.util.find_spec("torch.onnx._globals") is None and "torch.onnx._globals" not in sys.modules:
        globals_mod = importlib.import_module("torch.onnx._internal.torchscript_exporter._globals")
        sys.modules["torch.onnx._globals"] = globals_mod
    if importlib.util.find_spec("imp") is None:  # Python >= 3.12; OTO imports it without using it
        sys.modules.setdefault("imp", types.ModuleType("imp"))
    if not hasattr(torch.onnx, "_optimize_graph"):
        utils = importlib.import_module("torch.onnx._internal.torchscript_exporter.utils")
        torch.onnx._optimize_graph = utils._optimize_graph  # type: ignore[attr-defined]


def import_oto() -> Any:
    """``only_train_once.OTO`` (after the compatibility aliases), quietly."""
    _oto_compat()
    with _quiet():
        from only_train_once import OTO
    return OTO


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """OTO prints progress with print() and the TorchScript passes warn on every in-place add: hide both."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _cuda_means(device: torch.device) -> Iterator[None]:
    """HESSO 3.0.1 builds a mask with ``.cuda()``: send it to the parameters' device instead."""
    original = torch.Tensor.cuda

    def to_device(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.to(device)

    torch.Tensor.cuda = to_device  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def _build_oto(model: nn.Module, example: torch.Tensor, unprunable: Sequence[str]) -> Any:
    """OTO's graph of ``model`` with the groups holding ``unprunable`` parameters marked unprunable."""
    OTO = import_oto()
    training = model.training
    try:
        with _quiet():
            oto = OTO(model, example.to(_model_device(model)))
    finally:
        model.train(training)  # OTO leaves the model in eval mode
    oto.mark_unprunable_by_param_names(list(unprunable))
    return oto


def _hesso(oto: Any, device: torch.device, **kwargs: Any) -> Optimizer:
    """``oto.hesso(**kwargs)`` whose step() works on any device (see :func:`_cuda_means`)."""
    with _quiet():
        opt = oto.hesso(variant="sgd", **kwargs)
    step = opt.step

    def device_safe_step(self: Optimizer, *args: Any, **kw: Any) -> Any:
        with _cuda_means(device), _quiet():
            return step(*args, **kw)

    # a bound method, as LR schedulers expect of optimizer.step (they wrap it to count the calls)
    opt.step = types.MethodType(device_safe_step, opt)  # type: ignore[method-assign]
    return opt


class OtoHessoCallback(Callback):
    """OTO 3.0.1 with its HESSO optimizer, switched in at ``start_step`` (after the shared dense warm-up).

    At ``start_step`` the target group sparsity is calibrated (bisection; each trial copies the network, lets
    HESSO pick and zero that share of channel groups at once from one batch's gradient, builds the sub-network
    with ``construct_subnet`` and counts its MACs), then HESSO replaces the trainer's optimizer: it zeroes
    the chosen groups progressively over ``window`` steps in ``periods`` periods, and keeps them at zero while
    training goes on. :meth:`finish` builds the compact network (``construct_subnet``, in place).
    HESSO's SGD variant has momentum but no Nesterov option; the LR follows the shared cosine schedule.
    """

    def __init__(
        self,
        target: float,
        start_step: int,
        window: int,
        periods: int,
        example: torch.Tensor,
        unprunable: Sequence[str],
        dense_macs: int,
        probe: torch.Tensor,
        work_dir: str,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        calibration_iters: int = 8,
    ) -> None:
        import_oto()  # fail before training when it cannot be imported
        self.target = float(target)
        self.start_step = int(start_step)
        self.window = max(1, int(window))
        self.periods = max(1, min(int(periods), self.window))
        self.example = example
        self.unprunable = list(unprunable)
        self.dense_macs = int(dense_macs)
        self.probe = probe
        self.work_dir = work_dir
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.calibration_iters = calibration_iters
        self.oto: Any = None
        self.sparsity = float("nan")
        self.estimate = float("nan")
        self.cut_change = float("nan")
        self.out_change = float("nan")  # L2 relative change of construct_subnet
        self.search_seconds = 0.0

    @property
    def state_key(self) -> str:
        return "oto_hesso"

    def _trial(self, model: nn.Module, sparsity: float, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        """MACs removed when HESSO zeroes ``sparsity`` of the groups of a copy of ``model`` in one go."""
        trial = copy.deepcopy(model)
        device = _model_device(trial)
        oto = _build_oto(trial, self.example, self.unprunable)
        # lr 0: only HESSO's choice and zeroing; weight decay and momentum as in the real run (they enter
        # the gradient its importance scores read)
        opt = _hesso(oto, device, lr=0.0, weight_decay=self.weight_decay, first_momentum=self.momentum,
                     target_group_sparsity=sparsity, start_pruning_step=0, pruning_steps=1,
                     pruning_periods=1)  # fmt: skip
        trial.train()
        x, y = batch
        nn.functional.cross_entropy(trial(x.to(device)), y.to(device)).backward()
        opt.step()
        with tempfile.TemporaryDirectory() as tmp, _quiet():
            oto.construct_subnet(out_dir=tmp, save_full_group_sparse_model=False)
        return 1.0 - count_macs(trial, self.example.to(device)) / self.dense_macs

    def on_after_optimizer_step(self, trainer: Any, optimizer: Optimizer) -> None:
        if int(trainer.global_step) != self.start_step or self.oto is not None:
            return
        model = trainer.model
        device = _model_device(model)
        batch = next(iter(trainer.train_loader))
        started = time.perf_counter()
        self.sparsity, self.estimate = search_setting(
            lambda s: self._trial(model, s, batch), self.target, 0.0, 0.95, iters=self.calibration_iters
        )
        self.search_seconds = time.perf_counter() - started
        self.oto = _build_oto(model, self.example, self.unprunable)
        lr = optimizer.param_groups[0]["lr"]
        hesso = _hesso(self.oto, device, lr=lr, weight_decay=self.weight_decay, first_momentum=self.momentum,
                       target_group_sparsity=self.sparsity, start_pruning_step=0, pruning_steps=self.window,
                       pruning_periods=self.periods)  # fmt: skip
        scheduler = follow_schedule(hesso, trainer.scheduler) if trainer.scheduler is not None else None
        log.info("oto-hesso: step %d: group sparsity %.3f (calibrated: %.1f%% MACs removed, goal %.1f%%)",
                 self.start_step, self.sparsity, 100 * self.estimate, 100 * self.target)  # fmt: skip
        trainer.replace_model(model, optimizer=hesso, scheduler=scheduler)

    def finish(self, trainer: Any) -> nn.Module:
        """The compact network: OTO's construct_subnet applied to the trained one (in place)."""
        model = trainer.model
        if self.oto is None:
            raise RuntimeError("HESSO never started (the pruning window lies beyond the end of training)")
        before = probe_outputs(model, self.probe)
        with _quiet():
            self.oto.construct_subnet(out_dir=self.work_dir, save_full_group_sparse_model=False)
        after = probe_outputs(model, self.probe)
        self.cut_change = relative_change(before, after)
        self.out_change = relative_output_change(before, after)
        return model

    def describe(self) -> str:
        return (
            f"group sparsity {self.sparsity:.3f} (calibrated to {100 * self.estimate:.1f}% MACs); "
            f"HESSO from step {self.start_step} over {self.window} steps in {self.periods} periods"
        )
