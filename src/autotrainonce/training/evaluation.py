"""Evaluation: loss and top-1/top-5 accuracy of a model over a loader, summed over processes when distributed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist_utils
from .metrics import accuracy_counts

__all__ = ["evaluate_model", "evaluation_counts", "metrics_from_counts", "evaluate_across_ranks"]


@torch.no_grad()
def evaluation_counts(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device | None = None,
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``[loss sum, top-1 hits, top-5 hits, samples, classes]`` (float64, CPU) of ``model`` over ``loader``.

    Sums, so that shards evaluated on several processes add up; :func:`evaluate_model` turns them into means.
    The model's train/eval mode is restored.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, samples, num_classes = 0.0, 0, 0
    hits = {1: 0, 5: 0}
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            for k, v in accuracy_counts(logits, y).items():
                hits[k] += v
            samples += y.shape[0]
            num_classes = logits.shape[1]
    finally:
        model.train(was_training)
    return torch.tensor([loss_sum, hits[1], hits[5], samples, num_classes], dtype=torch.float64)


def metrics_from_counts(counts: torch.Tensor) -> dict[str, float]:
    """``{"loss", "top1", "top5"}`` from :func:`evaluation_counts`' sums; top-5 only with at least 5 classes."""
    loss_sum, top1, top5, samples, num_classes = counts.tolist()
    if samples == 0:
        raise ValueError("the evaluation loader yielded no batches")
    out = {"loss": loss_sum / samples, "top1": 100.0 * top1 / samples}
    if num_classes >= 5:
        out["top5"] = 100.0 * top5 / samples
    return out


def evaluate_model(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device | None = None,
    channels_last: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """``{"loss", "top1", "top5"}`` of ``model`` over ``loader`` in eval mode; accuracies in percent.

    top-5 is left out when the model has fewer than 5 classes. The model's train/eval mode is restored.
    """
    return metrics_from_counts(evaluation_counts(model, loader, device, channels_last, amp_dtype))


def evaluate_across_ranks(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device,
    channels_last: bool,
    amp_dtype: torch.dtype | None,
    distributed: bool,
) -> dict[str, float]:
    """:func:`evaluate_model`, with each rank's counts summed over the process group when ``distributed``.

    Collective in a distributed run: every rank must call it (each with its own loader, e.g. its shard).
    """
    counts = evaluation_counts(model, loader, device, channels_last, amp_dtype)
    if distributed:
        counts = counts.to(device)
        dist_utils.all_reduce_sum(counts[:4])
        # The number of classes is the same everywhere, except on a rank whose shard was empty (0).
        dist_utils.all_reduce_max(counts[4:])
    return metrics_from_counts(counts.cpu())
