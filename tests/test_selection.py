"""space.selection and the width multiple of space.targets: scores, greedy masks, rounded widths."""

from __future__ import annotations

import pytest
import torch

from autotrainonce import models
from autotrainonce.errors import TargetError
from autotrainonce.space import discover
from autotrainonce.space.selection import channel_scores, greedy_masks, round_widths
from autotrainonce.space.targets import Flops, Params, allowed_widths, resolve_target


@pytest.fixture(scope="module")
def resnet20_space():
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    return model, discover(model, torch.randn(1, 1, 28, 28))


def _kept(space, masks):
    return {gi: space.groups[gi].size if masks[gi] is None else int(masks[gi].sum()) for gi in space.prunable_indices}


def test_allowed_widths_are_the_multiples_and_the_whole_group():
    assert allowed_widths(16, 8) == [8, 16]
    assert allowed_widths(10, 8) == [8, 10]  # no multiple: the whole group stays allowed
    assert allowed_widths(6, 8) == [6]  # smaller than the multiple: only whole
    assert allowed_widths(64, 16, min_channels=20) == [32, 48, 64]  # min_channels rounded up to a multiple
    assert allowed_widths(5, 1) == [1, 2, 3, 4, 5]
    assert allowed_widths(5, 1, min_channels=3) == [3, 4, 5]


@pytest.mark.parametrize("multiple", [4, 8])
@pytest.mark.parametrize("remove", [0.3, 0.5, 0.7])
def test_round_widths_gives_multiples_near_the_target(resnet20_space, multiple, remove):
    model, space = resnet20_space
    scores = channel_scores(space, model)
    target = Flops(remove)
    masks = greedy_masks(space, scores, target, remove)
    rounded = round_widths(space, masks, scores, target, multiple)
    dense = space.flops(None)
    for gi, k in _kept(space, rounded).items():
        assert k in allowed_widths(space.groups[gi].size, multiple), (space.groups[gi].name, k)
    # within half a point of the target (ResNet-20's smallest step under 8 is ~1% of its MACs)
    assert 1 - space.flops(rounded) / dense == pytest.approx(remove, abs=0.005)


def test_round_widths_moves_only_marginal_channels(resnet20_space):
    """Within a group the channels the mask keeps go first: rounding never swaps a kept channel for a dropped
    one, it adds the best dropped ones or removes the worst kept ones."""
    model, space = resnet20_space
    scores = {gi: torch.rand(space.groups[gi].size, generator=torch.Generator().manual_seed(gi), dtype=torch.float64)
              for gi in space.prunable_indices}  # fmt: skip
    masks = greedy_masks(space, scores, Flops(0.5), 0.5)
    rounded = round_widths(space, masks, scores, Flops(0.5), 8)
    for gi in space.prunable_indices:
        before = torch.ones(space.groups[gi].size, dtype=torch.bool) if masks[gi] is None else masks[gi]
        after = torch.ones(space.groups[gi].size, dtype=torch.bool) if rounded[gi] is None else rounded[gi]
        assert bool((before & after).eq(before).all()) or bool((before & after).eq(after).all())
        s = scores[gi]
        if bool((after & ~before).any()) and bool((~before & ~after).any()):  # added: the best dropped ones
            assert float(s[after & ~before].min()) >= float(s[~before & ~after].max())
        if bool((before & ~after).any()):  # removed: the worst of the kept ones
            assert float(s[before & ~after].max()) <= float(s[before & after].min())


def test_round_widths_of_one_and_of_an_allowed_mask_change_nothing(resnet20_space):
    model, space = resnet20_space
    scores = channel_scores(space, model)
    masks = greedy_masks(space, scores, Params(0.5), 0.5)
    assert round_widths(space, masks, scores, Params(0.5), 1) == masks
    once = round_widths(space, masks, scores, Params(0.5), 8)
    twice = round_widths(space, once, scores, Params(0.5), 8)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(once, twice))


def test_resolve_target_refuses_a_target_the_width_multiple_cannot_reach(resnet20_space):
    _, space = resnet20_space
    assert resolve_target(Flops(0.3), space, 1, round_to=16).p > 0
    with pytest.raises(TargetError, match=r"multiples of 16 \(option round_to\).*at most 40\.\d\d% .*smaller round_to"):
        resolve_target(Flops(0.5), space, 1, round_to=16)
