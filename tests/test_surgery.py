"""space.prune_(model, masks, optimizer=): the cut in place (same module objects, optimizer moved along)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autotrainonce.errors import SurgeryError
from autotrainonce.space import discover
from space_archs import ARCHS, build, outputs, random_masks


def _masked(space, model, masks, x):
    model.eval()
    with torch.no_grad(), space.masked(model, masks):
        return outputs(model, (x,))


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_in_place_cut_equals_the_copy_and_keeps_the_module_objects(name):
    model, x = build(name)
    space = discover(model, x)
    masks = random_masks(space, seed=3)
    ref = _masked(space, model, masks, x)
    copy_cut = space.prune(model, masks)
    modules = dict(model.named_modules())
    same = space.prune_(model, masks)
    assert same is model
    assert all(m is modules[p] for p, m in model.named_modules())  # the user's references stay valid
    model.eval()
    copy_cut.eval()
    with torch.no_grad():
        got, want = outputs(model, (x,)), outputs(copy_cut, (x,))
    for a, b, r in zip(got, want, ref):
        assert a.shape == b.shape == r.shape
        assert torch.allclose(a, r, atol=1e-4 * max(1.0, float(r.abs().max())))
        assert torch.equal(a, b)
    assert model.state_dict().keys() == copy_cut.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, copy_cut.state_dict()[k]), k


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )  # fmt: skip


def _half(space) -> list:
    return [None if not g.prunable else torch.arange(g.size) % 2 == 0 for g in space.groups]


def test_optimizer_follows_and_training_continues_while_the_old_loss_graph_is_alive():
    model = _net()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    space = discover(model, x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    # `loss` keeps the last step's graph alive, as a user's loop does until its next assignment
    space.prune_(model, _half(space), optimizer=opt)
    ids = {id(p) for p in model.parameters()}
    assert ids == {id(p) for g in opt.param_groups for p in g["params"]}
    assert model[0].weight.shape == (4, 3, 3, 3) and model[0].out_channels == 4
    assert model[1].num_features == 4 and model[3].in_channels == 4 and model[8].in_features == 6
    assert opt.state[model[0].weight]["momentum_buffer"].shape == (4, 3, 3, 3)
    before = model[0].weight.detach().clone()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)


def test_adamw_state_is_sliced_to_the_kept_channels():
    model = _net()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    space = discover(model, x[:1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    avg = opt.state[model[0].weight]["exp_avg"].clone()
    masks = _half(space)
    space.prune_(model, masks, optimizer=opt)
    keep = masks[next(i for i, g in enumerate(space.groups) if g.prunable)]
    assert torch.equal(opt.state[model[0].weight]["exp_avg"], avg[keep])


def test_refusals_leave_model_and_optimizer_untouched():
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    space = discover(model, x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.state[model[0].weight]["odd"] = torch.zeros(7)  # state that cannot be sliced
    params = list(model.parameters())
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(SurgeryError, match="cannot slice state 'odd'"):
        space.prune_(model, _half(space), optimizer=opt)
    empty = [None if not g.prunable else torch.zeros(g.size, dtype=torch.bool) for g in space.groups]
    with pytest.raises(ValueError, match="cannot shrink to zero"):
        space.prune_(model, empty)
    assert list(model.parameters()) == params and all(p is q for p, q in zip(model.parameters(), params))
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])
    assert model[0].out_channels == 8


def test_torch_compile_wrapper_recompiles_after_the_cut():
    model = _net()
    x = torch.randn(4, 3, 8, 8)
    compiled = torch.compile(model, backend="eager")
    space = discover(model, x[:1])
    masks = _half(space)
    ref = _masked(space, model, masks, x)
    model.eval()
    compiled(x)
    space.prune_(model, masks)
    with torch.no_grad():
        assert torch.allclose(compiled(x), ref[0], atol=1e-5)


def test_parametrized_modules_are_refused_before_anything_changes():
    from torch.nn.utils.parametrizations import weight_norm

    model = _net()
    model[3] = weight_norm(model[3])
    space = discover(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(SurgeryError, match="parametrizations .* use space.prune"):
        space.prune_(model, _half(space))
    assert model[0].out_channels == 8


@pytest.mark.parametrize("in_place", [True, False])
def test_a_channels_last_model_stays_channels_last_after_the_cut(in_place):
    # The trainer runs convolutional models channels-last on CUDA; a cut that handed back row-major weights
    # would leave the compact network converting between layouts at every step.
    model = _net().to(memory_format=torch.channels_last)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    space = discover(model, x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    masks = _half(space)
    ref = _masked(space, model, masks, x)
    cut = space.prune_(model, masks, optimizer=opt) if in_place else space.prune(model, masks, optimizer=opt)
    convs = [m for m in cut.modules() if isinstance(m, nn.Conv2d)]
    assert [c.weight.shape[:2] for c in convs] == [(4, 3), (6, 4)]
    for conv in convs:
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv.weight.is_contiguous()
        assert opt.state[conv.weight]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)
    cut.eval()
    with torch.no_grad():
        got = outputs(cut, (x,))
    assert torch.allclose(got[0], ref[0], atol=1e-5)


def test_a_row_major_model_stays_row_major_after_the_cut():
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    space = discover(model, x[:1])
    space.prune_(model, _half(space))
    assert all(p.is_contiguous() for p in model.parameters())
