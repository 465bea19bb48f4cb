"""Size and speed of a model: parameters, multiply-accumulates (MACs) and latency; how much a cut moved it.

MACs are counted by running one forward pass under :class:`torch.utils.flop_counter.FlopCounterMode`, which
counts the FLOPs of matmul-like ops (convolutions, linear layers, attention); one MAC is two FLOPs. Element-wise
ops (BatchNorm, ReLU, residual adds) are not counted, which is the usual convention of pruning papers.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "alternating_latency",
    "count_macs",
    "count_params",
    "eval_outputs",
    "format_count",
    "latency_ms",
    "relative_output_change",
]


def _as_args(example_inputs: Any) -> tuple[Any, ...]:
    """A forward call's positional arguments: a lone tensor becomes a 1-tuple."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards.

    ``model.train(flag)`` would overwrite submodules that were deliberately left in another mode.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not); shared parameters are counted once."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (a tensor or a tuple of arguments).

    The count is for the whole batch you pass: use a batch of one to get per-image MACs.
    """
    args = _as_args(example_inputs)
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        model(*args)
    return counter.get_total_flops() // 2


def _first_device(args: Sequence[Any], model: nn.Module) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def latency_ms(model: nn.Module, example_inputs: Any, repeats: int = 50, warmup: int = 10) -> float:
    """Median wall-clock time of one forward pass in milliseconds (eval mode, no autograd).

    Runs on the device the inputs live on; the model must already be there. CUDA work is synchronised around
    each call so the time covers the kernels, not just their launch.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    args = _as_args(example_inputs)
    device = _first_device(args, model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    with _eval_mode(model), torch.no_grad():
        for _ in range(max(0, warmup)):
            model(*args)
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            model(*args)
            sync()
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def alternating_latency(
    models: dict[str, nn.Module],
    example_inputs: Any,
    *,
    rounds: int = 2,
    repeats: int | None = None,
    seconds: float = 0.5,
) -> dict[str, float]:
    """Median forward time (ms) of each model on the same inputs, measured in turns, ``rounds`` times.

    Taking turns makes a burst of load on a shared machine slow one measurement of every model rather than all
    of one model's, which would bias their ratio; the result per model is the median of its rounds. Without
    ``repeats`` each measurement is calibrated to take about ``seconds`` (on the slowest model). The library's
    results table and the benchmark both time models with this one function.
    """
    if not models:
        return {}
    if repeats is None:
        probe = max(latency_ms(m, example_inputs, repeats=1, warmup=1) for m in models.values())
        repeats = int(min(50, max(3, seconds * 1000.0 / max(probe, 1e-3))))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(max(1, rounds)):
        for name, m in models.items():
            times[name].append(latency_ms(m, example_inputs, repeats=repeats, warmup=max(1, repeats // 4)))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor of a (nested) model output, in a stable order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    return []


def eval_outputs(model: nn.Module, example_inputs: Any) -> list[torch.Tensor]:
    """Every output tensor of one forward pass on ``example_inputs`` (eval mode, no autograd), detached.

    Tensor inputs are moved to the device of the model's first parameter; each module's train/eval flag is
    restored afterwards, and eval mode leaves BatchNorm statistics untouched, so measuring does not change
    the training run.
    """
    args = _as_args(example_inputs)
    p = next(model.parameters(), None)
    if p is not None:
        args = tuple(a.to(p.device) if isinstance(a, torch.Tensor) else a for a in args)
    with _eval_mode(model), torch.no_grad():
        return [t.detach() for t in _tensors(model(*args))]


def relative_output_change(
    before: torch.Tensor | Iterable[torch.Tensor], after: torch.Tensor | Iterable[torch.Tensor]
) -> float:
    """``||after - before|| / ||before||``: the L2 norm over all output tensors together, in float64.

    The measure of how far a cut moved a trained network (0: the removed channels carried nothing). 0 when
    both are zero; inf when only ``before`` is. Raises ValueError when the outputs do not pair up.
    """
    b = [before] if isinstance(before, torch.Tensor) else list(before)
    a = [after] if isinstance(after, torch.Tensor) else list(after)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError(
            f"outputs do not pair up: {[tuple(x.shape) for x in b]} before, {[tuple(x.shape) for x in a]} after"
        )
    # float64: float32 sums of many squares would round away the small changes this is meant to show
    num = sum(float((y.double() - x.double().to(y.device)).pow(2).sum()) for x, y in zip(b, a))
    den = sum(float(x.double().pow(2).sum()) for x in b)
    if den > 0:
        return (num / den) ** 0.5
    return 0.0 if num == 0 else math.inf


def format_count(n: float, unit: str | None = None) -> str:
    """``125747200 -> "125.75M"``; ``unit`` forces one of "", "K", "M", "G" instead of picking the largest."""
    scales = {"G": 1e9, "M": 1e6, "K": 1e3, "": 1.0}
    if unit is None:
        unit = next((u for u, s in scales.items() if abs(n) >= s), "")
    if unit not in scales:
        raise ValueError(f"unit must be one of {list(scales)}, got {unit!r}")
    if unit == "":
        return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"
    return f"{n / scales[unit]:.2f}{unit}"
