"""Size and speed of a model: parameters, multiply-accumulates (MACs) and latency.

MACs are counted by running one forward pass under :class:`torch.utils.flop_counter.FlopCounterMode`, which
counts the FLOPs of matmul-like ops (convolutions, linear layers, attention); one MAC is two FLOPs. Element-wise
ops (BatchNorm, ReLU, residual adds) are not counted, which is the usual convention of pruning papers.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_params", "latency_ms", "format_count"]


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
