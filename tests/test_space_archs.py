"""The pruning space on every zoo model and on small architectures that each exercise one pattern.

For each model: dense cost equals torch's flop counter; for random masks the compact model equals the masked
model (eval and train mode), its MACs/params equal the space's prediction exactly, and the original model is
left bitwise unchanged with no hooks.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from autotrainonce import models
from autotrainonce.errors import UnsupportedOpError
from autotrainonce.space import PruningSpace, discover
from space_archs import (
    ARCHS,
    UNKNOWN_OP_ARCHS,
    assert_state_equal,
    build,
    build_zoo,
    fast_cpu,
    hook_count,
    macs,
    n_params,
    outputs,
    random_masks,
    state_snapshot,
    train_mode_copy,
)

ZOO = models.list_models()
ALL = [f"zoo:{n}" for n in ZOO] + list(ARCHS) + list(UNKNOWN_OP_ARCHS)
BN_NETS = {
    "densenet", "inception", "resnext", "mobilenetv3_se", "unet", "conv1d_resnet", "vgg_flatten", "conv3d",
    "layernorm_mlp",
}
TOL = 1e-4


@pytest.fixture(autouse=True)
def _fast_cpu() -> Iterator[None]:
    with fast_cpu():
        yield


@functools.cache
def _setup(name: str) -> tuple[nn.Module, torch.Tensor, PruningSpace]:
    """Model, input and space, built once per test process (the tests never modify them)."""
    model, x = build_zoo(name[4:]) if name.startswith("zoo:") else build(name)
    before = state_snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unknown-op warnings have their own test
        space = discover(model, x)
    assert_state_equal(model, before)
    assert hook_count(model) == 0
    return model, x, space


def _allowed_module_class(cls: type, original: set[type]) -> bool:
    return cls.__module__.startswith("torch.nn") or cls in original


@pytest.mark.parametrize("name", ALL)
def test_dense_cost_is_exact(name: str) -> None:
    model, x, space = _setup(name)
    assert space.flops() == macs(model, x)
    assert space.params() == n_params(model)
    assert space.flops(space.full_masks()) == space.flops()


@pytest.mark.parametrize("name", ALL)
def test_random_masks_compact_equals_masked(name: str) -> None:
    model, x, space = _setup(name)
    before = state_snapshot(model)
    original_classes = {type(m) for m in model.modules()}
    assert space.prunable_indices, f"{name}: nothing prunable"
    for seed in (0, 1):
        masks = random_masks(space, seed)
        compact = space.prune(model, masks, check=False)
        with torch.no_grad():
            with space.masked(model, masks):
                ref = outputs(model, (x,))
            got = outputs(compact, (x,))
        for a, b in zip(ref, got, strict=True):
            assert a.shape == b.shape
            assert float((a - b).abs().max()) <= TOL, f"{name} seed {seed}"
        assert space.flops(masks) == macs(compact, x), f"{name} seed {seed}"
        assert space.params(masks) == n_params(compact), f"{name} seed {seed}"
        assert space.flops(masks) < space.flops() or space.params(masks) < space.params()
        assert hook_count(compact) == 0 and hook_count(model) == 0
        assert all(_allowed_module_class(type(m), original_classes) for m in compact.modules())
    assert_state_equal(model, before)


@pytest.mark.parametrize("name", sorted(BN_NETS) + ["zoo:resnet20", "zoo:mobilenetv2_cifar"])
def test_train_mode_compact_equals_masked(name: str) -> None:
    """BatchNorm in train mode normalises with batch statistics: still per channel, so still equal."""
    model, x, space = _setup(name)
    masks = random_masks(space, 3)
    compact = train_mode_copy(space.prune(model, masks, check=False))
    masked = train_mode_copy(model)
    with torch.no_grad():
        with space.masked(masked, masks):
            ref = outputs(masked, (x,))
        got = outputs(compact, (x,))
    for a, b in zip(ref, got, strict=True):
        assert float((a - b).abs().max()) <= TOL
    # running statistics of the kept channels moved identically
    kept = dict(compact.named_buffers())
    for key, buf in masked.named_buffers():
        if key.endswith("running_mean") and kept[key].shape == buf.shape:
            assert torch.allclose(kept[key], buf, atol=1e-5)


@pytest.mark.parametrize("name", list(UNKNOWN_OP_ARCHS))
def test_unknown_op_warns_once_and_keeps_channels(name: str) -> None:
    model, x = build(name)
    _, _, label, path = UNKNOWN_OP_ARCHS[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space = discover(model, x)
    ours = [w for w in caught if "autotrainonce" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert label in str(ours[0].message) and f"'{path}'" in str(ours[0].message)
    blocked = [g for g in space.groups if not g.prunable and label in g.reason]
    assert blocked, space.summary()
    with pytest.raises(UnsupportedOpError, match=blocked[0].name):
        masks = [None] * len(space.groups)
        masks[space.groups.index(blocked[0])] = torch.zeros(blocked[0].size, dtype=torch.bool)
        space.prune(model, masks)


def test_modules_called_twice() -> None:
    """A parameter-free module may be shared (UNet's one MaxPool); a shared conv keeps its channels."""
    model, x, space = _setup("unet")
    assert all(g.prunable or "down" not in g.reason for g in space.groups)

    class SharedConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 4, 1)
            self.shared = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.shared(self.a(x)) + self.shared(self.b(x))
            return self.fc(y.mean((2, 3)))

    net = SharedConv().eval()
    with pytest.warns(UserWarning, match="called more than once"):
        sp = discover(net, torch.randn(1, 3, 8, 8))
    assert sp.flops() == macs(net, torch.randn(1, 3, 8, 8))
    assert not any(g.prunable for g in sp.groups if g.name in ("a", "b"))
