"""The guided proximal group-lasso step: hand-computed example, exact zeros, kept channels untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autotrainonce.ato import GroupProximal
from autotrainonce.space import ChannelGroup, Member


class Chain(nn.Module):
    """c1 (1->2, bias) -> bn(2) -> c2 (2->2) -> c3 (2->1), all 1x1 convs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.c2 = nn.Conv2d(2, 2, 1, bias=False)
        self.c3 = nn.Conv2d(2, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(self.c2(torch.relu(self.bn(self.c1(x)))))


def member(module: str, name: str, dim: int, n: int = 2, kind: str = "param") -> Member:
    idx = torch.arange(n)
    return Member(module, name, kind, dim, idx, idx.clone())


def groups() -> list[ChannelGroup]:
    g0 = ChannelGroup("c1", 2, members=[
        member("c1", "weight", 0), member("c1", "bias", 0), member("bn", "weight", 0), member("bn", "bias", 0),
        member("bn", "running_mean", 0, kind="buffer"), member("c2", "weight", 1),
    ])  # fmt: skip
    g1 = ChannelGroup("c2", 2, members=[member("c2", "weight", 0), member("c3", "weight", 1)])
    return [g0, g1]


def hand_model() -> Chain:
    m = Chain()
    with torch.no_grad():
        m.c1.weight.copy_(torch.tensor([2.0, 0.0]).view(2, 1, 1, 1))
        m.c1.bias.copy_(torch.tensor([1.0, 0.0]))
        m.bn.weight.copy_(torch.tensor([1.0, 0.8]))
        m.bn.bias.copy_(torch.tensor([0.5, 0.0]))
        m.bn.running_mean.copy_(torch.tensor([7.0, 9.0]))
        m.c2.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.6]]).view(2, 2, 1, 1))
        m.c3.weight.copy_(torch.tensor([4.0, 0.8]).view(1, 2, 1, 1))
    return m


def test_thresholds_share_lambda_by_dropped_count():
    assert GroupProximal.thresholds([1, 2, 0], lam=3.0, lr=0.5) == pytest.approx([0.5, 1.0, 0.0])
    assert GroupProximal.thresholds([0, 0], lam=3.0, lr=0.5) == [0.0, 0.0]


def test_hand_computed_step():
    # channel norms (all parameter members, buffers excluded):
    #   g0 ch0 (kept):    sqrt(2^2 + 1^2 + 1^2 + 0.5^2 + 3^2 + 0^2) -> untouched by g0
    #   g0 ch1 (dropped): sqrt(0.8^2 + 0.6^2) = 1   tau0 = 3 * 1/3 * 0.5 = 0.5 -> scale 0.5
    #   g1 ch0 (dropped): sqrt(3^2 + 0^2 + 4^2) = 5  tau1 = 3 * 2/3 * 0.5 = 1.0 -> scale 0.8
    #   g1 ch1 (dropped): sqrt(0^2 + 0.6^2 + 0.8^2) = 1 <= tau1               -> exactly 0
    m = hand_model()
    prox = GroupProximal(m, groups())
    prox.set_mask([torch.tensor([True, False]), torch.tensor([False, False])])
    taus = prox.step(lam=3.0, lr=0.5)
    assert taus == pytest.approx([0.5, 1.0])
    assert m.c1.weight.flatten().tolist() == [2.0, 0.0]
    assert m.c1.bias.tolist() == [1.0, 0.0]
    assert m.bn.weight.tolist() == pytest.approx([1.0, 0.4])
    assert m.bn.bias.tolist() == [0.5, 0.0]
    assert m.bn.running_mean.tolist() == [7.0, 9.0]  # buffers are not shrunk
    # c2.weight[j, i] *= scale_g1[j] * scale_g0[i]
    assert m.c2.weight.flatten().tolist() == pytest.approx([2.4, 0.0, 0.0, 0.0])
    assert m.c3.weight.flatten().tolist() == pytest.approx([3.2, 0.0])
    assert m.c3.weight.flatten()[1].item() == 0.0  # exact zero, not just small
    dropped, zero, worst = prox.count_zero()
    assert (dropped, zero) == (3, 1)
    # g0 ch1: bn.weight 0.4, c2.weight[1,1] 0 ; g1 ch0: c2.weight[0,:] (2.4, 0), c3 3.2 -> 4
    assert worst == pytest.approx(4.0)


def test_kept_channels_are_bitwise_untouched():
    torch.manual_seed(0)
    m = Chain()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    prox = GroupProximal(m, groups())
    prox.set_mask([torch.tensor([True, True]), torch.tensor([True, True])])
    prox.step(lam=1e6, lr=1.0)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    # only channel 1 of g0 dropped: channel-0 slices keep their exact bits
    prox.set_mask([torch.tensor([True, False]), torch.tensor([True, True])])
    prox.step(lam=1e6, lr=1.0)
    assert torch.equal(m.c1.weight[0], before["c1.weight"][0])
    assert torch.equal(m.c2.weight[:, 0], before["c2.weight"][:, 0])
    assert torch.equal(m.c3.weight, before["c3.weight"])
    dead = m.c1.weight[1].abs().sum() + m.bn.weight[1].abs() + m.c2.weight[:, 1].abs().sum()
    assert float(dead.detach()) == 0.0


def naive_step(model: nn.Module, gs: list[ChannelGroup], keep: list[torch.Tensor], lam: float, lr: float) -> None:
    """A slow reference: norms first (all groups), then shrink every dropped channel's slices one by one."""
    total = sum(int((~k).sum()) for k in keep)
    scales = []
    for g, k in zip(gs, keep):
        tau = lam * int((~k).sum()) / total * lr
        s = torch.ones(g.size, dtype=torch.float64)
        for c in range(g.size):
            if k[c]:
                continue
            sq = 0.0
            for mem in g.param_members():
                w = getattr(model.get_submodule(mem.module), mem.name)
                for pos, ch in zip(mem.index.tolist(), mem.channel.tolist()):
                    if ch == c:
                        sq += float(w.detach().double().select(mem.dim, pos).pow(2).sum())
            n = sq**0.5
            s[c] = max(0.0, n - tau) / n if n > 0 else 0.0
        scales.append(s)
    with torch.no_grad():
        for g, s in zip(gs, scales):
            for mem in g.param_members():
                w = getattr(model.get_submodule(mem.module), mem.name)
                for pos, ch in zip(mem.index.tolist(), mem.channel.tolist()):
                    w.select(mem.dim, pos).mul_(float(s[ch]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_step_matches_naive_reference(seed):
    torch.manual_seed(seed)
    a = Chain()
    b = Chain()
    b.load_state_dict(a.state_dict())
    gen = torch.Generator().manual_seed(seed)
    keep = [torch.rand(2, generator=gen) > 0.5, torch.rand(2, generator=gen) > 0.5]
    keep[1][0] = False  # at least one dropped channel
    prox = GroupProximal(a, groups())
    prox.set_mask(keep)
    prox.step(lam=2.0, lr=0.3)
    naive_step(b, groups(), keep, lam=2.0, lr=0.3)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, atol=1e-6, rtol=1e-6, msg=k)


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_first_moments_cleared_for_zeroed_channels(opt_name):
    m = hand_model()
    params = list(m.parameters())
    opt = (
        torch.optim.SGD(params, lr=0.1, momentum=0.9)
        if opt_name == "sgd"
        else torch.optim.AdamW(params, lr=0.1, weight_decay=0.0)
    )
    m(torch.randn(4, 1, 3, 3)).sum().backward()
    opt.step()
    key = "momentum_buffer" if opt_name == "sgd" else "exp_avg"
    before_sq = opt.state[m.c3.weight].get("exp_avg_sq", torch.zeros(())).clone()
    prox = GroupProximal(m, groups())
    prox.set_mask([torch.tensor([True, True]), torch.tensor([True, False])])
    prox.step(lam=1e6, lr=1.0, optimizer=opt)
    assert float(m.c3.weight[0, 1].detach().abs().sum()) == 0.0 and float(m.c2.weight[1].detach().abs().sum()) == 0.0
    buf3, buf2 = opt.state[m.c3.weight][key], opt.state[m.c2.weight][key]
    assert float(buf3[0, 1].abs().sum()) == 0.0 and float(buf2[1].abs().sum()) == 0.0
    assert float(buf3[0, 0].abs().sum()) > 0 and float(buf2[0].abs().sum()) > 0  # kept channel intact
    if opt_name == "adamw":  # second moments are deliberately kept
        assert torch.equal(opt.state[m.c3.weight]["exp_avg_sq"], before_sq)


def test_hard_zero_reports_largest_norm():
    m = hand_model()
    prox = GroupProximal(m, groups())
    prox.set_mask([torch.tensor([True, False]), torch.tensor([True, True])])
    assert prox.hard_zero() == pytest.approx(1.0)
    assert prox.count_zero() == (1, 1, 0.0)
    assert m.bn.weight.tolist() == [1.0, 0.0]


def test_step_requires_a_mask():
    prox = GroupProximal(hand_model(), groups())
    with pytest.raises(RuntimeError, match="set_mask"):
        prox.step(1.0, 1.0)
    with pytest.raises(ValueError, match="expected 2 masks"):
        prox.set_mask([torch.ones(2, dtype=torch.bool)])
