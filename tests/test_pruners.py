"""autotrainonce.pruners: one interface, a registry, and the magnitude baselines as library methods."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ato_nets import EX, Net, digits
from autotrainonce import models, pruners
from autotrainonce.ato import AutoTrainOnce
from autotrainonce.core import Pruner
from autotrainonce.errors import ConfigError, TargetError, UnknownNameError
from autotrainonce.measure import count_macs
from autotrainonce.models import count_params
from autotrainonce.space import discover
from autotrainonce.space.targets import Flops, Params


def _train(model, pruner, steps, opt, start=0):
    x, y = digits()
    cuts = []
    for i in range(start, start + steps):
        j = i % 60
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[j * 20 : (j + 1) * 20]), y[j * 20 : (j + 1) * 20])
        loss.backward()
        opt.step()
        cuts.append(pruner.step(opt, batch=(x[:50], y[:50])))
    return cuts


def test_registry_lists_and_builds_every_method():
    assert {"ato", "l1", "magnitude"} <= set(pruners.available())
    for name in ("ato", "l1", "magnitude"):
        p = pruners.create(name, Net(8), EX, Flops(0.4), total_steps=40)
        assert isinstance(p, Pruner) and p.name == name
        assert p.model is not None and p.space is not None and p.cut is False
    assert isinstance(pruners.create("ato", Net(8), EX, Flops(0.4), total_steps=40), AutoTrainOnce)
    with pytest.raises(UnknownNameError, match="unknown pruning method 'l2'; choose one of: ato, l1, magnitude"):
        pruners.create("l2", Net(8), EX, Flops(0.4), total_steps=40)


@pytest.mark.parametrize("name", ["l1", "magnitude"])
@pytest.mark.parametrize("target", [Flops(0.5), Params(0.4)], ids=["flops", "params"])
def test_magnitude_methods_cut_in_place_to_the_target_and_train_on(name, target):
    torch.manual_seed(0)
    model = Net(8)
    dense_macs, dense_params = count_macs(model, EX), count_params(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = pruners.create(name, model, EX, target, total_steps=40, at=0.5)
    cuts = _train(model, pruner, 20, opt)
    assert cuts == [False] * 19 + [True] and pruner.cut
    report = pruner.cut_report
    assert report["max_abs_diff"] <= 1e-4 * max(1.0, report["output_scale"])  # compact == masked
    assert report["output_change"] > 0  # a magnitude cut is not free: the trained network moves
    removed = 1 - (count_macs(model, EX) / dense_macs if target.kind == "flops" else count_params(model) / dense_params)
    assert target.remove <= removed <= target.remove + 0.05
    at_cut = copy.deepcopy(model.state_dict())
    _train(model, pruner, 20, opt, start=20)
    assert any(not torch.equal(v, at_cut[k]) for k, v in model.state_dict().items())
    assert pruner.export() is model
    summary = pruner.mask_summary()
    assert summary["cut"] and len(summary["groups"]) == len(pruner.space.prunable_indices)
    assert pruner.metrics()[f"{name}/cut"] == 1.0


def test_progressive_magnitude_zeroes_in_stages_and_never_revives_a_channel():
    torch.manual_seed(0)
    model = Net(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = pruners.create("magnitude", model, EX, Flops(0.5), total_steps=40, start=0.1, at=0.5, stages=4)
    assert pruner.decisions == [4, 9, 15, 20]
    dropped_before: set = set()
    for t in range(1, 20):
        _train(model, pruner, 1, opt, start=t)
        if t in pruner.decisions:
            masks = pruner.current_masks()
            dropped = {(gi, c) for gi, m in enumerate(masks) if m is not None for c in (~m).nonzero().flatten().tolist()}
            assert dropped_before <= dropped and len(dropped) > len(dropped_before)
            dropped_before = dropped
            # the dropped channels are exactly zero in every member
            for gi, m in enumerate(masks):
                if m is None:
                    continue
                for mem in pruner.space.groups[gi].param_members():
                    w = getattr(model.get_submodule(mem.module), mem.name)
                    idx = mem.index[~m[mem.channel]]
                    assert float(w.detach().index_select(mem.dim, idx).abs().sum()) == 0.0
    assert _train(model, pruner, 1, opt, start=20) == [True]
    assert pruner.cut_report["max_abs_diff"] <= 1e-4 * max(1.0, pruner.cut_report["output_scale"])


def test_magnitude_state_resumes_after_the_cut():
    torch.manual_seed(0)
    a = Net(8)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9)
    pa = pruners.create("l1", a, EX, Flops(0.4), total_steps=40)
    _train(a, pa, 25, opt_a)
    ckpt = copy.deepcopy({"model": a.state_dict(), "opt": opt_a.state_dict(), "pruner": pa.state_dict()})
    b = Net(8)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    pb = pruners.create("l1", b, EX, Flops(0.4), total_steps=40)
    pb.load_state_dict(ckpt["pruner"], optimizer=opt_b)
    b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    _train(a, pa, 5, opt_a, start=25)
    _train(b, pb, 5, opt_b, start=25)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_bad_options_and_targets_are_clear():
    with pytest.raises(ConfigError, match="total_steps"):
        pruners.create("l1", Net(8), EX, Flops(0.4), total_steps=0)
    with pytest.raises(ConfigError, match="start .* must not come after at"):
        pruners.create("magnitude", Net(8), EX, Flops(0.4), total_steps=40, start=0.8, at=0.5)
    with pytest.raises(ConfigError, match="a fraction of the run must lie in"):
        pruners.create("l1", Net(8), EX, Flops(0.4), total_steps=40, at=1.5)
    with pytest.raises(ConfigError, match="l1 decides once"):
        pruners.create("l1", Net(8), EX, Flops(0.4), total_steps=40, stages=3)
    with pytest.raises(TargetError, match="at most"):
        pruners.create("l1", Net(8), EX, Flops(0.999), total_steps=40)
    with pytest.raises(ConfigError, match="needs a torch.nn.Module instance"):
        pruners.create("l1", "resnet20", EX, Flops(0.4), total_steps=40)


def test_a_registered_method_is_found_by_name():
    class KeepAll(pruners.MagnitudePruner):
        name = "test-keep"

    pruners.register("test-keep")(KeepAll)
    try:
        p = pruners.create("test-keep", Net(8), EX, Flops(0.3), total_steps=10)
        assert isinstance(p, KeepAll)
    finally:
        pruners.PRUNERS._builders.pop("test-keep")


def test_channel_scores_rank_zeroed_channels_last():
    model = Net(8)
    space = discover(model, EX)
    gi = space.prunable_indices[0]
    with torch.no_grad():
        model.c1.weight[3].zero_()
        model.c1.bias[3] = 0.0
    scores = pruners.channel_scores(space, model)
    assert int(scores[gi].argmin()) == 3


def test_greedy_l1_masks_hit_the_macs_target():
    model = models.create("resnet20", num_classes=10, in_channels=1)
    space = discover(model, torch.randn(1, 1, 8, 8))
    scores = pruners.channel_scores(space, model)
    assert set(scores) == set(space.prunable_indices)
    assert all(s.shape == (space.groups[gi].size,) for gi, s in scores.items())
    dense = space.flops(None)
    for target in (0.3, 0.5, 0.7):
        masks = pruners.greedy_masks(space, scores, Flops(target), target)
        removed = 1 - space.flops(masks) / dense
        assert removed >= target
        # minimal: putting back the highest-scored dropped channel misses the target
        dropped = [(float(scores[gi][c]), gi, c) for gi, m in enumerate(masks) if m is not None
                   for c in (~m).nonzero().flatten().tolist()]  # fmt: skip
        _, gi, c = max(dropped)
        masks[gi] = masks[gi].clone()
        masks[gi][c] = True
        assert 1 - space.flops(masks) / dense < target
        assert all(m is None or int(m.sum()) >= 1 for m in masks)


def test_l1_scores_rank_small_filters_first():
    model = models.create("resnet20", num_classes=10, in_channels=1)
    with torch.no_grad():
        model.layer1[0].conv1.weight[3].zero_()  # filter 3 of the first block's inner conv: nothing left
    space = discover(model, torch.randn(1, 1, 8, 8))
    gi = next(i for i in space.prunable_indices if space.groups[i].name == "layer1.0.conv1")
    masks = pruners.greedy_masks(space, pruners.channel_scores(space, model), Flops(0.01), 0.01)
    assert masks[gi] is not None and not bool(masks[gi][3])


@pytest.mark.parametrize("method", ["ato", "l1", "magnitude"])
def test_split_fixed_option_builds_the_older_space_for_every_method(method):
    """``split_fixed: false`` (a discovery option, not a method's) gives the space where a partly fixed
    group stays whole: ResNet-20's padded residual stream is then kept."""
    from types import SimpleNamespace

    from autotrainonce.pruners import make_callback

    model, x = models.create("resnet20", in_channels=1), torch.randn(1, 1, 28, 28)
    options = {"at": 5} if method != "ato" else {}
    for value, stream_prunable in ((False, False), ("0", False), (True, True)):
        cfg = SimpleNamespace(method=method, remove_flops=0.3, remove_params=None,
                              options={**options, "split_fixed": value})  # fmt: skip
        space = make_callback(cfg, model, x, None, total_steps=10).pruner.space
        assert space.groups[0].prunable is stream_prunable and space.groups[0].name.startswith("conv1")
    cfg = SimpleNamespace(method=method, remove_flops=0.3, remove_params=None, options={"split_fixed": "maybe"})
    with pytest.raises(ConfigError, match="split_fixed must be true or false"):
        make_callback(cfg, model, x, None, total_steps=10)


@pytest.mark.parametrize("name", ["l1", "magnitude"])
def test_magnitude_methods_round_widths_to_a_multiple(name):
    """round_to=4: the cut network's prunable widths are multiples of 4 (or whole), the cut is exact, and the
    reduction is the nearest the multiple allows (Net(16) steps by ~5% of its MACs under 4)."""
    torch.manual_seed(0)
    model = Net(16)
    dense_macs = count_macs(model, EX)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = pruners.create(name, model, EX, Flops(0.5), total_steps=40, at=0.5, round_to=4)
    assert _train(model, pruner, 20, opt)[-1] and pruner.cut
    assert pruner.cut_report["max_abs_diff"] <= 1e-4 * max(1.0, pruner.cut_report["output_scale"])
    widths = [conv.out_channels for conv in (model.c1, model.c2, model.c3)]
    assert all(w % 4 == 0 for w in widths) and sum(widths) < 16 + 32 + 32, widths
    assert 1 - count_macs(model, EX) / dense_macs == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ConfigError, match="round_to must be an int >= 1"):
        pruners.create(name, Net(16), EX, Flops(0.5), total_steps=40, round_to=0)
