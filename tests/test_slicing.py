"""space.slicing: a tensor cut to kept positions keeps its values and its memory layout."""

from __future__ import annotations

import torch

from autotrainonce.space.slicing import memory_layout, slice_dims


def test_slice_dims_selects_the_kept_positions_of_each_dimension():
    t = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    keep = {0: torch.tensor([0, 3]), 1: torch.tensor([2])}
    assert torch.equal(slice_dims(t, keep), t[[0, 3]][:, [2]])


def test_slice_dims_keeps_channels_last_and_row_major_layouts():
    t = torch.randn(6, 5, 3, 3)
    cl = t.to(memory_format=torch.channels_last)
    keep = {0: torch.tensor([1, 2, 4]), 1: torch.tensor([0, 3])}
    a, b = slice_dims(t, keep), slice_dims(cl, keep)
    assert torch.equal(a, b)
    assert a.is_contiguous() and not a.is_contiguous(memory_format=torch.channels_last)
    assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
    c3 = torch.randn(4, 3, 2, 2, 2).to(memory_format=torch.channels_last_3d)
    assert slice_dims(c3, {1: torch.tensor([0, 2])}).is_contiguous(memory_format=torch.channels_last_3d)


def test_slice_dims_makes_a_dense_copy_of_a_strided_view():
    t = torch.randn(8, 6)[:, ::2]  # neither layout: comes back row-major
    assert memory_layout(t) == torch.contiguous_format
    out = slice_dims(t, {0: torch.tensor([0, 5])})
    assert out.is_contiguous() and torch.equal(out, t[[0, 5]])


def test_a_tensor_whose_layouts_coincide_is_called_row_major():
    assert memory_layout(torch.randn(4, 1, 3, 3).to(memory_format=torch.channels_last)) == torch.contiguous_format
    assert memory_layout(torch.randn(4, 2, 3, 3).to(memory_format=torch.channels_last)) == torch.channels_last
