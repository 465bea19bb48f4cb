"""prune(..., optimizer=...): the optimizer moves onto the compact model with its state sliced."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from autotrainonce.errors import SurgeryError
from autotrainonce.space import discover


def _net() -> nn.Module:
    torch.manual_seed(0)
    # the first conv's bias is not followed by BN: a bias before BN has a ~0 gradient that Adam blows up to
    # +-lr from rounding noise, which would make "kept weights agree" a test of float noise
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Identity(),
        nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )


def _masks(space) -> list:
    g = torch.Generator().manual_seed(1)
    out = []
    for grp in space.groups:
        if not grp.prunable:
            out.append(None)
            continue
        m = torch.rand(grp.size, generator=g) < 0.5
        m[0] = True
        out.append(m)
    return out


def _zero_dropped(model: nn.Module, space, masks) -> None:
    with torch.no_grad():
        for grp, m in zip(space.groups, masks):
            if m is None:
                continue
            for mem in grp.param_members():
                t = getattr(model.get_submodule(mem.module), mem.name)
                drop = mem.index[~m[mem.channel]]
                t.index_fill_(mem.dim, drop, 0.0)


def _step(model, opt, x, y, space=None, masks=None) -> None:
    gates = space.masked(model, masks) if space is not None else contextlib.nullcontext()
    with gates:
        loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    ],
    ids=["sgd-nesterov-wd", "adamw", "adam-amsgrad"],
)
def test_one_more_step_matches_masked_model(make_opt) -> None:
    model = _net()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    space = discover(model, x[:1])
    masks = _masks(space)
    _zero_dropped(model, space, masks)
    opt = make_opt(model.parameters())
    for _ in range(3):
        _step(model, opt, x, y, space, masks)
    reference = copy.deepcopy(model)
    ref_opt = make_opt(reference.parameters())
    # load_state_dict shares state tensors; the reference must own its own
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    compact = space.prune(model, masks, optimizer=opt)
    assert all(any(q is p for q in compact.parameters()) for g in opt.param_groups for p in g["params"])
    _step(compact, opt, x, y)
    _step(reference, ref_opt, x, y, space, masks)

    # the compact model's weights equal the kept weights of the masked reference
    expected = space.prune(reference, masks, check=False)
    for (name, a), (_, b) in zip(compact.named_parameters(), expected.named_parameters()):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=1e-6, rtol=0), (name, float((a - b).abs().max().detach()))


def test_unpruned_parameters_keep_their_state() -> None:
    model = _net()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    space = discover(model, x[:1])
    masks = _masks(space)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, opt, x, y)
    before = {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    compact = space.prune(model, masks, optimizer=opt)
    for n, p in compact.named_parameters():
        buf = opt.state[p]["momentum_buffer"]
        assert buf.shape == p.shape, n
        if before[n].shape == p.shape:
            assert torch.equal(buf, before[n]), n
    assert len(opt.state) == len(list(compact.parameters()))


def test_lr_scheduler_keeps_working_after_the_cut() -> None:
    model = _net()
    space = discover(model, torch.randn(1, 3, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    compact = space.prune(model, _masks(space), optimizer=opt)
    _step(compact, opt, torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,)))
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


class _OddState(torch.optim.SGD):
    """An optimizer whose state is not shaped like its parameters (e.g. a flattened buffer)."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        super().step(closure)
        for g in self.param_groups:
            for p in g["params"]:
                self.state[p]["flat"] = p.detach().flatten().clone()


def test_unsliceable_state_is_refused_and_optimizer_left_alone() -> None:
    model = _net()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    space = discover(model, x[:1])
    opt = _OddState(model.parameters(), lr=0.1)
    _step(model, opt, x, y)
    params_before = [p for g in opt.param_groups for p in g["params"]]
    with pytest.raises(SurgeryError, match="_OddState"):
        space.prune(model, _masks(space), optimizer=opt)
    assert [p for g in opt.param_groups for p in g["params"]] == params_before
