"""Slice a tensor to the kept positions of some dimensions, keeping its memory layout.

Surgery (weights, buffers) and the optimizer's state (momentum, Adam moments) are cut the same way. The layout
matters: ``index_select`` returns a row-major tensor, so a channels-last model (the trainer's default on CUDA)
would come out of an in-place cut with its sliced convolutions in the other layout, and every step after the
cut would pay for converting between the two.
"""

from __future__ import annotations

import torch

__all__ = ["memory_layout", "slice_dims"]


def memory_layout(t: torch.Tensor) -> torch.memory_format:
    """The memory format ``t`` is stored in: channels-last (2-D or 3-D) when it is only that, else row-major."""
    if t.is_contiguous():  # also true for layouts that coincide (size-1 dims): row-major is then as good
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def slice_dims(t: torch.Tensor, keep: dict[int, torch.Tensor]) -> torch.Tensor:
    """``t`` with only the positions ``keep[dim]`` along each ``dim``: a new dense tensor in ``t``'s layout."""
    out = t
    for dim, index in keep.items():
        if index.numel() != out.shape[dim]:
            out = out.index_select(dim, index.to(out.device))
    return out.contiguous(memory_format=memory_layout(t))
