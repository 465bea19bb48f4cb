"""Small helpers of the ATO package: devices, nested outputs, eval mode with exact restore."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = [
    "Masks", "EvalMode", "HoldoutStream", "call_model", "device_of", "first_rows", "output_tensors", "to_device"
]

Masks = list[torch.Tensor | None]


def device_of(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple/list of inputs, ``model(inputs)`` otherwise."""
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor in nested tuples/lists/namedtuples/dicts; other leaves stay as they are."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(map_tensors(o, fn) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor in nested tuples/lists/dicts to ``device``."""
    return map_tensors(obj, lambda t: t.to(device, non_blocking=True))


def first_rows(obj: Any, n: int) -> Any:
    """The first ``n`` rows (dim 0) of every tensor in nested tuples/lists/dicts; 0-d tensors stay as they are."""
    return map_tensors(obj, lambda t: t[:n] if t.dim() > 0 else t)


def output_tensors(obj: Any) -> list[torch.Tensor]:
    """All tensors of a (nested) model output, in a stable order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in output_tensors(o)]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in output_tensors(obj[k])]
    return []


class EvalMode:
    """Puts every module of a model in eval mode and restores each module's own flag afterwards."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = models

    def __enter__(self) -> None:
        self.saved = [(m, m.training) for model in self.models for m in model.modules()]
        for model in self.models:
            model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.saved:
            m.training = mode


class HoldoutStream:
    """An endless stream of batches from a loader, restarted at each end, counting what it handed out."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.drawn = 0
        self._it: Iterator[Any] | None = None
        self._skip = 0

    def resume(self, drawn: int) -> None:
        """Continue after ``drawn`` batches: the next pass starts where the interrupted run was."""
        self.drawn = drawn
        self._it = None
        length = len(self.loader) if hasattr(self.loader, "__len__") else 0  # type: ignore[arg-type]
        self._skip = drawn % length if length else 0

    def next(self) -> Any:
        """The next batch. The global RNG is left as it was."""
        # A DataLoader draws seeds from the global RNG when an iterator starts (and a shuffling sampler on its
        # first batch); forking it means that restarting this stream (e.g. after a resume) does not change the
        # training loader's shuffles and augmentations.
        with torch.random.fork_rng(devices=[]):
            for _ in range(2):
                if self._it is None:
                    self._it = iter(self.loader)
                    for _ in range(self._skip):
                        next(self._it, None)
                    self._skip = 0
                try:
                    item = next(self._it)
                except StopIteration:
                    self._it = None
                    continue
                self.drawn += 1
                return item
        raise ConfigError("the holdout loader yielded no batch; give it at least one sample")
