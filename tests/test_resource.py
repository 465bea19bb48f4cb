"""Targets, their conversion to a prunable-cost budget, and the resource loss (hand-computed values)."""

from __future__ import annotations

import math

import pytest
import torch

from autotrainonce.ato import Flops, Params, resolve_target, resource_loss
from autotrainonce.ato.resource import calibrated_masks
from autotrainonce.errors import TargetError
from autotrainonce.space import ChannelGroup


class FakeSpace:
    """4 prunable channels worth 200 MACs / 20 params each, plus a fixed 200 MACs / 100 params."""

    def __init__(self, prunable: bool = True) -> None:
        self.groups = [ChannelGroup("a", 4, prunable=prunable, reason="" if prunable else "network output"),
                       ChannelGroup("out", 2, prunable=False, reason="network output")]  # fmt: skip

    def _kept(self, masks) -> float:
        m = None if masks is None else masks[0]
        return 4.0 if m is None else m.float().sum()

    def flops(self, masks=None) -> int:
        return int(200 + 200 * self._kept(masks))

    def params(self, masks=None) -> int:
        return int(100 + 20 * self._kept(masks))

    def soft_flops(self, masks) -> torch.Tensor:
        return 200 + 200 * self._kept(masks)

    def soft_params(self, masks) -> torch.Tensor:
        return 100 + 20 * self._kept(masks)


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_target_outside_open_interval(bad):
    with pytest.raises(TargetError, match="strictly between 0 and 1"):
        Flops(remove=bad)
    with pytest.raises(TargetError):
        Params(bad)


def test_targets_are_frozen_values():
    assert Flops(0.5) == Flops(remove=0.5) and Flops(0.5) != Params(0.5)
    with pytest.raises(AttributeError):
        Flops(0.5).remove = 0.3  # type: ignore[misc]
    assert Flops(0.5).kind == "flops" and Params(0.5).kind == "params"


def test_conversion_hand_example():
    # T_total = 1000, T_fixed = 200, T_prunable = 800; remove 50%: p = (0.5*1000 - 200) / 800 = 0.375
    b = resolve_target(Flops(0.5), FakeSpace())
    assert (b.total, b.fixed, b.prunable) == (1000, 200, 800)
    assert b.p == pytest.approx(0.375)
    assert b.max_remove == pytest.approx(0.8)
    assert b.kept_fraction(500.0) == pytest.approx(0.375)
    assert b.removed(500.0) == pytest.approx(0.5)
    # params: total 180, fixed 100, prunable 80; remove 25%: p = (0.75*180 - 100) / 80 = 0.4375
    bp = resolve_target(Params(0.25), FakeSpace())
    assert (bp.total, bp.fixed) == (180, 100) and bp.p == pytest.approx(0.4375)


def test_unreachable_target_says_the_largest_reachable_removal():
    with pytest.raises(TargetError, match=r"at most 80\.0%.*cannot be pruned"):
        resolve_target(Flops(0.85), FakeSpace())
    with pytest.raises(TargetError, match=r"at most 80\.0%"):
        resolve_target(Flops(0.8), FakeSpace())  # p = 0 would remove every prunable channel


def test_no_prunable_groups():
    with pytest.raises(TargetError, match="no prunable channel groups.*network output"):
        resolve_target(Flops(0.5), FakeSpace(prunable=False))


def test_not_a_target():
    with pytest.raises(TargetError, match="Flops"):
        resolve_target(0.5, FakeSpace())  # type: ignore[arg-type]


P, D = 0.5, 0.005


@pytest.mark.parametrize(
    ("r", "expected"),
    [
        (0.7, math.log(0.7 / 0.5)),  # above the dead zone: log(r/p)
        (0.502, math.log(0.505 / 0.5)),  # inside, above p: flat at log((p+d)/p)
        (0.5, math.log(0.5 / 0.495)),  # r == p counts as "not above": flat at log(p/(p-d))
        (0.498, math.log(0.5 / 0.495)),  # inside, below p
        (0.3, math.log(0.5 / 0.3)),  # below the dead zone: log(p/r)
    ],
)
def test_log_ratio_values(r, expected):
    value = resource_loss(torch.tensor(r, dtype=torch.float64), P, "log_ratio", D)
    assert float(value) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("r", "sign"), [(0.7, 1), (0.502, 0), (0.498, 0), (0.3, -1)])
def test_log_ratio_gradient_is_zero_in_the_dead_zone(r, sign):
    x = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    resource_loss(x, P, "log_ratio", D).backward()
    g = float(x.grad)
    assert (g > 0) - (g < 0) == sign
    if sign:
        assert g == pytest.approx(sign / r)  # d/dr log(r/p) = 1/r ; d/dr log(p/r) = -1/r


@pytest.mark.parametrize("r", [0.0, 0.2, 0.5, 0.9, 1.3])
def test_log_abs_variant(r):
    value = resource_loss(torch.tensor(r, dtype=torch.float64), P, "log_abs")
    assert float(value) == pytest.approx(math.log(abs(r - P) + 1))


def test_log_ratio_stays_finite_for_tiny_targets_and_empty_masks():
    assert math.isfinite(float(resource_loss(torch.tensor(0.0), 0.003)))
    with pytest.raises(ValueError, match="unknown resource loss"):
        resource_loss(torch.tensor(0.5), 0.5, "nope")


SCORES = [torch.tensor([3.0, 1.0, -0.5, -2.0]), torch.tensor([0.5, -1.0])]


def _frac(masks) -> float:
    return float(sum(int(m.sum()) for m in masks)) / 6.0


def _lists(masks):
    return [m.tolist() for m in masks]


def test_calibration_keeps_the_plain_threshold_inside_the_dead_zone():
    out = calibrated_masks(SCORES, _frac, p=0.5, dead_zone=0.005)
    assert _lists(out) == [[True, True, False, False], [True, False]]


@pytest.mark.parametrize(
    ("p", "min_channels", "expected"),
    [
        (0.34, 0, [[True, True, False, False], [False, False]]),  # 2/6 kept
        (0.34, 1, [[True, False, False, False], [True, False]]),  # group 2 keeps its best channel
        (0.83, 1, [[True, True, True, False], [True, True]]),  # 5/6 kept: threshold moves below 0
        (0.01, 1, [[True, False, False, False], [True, False]]),  # as low as min_channels allows
    ],
)
def test_calibration_moves_one_global_threshold(p, min_channels, expected):
    out = calibrated_masks(SCORES, _frac, p=p, dead_zone=0.005, min_channels=min_channels)
    assert _lists(out) == expected


def test_target_beyond_min_channels_floor_is_refused() -> None:
    from autotrainonce.errors import TargetError
    from autotrainonce.models import create
    from autotrainonce.space import discover

    space = discover(create("resnet20", num_classes=10), torch.randn(1, 3, 32, 32))
    resolve_target(Flops(0.9), space, min_channels=1)  # reachable
    with pytest.raises(TargetError, match="min_channels"):
        resolve_target(Flops(0.97), space, min_channels=1)  # 95.2% is the floor with one channel each
