"""The freeze report of AutoTrainOnce (issue 15, "instruments first"): draw vs frozen mask, near-zero kept
channels, relative output change at the cut; its metrics, log line and state round trip."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ato_nets import EX, Net, digits
from autotrainonce.ato import AutoTrainOnce, Flops, Params
from autotrainonce.ato.instruments import NEAR_ZERO, mask_distance, near_zero_kept, order_agreement
from autotrainonce.measure import eval_outputs, relative_output_change
from autotrainonce.space.selection import channel_scores

# A 40-step run: controller from step 3, draws every 5 steps, proximal from 6, freeze at 30 (as test_ato.py).
# the paper variant: its noisy draws are what the freeze report compares the frozen mask with
SHORT = dict(variant="paper", controller_start=3, hyper_step=2, proximal_start=6, lambda_switch=24, freeze_at=30,
             mask_interval=5, controller_lr=1e-2)  # fmt: skip
FREEZE_KEYS = ("step", "channels", "dropped", "draw_dropped", "hamming", "hamming_frac", "shrunk_kept",
               "cut_unshrunk", "kept_near_zero", "kept_near_zero_frac", "kept_zero", "output_change", "init_order",
               "l1_order")  # fmt: skip


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _pruner(surgery: str = "end", target=None, **options) -> tuple[Net, torch.optim.Optimizer, AutoTrainOnce]:
    torch.manual_seed(1)
    model = Net(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = digits()
    holdout = DataLoader(TensorDataset(x[1400:1600], y[1400:1600]), batch_size=50)
    pruner = AutoTrainOnce(model, EX, target or Params(0.4), holdout=holdout, total_steps=40,
                           **(SHORT | {"surgery": surgery} | options))  # fmt: skip
    return model, opt, pruner


def _kept_near_zero(norms: list[torch.Tensor], frozen: list[torch.Tensor]) -> tuple[int, int]:
    """The test's own count: kept channels with norm <= NEAR_ZERO x median kept norm of the group, and zeros."""
    near = zero = 0
    for n, k in zip(norms, frozen):
        kept = n[k]
        near += int((kept <= NEAR_ZERO * kept.median()).sum())
        zero += int((kept == 0).sum())
    return near, zero


# ---------------------------------------------------------------------------------------------- the helpers
def test_mask_distance_counts_both_directions():
    draw = [torch.tensor([1, 0, 0, 1], dtype=torch.bool), torch.tensor([0, 1], dtype=torch.bool)]
    frozen = [torch.tensor([1, 1, 0, 0], dtype=torch.bool), torch.tensor([0, 1], dtype=torch.bool)]
    d = mask_distance(draw, frozen)
    # channel 1: shrunk under the draw, kept at the freeze; channel 3: kept by the draw, cut at the freeze
    assert (d["shrunk_kept"], d["cut_unshrunk"], d["hamming"]) == (1.0, 1.0, 2.0)
    assert (d["channels"], d["dropped"], d["draw_dropped"]) == (6.0, 3.0, 3.0)
    assert d["hamming_frac"] == pytest.approx(2 / 6)
    same = mask_distance(frozen, frozen)
    assert same["hamming"] == same["shrunk_kept"] == same["cut_unshrunk"] == 0.0
    none = mask_distance(None, frozen)  # no draw: nothing was shrunk, every cut channel is cut unshrunk
    assert none["cut_unshrunk"] == none["hamming"] == 3.0 and none["shrunk_kept"] == 0.0
    with pytest.raises(ValueError, match="group sizes"):
        mask_distance([torch.ones(3, dtype=torch.bool)], frozen[:1])


def test_near_zero_kept_is_relative_to_each_groups_median():
    keep = [torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool), torch.tensor([1, 1, 1], dtype=torch.bool)]
    norms = [
        torch.tensor([2.0, 3.0, 1e-4, 0.0, 0.0]),
        torch.tensor([1000.0, 1000.0, 0.5]),  # 0.5 <= 1e-3 * 1000: near zero in a group of large norms
    ]
    r = near_zero_kept(norms, keep)
    # group 0: lower median of (0, 1e-4, 2, 3) is 1e-4 -> threshold 1e-7: only the exact zero is near zero;
    # the dropped channel (index 4) is not counted, whatever its norm
    assert (r["kept_near_zero"], r["kept_zero"]) == (2.0, 1.0)
    assert r["kept_near_zero_frac"] == pytest.approx(2 / 7)
    # a group without parameters (None) is skipped
    assert near_zero_kept([None, norms[1]], keep)["kept_near_zero"] == 1.0


def test_order_agreement_is_the_mean_rank_correlation_over_groups():
    up = torch.tensor([0.1, 0.5, 0.9, 2.0])
    assert order_agreement([up], [up * 10 - 3]) == pytest.approx(1.0)  # any increasing map: the same order
    assert order_agreement([up], [-up]) == pytest.approx(-1.0)
    assert order_agreement([up, up], [up, -up]) == pytest.approx(0.0)  # the mean over groups
    # ties share their mean rank: [0, 0, 1] and [2, 2, 7] order alike; a constant group or a one-channel group
    # has no order and is left out
    assert order_agreement([torch.tensor([0.0, 0.0, 1.0]), torch.ones(3), torch.ones(1)],
                           [torch.tensor([2.0, 2.0, 7.0]), up[:3], up[:1]]) == pytest.approx(1.0)  # fmt: skip
    assert math.isnan(order_agreement([torch.zeros(4)], [up]))  # nothing to compare
    assert math.isnan(order_agreement([torch.zeros(0)], [torch.zeros(0)]))
    # tied ranks 1.5, 1.5, 0 against 0, 1, 2: -1.5 / sqrt(1.5 * 2) (ranks by position would give -0.5)
    assert order_agreement([torch.tensor([1.0, 1.0, 0.0])], [up[:3]]) == pytest.approx(-math.sqrt(3) / 2)


def _decide_pruner(head_init: float) -> tuple[Net, torch.optim.Optimizer, AutoTrainOnce]:
    """The 40-step run of test_ato_variants.py with variant="decide": controller from 3, decision at 15."""
    torch.manual_seed(1)
    model = Net(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = digits()
    holdout = DataLoader(TensorDataset(x[1400:1600], y[1400:1600]), batch_size=50)
    pruner = AutoTrainOnce(model, EX, Params(0.4), holdout=holdout, total_steps=40, variant="decide",
                           controller_start=3, hyper_step=2, decide_at=15, freeze_at=30, controller_lr=1e-2,
                           head_init=head_init)  # fmt: skip
    return model, opt, pruner


def test_the_decision_measures_the_controllers_order():
    """variant="decide": at the decision, the controller's order against its initial one and the L1 norms; the
    freeze report carries both; heads started at zero have no initial order (NaN)."""
    for head_init in (1.0, 0.0):
        model, opt, pruner = _decide_pruner(head_init)
        initial = [s.clone() for s in pruner.controller.scores()]
        x, y = digits()
        for i in range(14):
            opt.zero_grad()
            F.cross_entropy(model(x[i * 16 : (i + 1) * 16]), y[i * 16 : (i + 1) * 16]).backward()
            opt.step()
            pruner.step(opt)
        assert not pruner.decided and pruner.decision_report == {}
        scores, l1 = pruner.controller.scores(), channel_scores(pruner.space, model)
        pruner.decide()
        d = pruner.decision_report
        assert d["l1_order"] == order_agreement(scores, [l1[gi] for gi in pruner.prunable])
        if head_init == 0.0:
            assert all(float(s.std()) == 0 for s in initial) and math.isnan(d["init_order"])
        else:
            assert d["init_order"] == order_agreement(initial, scores) and 0 < d["init_order"] < 1  # learned some
        state = _roundtrip(pruner.state_dict())  # decided, not yet frozen: the report survives a resume
        _, _, resumed = _decide_pruner(head_init)
        resumed.load_state_dict(state)
        assert str(resumed.decision_report) == str(d)  # str: NaN != NaN
        pruner.freeze(opt)
        assert {k: pruner.freeze_report[k] for k in d} == d or head_init == 0.0


def test_relative_output_change():
    a = torch.tensor([[3.0, 4.0]])
    assert relative_output_change(a, a) == 0.0
    assert relative_output_change(a, a + torch.tensor([[0.0, 0.5]])) == pytest.approx(0.1)  # 0.5 / 5
    # several output tensors: one L2 norm over all of them together
    assert relative_output_change([a, 2 * a], [a, 2 * a + 1]) == pytest.approx((2 / 125) ** 0.5)
    assert relative_output_change(torch.zeros(2), torch.zeros(2)) == 0.0
    assert relative_output_change(torch.zeros(2), torch.ones(2)) == math.inf
    with pytest.raises(ValueError, match="do not pair up"):
        relative_output_change([a], [a, a])


def test_eval_outputs_restores_modes_and_statistics():
    model = Net(4)
    model.b2.eval()  # a deliberately mixed state comes back exactly
    stats = model.b1.running_mean.clone()
    out = eval_outputs(model, torch.randn(3, 1, 8, 8))
    assert len(out) == 1 and out[0].shape == (3, 10) and not out[0].requires_grad
    assert model.training and model.b1.training and not model.b2.training
    assert torch.equal(model.b1.running_mean, stats)


# ---------------------------------------------------------------------------------------------- at the freeze
@pytest.mark.parametrize("surgery", ["end", "freeze"])
@pytest.mark.parametrize("shrink", ["default", "weak"])
def test_freeze_report_matches_a_recount(surgery, shrink):
    """Train to the freeze step; recount everything from the draw, norms and outputs seen just before it.

    With the default lambdas the proximal step kills every dropped channel of every draw within a few steps, so
    channels of earlier draws are dead although the freeze keeps them, and the freeze cuts only dead channels;
    with a weak shrink the cut channels are alive and the cut moves the outputs.
    """
    weak = shrink == "weak"
    model, opt, pruner = _pruner(surgery, **(dict(lambda_low=0.1, lambda_high=1.0) if weak else {}))
    initial = [s.clone() for s in pruner.controller.scores()]
    x, y = digits()
    seen: dict = {}
    for i in range(32):
        opt.zero_grad()
        F.cross_entropy(model(x[i * 16 : (i + 1) * 16]), y[i * 16 : (i + 1) * 16]).backward()
        opt.step()
        if i + 1 == SHORT["freeze_at"]:  # the step that freezes: what the pruner sees before it acts
            assert not pruner.frozen and pruner.freeze_report == {}
            assert all(not k.startswith("ato/freeze_") for k in pruner.metrics())
            seen = {"draw": [m.clone() for m in pruner.mask], "norms": pruner.proximal.channel_norms(),
                    "before": eval_outputs(model, EX), "scores": [s.clone() for s in pruner.controller.scores()],
                    "l1": channel_scores(pruner.space, model)}  # fmt: skip
        pruner.step(opt)
        if i + 1 == SHORT["freeze_at"]:
            seen["after"] = eval_outputs(model, EX)
    assert pruner.frozen and pruner.cut == (surgery == "freeze")
    r = pruner.freeze_report
    assert set(r) == set(FREEZE_KEYS) and all(isinstance(v, float) for v in r.values())
    draw, frozen = seen["draw"], pruner.mask
    assert r["step"] == SHORT["freeze_at"]
    assert r["channels"] == sum(len(m) for m in frozen) == 8 + 16 + 16
    assert r["dropped"] == sum(int((~m).sum()) for m in frozen) > 0
    assert r["draw_dropped"] == sum(int((~m).sum()) for m in draw) > 0
    shrunk_kept = sum(int((~d & f).sum()) for d, f in zip(draw, frozen))
    cut_unshrunk = sum(int((d & ~f).sum()) for d, f in zip(draw, frozen))
    assert (r["shrunk_kept"], r["cut_unshrunk"]) == (shrunk_kept, cut_unshrunk)
    assert r["hamming"] == sum(int((d != f).sum()) for d, f in zip(draw, frozen)) == shrunk_kept + cut_unshrunk
    assert r["hamming"] > 0  # this seeded short run: the noisy draw is not the frozen mask
    assert r["hamming_frac"] == pytest.approx(r["hamming"] / r["channels"]) and 0 <= r["hamming_frac"] <= 1
    near, zero = _kept_near_zero(seen["norms"], frozen)  # the norms before the freeze zeroed anything
    assert (r["kept_near_zero"], r["kept_zero"]) == (near, zero)
    assert r["kept_zero"] <= r["kept_near_zero"] <= r["channels"] - r["dropped"]
    assert 0 <= r["kept_near_zero_frac"] <= 1
    expected = relative_output_change(seen["before"], seen["after"])
    assert math.isfinite(r["output_change"]) and r["output_change"] == pytest.approx(expected, rel=1e-9, abs=0)
    cut_alive = pruner.last["zeroed_at_freeze_max_norm"] > 0  # the freeze's hard-zeroing removed a live channel
    assert cut_alive == weak
    if weak:
        assert r["output_change"] > 0.1 and r["kept_zero"] == 0  # nothing was shrunk all the way
    else:
        assert r["kept_zero"] > 0  # channels of earlier draws, dead yet kept (issue 15, hypothesis 1)
        assert r["output_change"] == 0.0 if surgery == "end" else r["output_change"] < 1e-6
    # the paper variant decides at the freeze: its order then, against its initial order and the L1 norms
    assert r["init_order"] == order_agreement(initial, seen["scores"]) and -1 <= r["init_order"] <= 1
    l1 = [seen["l1"][gi] for gi in pruner.prunable]
    assert r["l1_order"] == order_agreement(seen["scores"], l1) and -1 <= r["l1_order"] <= 1
    m = pruner.metrics()
    assert all(m[f"ato/freeze_{k}"] == r[k] for k in FREEZE_KEYS)


def _forced_draw(pruner: AutoTrainOnce, extra_drop: int, keep_cut: bool) -> tuple[list, int, int]:
    """Make the latest draw the mask the freeze will fix, plus channel ``extra_drop`` of the first group with a
    dropped channel also dropped (a channel that the freeze keeps) and, with ``keep_cut``, one channel the freeze
    drops kept; shrink the draw to exact zero (as a long proximal phase would). Returns (draw, gi, cut channel)."""
    final = [m.clone() for m in pruner.final_mask()]
    gi = next(i for i, m in enumerate(final) if not bool(m.all()))
    kept = torch.nonzero(final[gi]).flatten()
    cut = int(torch.nonzero(~final[gi]).flatten()[0])
    draw = [m.clone() for m in final]
    draw[gi][int(kept[extra_drop])] = False
    if keep_cut:
        draw[gi][cut] = True
    pruner._set_mask(draw)
    pruner.proximal.hard_zero()
    return draw, gi, cut


@pytest.mark.parametrize("surgery", ["end", "freeze"])
def test_a_draw_shrunk_to_zero_and_frozen_as_is_cuts_without_a_jump(surgery):
    model, _, pruner = _pruner(surgery, target=Flops(0.5))
    draw, _, _ = _forced_draw(pruner, 0, keep_cut=False)
    pruner.freeze()
    r = pruner.freeze_report
    # the draw differs from the frozen mask in exactly the one extra channel, which is kept although dead
    assert (r["hamming"], r["shrunk_kept"], r["cut_unshrunk"]) == (1.0, 1.0, 0.0)
    assert (r["kept_zero"], r["kept_near_zero"]) == (1.0, 1.0)  # freshly initialised: no other small channel
    assert r["dropped"] == r["draw_dropped"] - 1
    if surgery == "end":
        assert r["output_change"] == 0.0  # every cut channel was already exactly zero: nothing moves
    else:
        assert 0.0 <= r["output_change"] < 1e-6  # the compact network sums fewer terms (float rounding only)


def test_cutting_an_unshrunk_channel_moves_the_outputs():
    _, _, pruner = _pruner("end", target=Flops(0.5))
    _forced_draw(pruner, 0, keep_cut=True)
    pruner.freeze()
    r = pruner.freeze_report
    assert (r["hamming"], r["shrunk_kept"], r["cut_unshrunk"]) == (2.0, 1.0, 1.0)
    assert r["output_change"] > 1e-4  # the one live channel cut at the freeze changes the outputs


def test_no_zeroing_and_no_cut_is_exactly_no_change():
    _, _, pruner = _pruner("end", target=Flops(0.5), zero_at_freeze=False)
    pruner.freeze()
    r = pruner.freeze_report
    assert r["output_change"] == 0.0 and r["dropped"] > 0
    # no draw before the freeze: nothing was shrunk, so every dropped channel is cut unshrunk
    assert r["draw_dropped"] == 0.0 and r["cut_unshrunk"] == r["hamming"] == r["dropped"]


def test_freeze_logs_one_info_line(caplog):
    _, _, pruner = _pruner("freeze", target=Flops(0.5))
    with caplog.at_level(logging.INFO, logger="autotrainonce.ato.algorithm"):
        pruner.freeze()
        pruner.freeze()  # already frozen: no second measurement, no second line
    lines = [r.getMessage() for r in caplog.records if "mask frozen" in r.getMessage()]
    assert len(lines) == 1 and "output change at the cut" in lines[0] and "cut but never shrunk" in lines[0]


# ---------------------------------------------------------------------------------------------- state
@pytest.mark.parametrize("surgery", ["end", "freeze"])
def test_freeze_report_survives_a_resume(surgery):
    _, _, pruner = _pruner(surgery, target=Flops(0.5))
    _forced_draw(pruner, 1, keep_cut=True)
    pruner.freeze()
    state = _roundtrip(pruner.state_dict())
    assert state["version"] == 1 and state["freeze_report"] == pruner.freeze_report
    _, opt, resumed = _pruner(surgery, target=Flops(0.5))
    resumed.load_state_dict(state, optimizer=opt)
    assert resumed.freeze_report == pruner.freeze_report
    m = resumed.metrics()
    assert all(m[f"ato/freeze_{k}"] == pruner.freeze_report[k] for k in FREEZE_KEYS)


def test_an_older_state_without_the_report_still_loads():
    _, _, pruner = _pruner("end", target=Flops(0.5))
    pruner.freeze()
    state = _roundtrip(pruner.state_dict())
    del state["freeze_report"]  # written before the report existed (same version)
    _, _, resumed = _pruner("end", target=Flops(0.5))
    resumed.load_state_dict(state)
    assert resumed.frozen and resumed.freeze_report == {}
    assert not any(k.startswith("ato/freeze_") for k in resumed.metrics())
