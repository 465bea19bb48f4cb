"""The pruning space contract: structure on known models, errors, soft masks, custom rules, export.

Round trips on many architectures live in test_space_archs.py; random graphs in test_space_hypothesis.py.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from autotrainonce import models
from autotrainonce.errors import SurgeryError, UnsupportedOpError
from autotrainonce.space import PruningSpace, discover, register_op_rule
from autotrainonce.space.rules import FUNCTION_RULES
from autotrainonce.space.rules_channel import passthrough
from space_archs import (
    CustomFunctionNet,
    SquareFunction,
    build,
    build_zoo,
    fast_cpu,
    macs,
    n_params,
    random_masks,
)

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _fast_cpu() -> Iterator[None]:
    with fast_cpu():
        yield


@functools.cache
def _zoo(name: str) -> tuple[nn.Module, torch.Tensor, PruningSpace]:
    model, x = build_zoo(name)
    return model, x, discover(model, x)


def _group(space: PruningSpace, name: str):
    found = [g for g in space.groups if g.name.split(" ")[0] == name]
    assert found, f"no group named {name}: {[g.name for g in space.groups]}"
    return found[0]


def _members(group) -> set[tuple[str, str, int]]:
    return {(m.module, m.name, m.dim) for m in group.members}


# -- structure on known models ---------------------------------------------------------------------------------
def test_resnet56_one_group_per_block_and_fixed_stream() -> None:
    _, _, space = _zoo("resnet56")
    prunable = [g for g in space.groups if g.prunable]
    assert len(prunable) == 27
    assert sorted(g.name for g in prunable) == sorted(
        f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(9)
    )
    for g in prunable:  # each is the inner channels: conv1 out, bn1, conv2 in
        block = g.name.rsplit(".", 1)[0]
        assert (f"{block}.conv2", "weight", 1) in _members(g)
        assert (f"{block}.bn1", "running_var", 0) in _members(g)
    whole = _group(space, "conv1")  # by default one padded-in channel keeps the whole stream
    assert not whole.prunable and "padded" in whole.reason and whole.size == 64
    assert ("layer3.8.conv2", "weight", 0) in _members(whole) and ("fc", "weight", 1) in _members(whole)
    # split_fixed: the stream is one prunable group, stage 1's 16 channels, which the zero-padding shortcuts
    # carry into the middle of stages 2 and 3; the padded-in channels form a fixed group of their own.
    split = discover(*build_zoo("resnet56"), split_fixed=True)
    stream = _group(split, "conv1")
    assert stream.prunable and stream.size == 16
    assert ("layer3.8.conv2", "weight", 0) in _members(stream) and ("fc", "weight", 1) in _members(stream)
    padded = _group(split, "layer2.0.conv2")
    assert not padded.prunable and "padded" in padded.reason and padded.size == 64 - 16  # stage 2's padded 16 and stage 3's 32
    assert ("layer3.8.conv2", "weight", 0) in _members(padded)
    assert sorted(g.name for g in split.groups if g.prunable) == sorted(["conv1 (+27 tied)", *(g.name for g in prunable)])


def test_resnet50_bottleneck_inner_convs_prunable() -> None:
    model, _, space = _zoo("resnet50")
    blocks = [f"layer{s}.{b}" for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3)) for b in range(n)]
    for block in blocks:
        for conv in ("conv1", "conv2"):
            g = _group(space, f"{block}.{conv}")
            assert g.prunable and g.size == model.get_submodule(f"{block}.{conv}").out_channels
    # the projection shortcut ties each stage's stream to its first block's conv3
    stage1 = _group(space, "layer1.0.conv3")
    assert ("layer1.0.downsample.0", "weight", 0) in _members(stage1)
    assert ("layer1.2.conv3", "weight", 0) in _members(stage1)


def test_mobilenetv2_expansion_prunable_and_depthwise_tied() -> None:
    _, _, space = _zoo("mobilenetv2_cifar")
    expansions = [g for g in space.groups if g.name.endswith("expand.conv")]
    assert len(expansions) == 16
    for g in expansions:
        assert g.prunable
        block = g.name.rsplit(".", 2)[0]
        roles = {(m.module, m.dim): m.role for m in g.members}
        assert roles[(f"{block}.dwconv.conv", 0)] == "channelwise"
        assert roles[(f"{block}.project.conv", 1)] == "in"
        # the depthwise conv is channel-wise: gated at the projection, never at its own input
        assert {gate.module for gate in g.gates} == {f"{block}.project.conv"}


@pytest.mark.parametrize("name", models.list_models())
def test_logits_and_input_never_prunable(name: str) -> None:
    model, x, space = _zoo(name)
    last = space.groups[-1]
    assert not last.prunable and last.reason == "network output"
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    for g in space.groups:
        assert (first_conv, "weight", 1) not in _members(g), "input channels must never be in a group"


def test_layernorm_mlp() -> None:
    model, x = build("layernorm_mlp")
    space = discover(model, x)
    assert _group(space, "fc1").prunable  # hidden layer between Linear layers
    assert _group(space, "fc3").prunable
    fc2 = _group(space, "fc2")
    assert not fc2.prunable and "LayerNorm norm_hidden" in fc2.reason
    assert not _group(space, "fc4").prunable


def test_flatten_into_linear_gives_each_channel_its_pixels() -> None:
    model, x = build("vgg_flatten")
    space = discover(model, x)
    last = _group(space, "features.4.0")
    member = next(m for m in last.members if m.module == "classifier.0" and m.dim == 1)
    assert member.index.numel() == 6 * 4 and torch.equal(torch.bincount(member.channel), torch.full((6,), 4))
    assert last.prunable


def test_groupnorm_prunes_whole_norm_groups() -> None:
    model, x = build("groupnorm")
    space = discover(model, x)
    g = _group(space, "c1")
    assert g.prunable and g.size == 2  # 8 channels in 2 norm groups
    member = next(m for m in g.members if m.module == "c1" and m.name == "weight")
    assert torch.equal(member.channel, torch.tensor([0] * 4 + [1] * 4))


def test_grouped_and_depthwise_multiplier_convs() -> None:
    model, x = build("resnext")
    space = discover(model, x)
    assert _group(space, "grouped.0").size == 2  # 8 outputs in 4 conv groups: channel k of each group tied
    assert _group(space, "reduce.0").size == 2  # its input is split the same way
    model, x = build("depthwise_mult2")
    space = discover(model, x)
    g = _group(space, "c1.0")
    dw = next(m for m in g.members if m.module == "dw.0" and m.name == "weight")
    assert dw.index.numel() == 12 and torch.equal(torch.bincount(dw.channel), torch.full((6,), 2))


def test_attention_known_but_unprunable_without_warning() -> None:
    for name in ("mha_block", "plain_attention"):
        model, x = build(name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # known ops: reasons, never warnings
            space = discover(model, x)
        assert space.flops() == macs(model, x)
    assert not _group(space, "q").prunable and "contracted by matmul" in _group(space, "q").reason
    assert _group(space, "v").prunable  # att @ v keeps v's channels on the last dim
    assert _group(space, "fc1").prunable
    model, x = build("mha_block")
    space = discover(model, x)
    assert [g.name for g in space.groups if g.prunable] == ["mlp.0"]

    class Bare(nn.Module):  # no LayerNorm in front: the MultiheadAttention itself is the reason
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(6, 8)
            self.attn = nn.MultiheadAttention(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.attn(h, h, h)[0]

    space = discover(Bare().eval(), torch.randn(5, 2, 6))
    assert "MultiheadAttention" in _group(space, "inp").reason


def test_split_literal_sizes_and_reflect_pad_keep_channels() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 6, 1)
            self.c = nn.Conv2d(3, 6, 1)
            self.out = nn.Conv2d(4 + 8 + 6, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p, q = torch.split(self.a(x), 4, dim=1)  # literal size: breaks once channels go
            r = F.pad(self.b(x), (0, 0, 0, 0, 1, 1), mode="reflect")  # copies channels 1 and 4
            s = x.sum(1, keepdim=True) * self.c(x)  # a broadcast single channel
            return self.out(torch.cat([p * q, r, s], 1))

    net = Net().eval()
    space = discover(net, torch.randn(1, 3, 5, 5))
    assert "split into literal sizes" in _group(space, "a").reason
    assert "non-constant padding" in _group(space, "b").reason
    assert _group(space, "c").prunable


def test_literal_view_keeps_channels() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.conv2 = nn.Conv2d(3, 5, 3)
            self.fc = nn.Linear(4 * 9 + 5 * 9, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.conv(x).view(-1, 36)  # literal width
            b = self.conv2(x).reshape(x.shape[0], -1)  # width inferred: still prunable
            return self.fc(torch.cat([a, b], 1))

    space = discover(Net().eval(), torch.randn(2, 3, 5, 5))
    assert "literal channel count" in _group(space, "conv").reason
    assert _group(space, "conv2").prunable


# -- errors ----------------------------------------------------------------------------------------------------
def test_wrong_mask_count_or_shape_is_value_error() -> None:
    model, x, space = _zoo("resnet20")
    with pytest.raises(ValueError, match="expected"):
        space.flops([None])
    masks = space.full_masks()
    i = space.prunable_indices[0]
    masks[i] = torch.ones(space.groups[i].size + 1, dtype=torch.bool)
    for call in (space.flops, space.params, space.soft_flops, lambda m: space.prune(model, m)):
        with pytest.raises(ValueError, match=re.escape(space.groups[i].name)):
            call(masks)
    with pytest.raises(ValueError), space.masked(model, masks):
        pass


def test_dropping_unprunable_channels_is_unsupported_op_error() -> None:
    model, x, space = _zoo("resnet20")
    masks = space.full_masks()
    gi = next(i for i, g in enumerate(space.groups) if not g.prunable and "padded" in g.reason)
    stream = space.groups[gi]
    masks[gi] = torch.ones(stream.size, dtype=torch.bool)
    masks[gi][3] = False
    for call in (space.flops, lambda m: space.prune(model, m)):
        with pytest.raises(UnsupportedOpError) as info:
            call(masks)
        assert stream.name in str(info.value) and stream.reason in str(info.value)
    masks[gi] = torch.ones(stream.size, dtype=torch.bool)  # all kept is fine
    assert space.flops(masks) == space.flops()


def test_prune_check_raises_surgery_error_on_a_wrong_rule() -> None:
    """A rule claiming cumsum is channel-wise is wrong; the probe comparison must catch it."""
    model, x = build("cumsum")
    space = discover(model, x, rules={torch.cumsum: passthrough})
    masks = random_masks(space, 0)
    with pytest.raises(SurgeryError, match="differs from the masked model"):
        space.prune(model, masks)


# -- soft masks ------------------------------------------------------------------------------------------------
def test_soft_cost_matches_hard_cost_and_has_gradients() -> None:
    model, x, space = _zoo("mobilenetv2_cifar")
    hard = random_masks(space, 5)
    soft = [None if m is None else m.float().requires_grad_() for m in hard]
    flops = space.soft_flops(soft)
    params = space.soft_params(soft)
    assert int(round(flops.item())) == space.flops(hard)
    assert int(round(params.item())) == space.params(hard)
    (flops / 1e6 + params / 1e6).backward()
    for m in soft:
        if m is not None:
            assert m.grad is not None and bool((m.grad > 0).all())
    assert space.soft_flops([None] * len(space.groups)).item() == space.flops()


def test_float_masks_gate_with_gradients() -> None:
    model, x, space = _zoo("resnet20")
    soft = [None if m is None else torch.full((g.size,), 0.5, requires_grad=True)
            for g, m in zip(space.groups, random_masks(space, 0))]
    with space.masked(model, soft):
        loss = model(x).square().sum()
    loss.backward()
    grads = [m.grad for m in soft if m is not None]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)
    # float 0/1 masks gate exactly like bool masks
    hard = random_masks(space, 1)
    with torch.no_grad():
        with space.masked(model, hard):
            a = model(x)
        with space.masked(model, [None if m is None else m.float() for m in hard]):
            b = model(x)
    assert torch.equal(a, b)
    for m in model.modules():
        assert not m._forward_pre_hooks


def test_masked_removes_hooks_on_error() -> None:
    model, x, space = _zoo("resnet20")
    with pytest.raises(RuntimeError, match="boom"), space.masked(model, random_masks(space, 0)):
        raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks for m in model.modules())


# -- custom rules ------------------------------------------------------------------------------------------------
def test_custom_rules_make_an_unknown_op_prunable() -> None:
    model, x = build("custom_function")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        local = discover(model, x, rules={SquareFunction: passthrough})
    assert _group(local, "c1.0").prunable
    register_op_rule(SquareFunction, passthrough)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            space = discover(CustomFunctionNet().eval(), x)
    finally:
        del FUNCTION_RULES[SquareFunction]
    assert _group(space, "c1.0").prunable
    masks = random_masks(local, 2)
    compact = local.prune(model, masks)  # check=True: the probe agrees
    assert local.flops(masks) == macs(compact, x) and local.params(masks) == n_params(compact)


def test_summary_lists_every_group() -> None:
    _, _, space = _zoo("resnet20")
    text = space.summary()
    assert text.splitlines()[0].startswith("CifarResNet: 11 channel groups, 9 prunable")
    for g in space.groups:
        assert g.name in text
    assert "prunable" in space.groups[1].describe() and repr(space).startswith("PruningSpace(")


# -- the compact model outside the library -----------------------------------------------------------------------
def _run_without_autotrainonce(script: str, tmp_path: Path) -> str:
    code = textwrap.dedent(script)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compact_loads_without_autotrainonce(tmp_path: Path) -> None:
    # a user's model (classes from space_archs) pickled whole
    model, x = build("densenet")
    space = discover(model, x)
    compact = space.prune(model, random_masks(space, 0))
    torch.save({"model": compact, "x": x, "y": compact(x).detach()}, tmp_path / "user.pt")
    # a zoo model: fx turns it into plain torch.nn modules plus generated code
    zoo, zx, zspace = _zoo("resnet20")
    zcompact = torch.fx.symbolic_trace(zspace.prune(zoo, random_masks(zspace, 0)))
    for node in zcompact.graph.nodes:  # fx cannot pickle string annotations (from __future__ annotations)
        node.type = None
    zcompact.recompile()
    assert all(type(m).__module__.startswith("torch.") for m in zcompact.modules())
    torch.save({"model": zcompact, "x": zx, "y": zcompact(zx).detach()}, tmp_path / "zoo.pt")
    out = _run_without_autotrainonce(
        """
        import sys, torch
        for name in ("user.pt", "zoo.pt"):
            blob = torch.load(name, weights_only=False)
            blob["model"].eval()
            assert torch.allclose(blob["model"](blob["x"]), blob["y"], atol=1e-6)
        assert not any(m.startswith("autotrainonce") for m in sys.modules), "autotrainonce was imported"
        print("ok")
        """,
        tmp_path,
    )
    assert out.strip() == "ok"


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx/onnxruntime not installed",
)
def test_onnx_export_of_pruned_model_matches_torch(tmp_path: Path) -> None:
    import onnxruntime as ort

    model, x, space = _zoo("resnet20")
    compact = space.prune(model, random_masks(space, 4)).eval()
    path = tmp_path / "compact.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(compact, (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = compact(x).numpy()
    assert abs(y - ref).max() <= 1e-4


# -- cross-check with Torch-Pruning -----------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("torch_pruning") is None, reason="torch-pruning not installed")
@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_groups_match_torch_pruning(name: str) -> None:
    """Torch-Pruning's DependencyGraph ties the same convs' output channels together.

    The one difference is deliberate: in ResNet-20's zero-padded residual stream we split off the channels the
    shortcuts pad in (stages 2 and 3's outer channels) as a fixed group; Torch-Pruning has one stream group.
    """
    import torch_pruning as tp

    model, x = build_zoo(name)
    space = discover(model, x, split_fixed=True)  # with whole groups the padded stream would not be prunable
    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    theirs = set()
    for group in graph.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear]):
        convs = frozenset(names[dep.target.module] for dep, _ in group
                          if dep.handler == tp.prune_conv_out_channels)
        if convs:
            theirs.add(convs)
    ours = {frozenset(m.module for m in g.members if m.role == "out" and m.name == "weight"
                      and isinstance(model.get_submodule(m.module), nn.Conv2d))
            for g in space.groups}
    ours_prunable = {frozenset(m.module for m in g.members if m.role == "out" and m.name == "weight")
                     for g in space.groups if g.prunable and g.name != "fc"}
    assert ours_prunable == theirs
    fixed = ours - {frozenset()} - theirs
    late_conv2 = frozenset(f"layer{s}.{b}.conv2" for s in (2, 3) for b in range(3))
    assert fixed == ({late_conv2} if name == "resnet20" else set())


# -- edge cases of the contract ------------------------------------------------------------------------------
def test_layer_called_with_keyword_input_is_gated() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(input=torch.relu(self.a(x)))

    net, x = Net().eval(), torch.randn(3, 4)
    space = discover(net, x)
    masks = [torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool), None]
    compact = space.prune(net, masks)
    assert compact.b.in_features == 4
    with torch.no_grad(), space.masked(net, masks):
        assert torch.allclose(net(x), compact(x), atol=1e-6)


def test_zero_width_layer_is_value_error() -> None:
    """A group tied through chunk can hold channels one layer does not produce; emptying it is refused."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 3, 1)
            self.b = nn.Conv2d(3, 1, 1)
            self.out = nn.Conv2d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p, q = torch.cat([self.a(x), self.b(x)], 1).chunk(2, 1)  # q = [a2, b0]
            return self.out(p * q)

    net = Net().eval()
    space = discover(net, torch.randn(1, 3, 4, 4))
    group = _group(space, "a")
    assert group.prunable and group.size == 2  # {a0, a2} and {a1, b0}
    b_channel = int(next(m for m in group.members if m.module == "b" and m.name == "weight").channel[0])
    mask = torch.ones(2, dtype=torch.bool)
    mask[b_channel] = False
    masks = [mask if g is group else None for g in space.groups]
    with pytest.raises(ValueError, match="remove every channel of b.weight"):
        space.prune(net, masks)


def test_prune_with_check_leaves_a_training_model_as_it_was() -> None:
    model, x = build_zoo("resnet20")
    model.train()
    space = discover(model, x)
    stats = model.bn1.running_mean.clone()
    compact = space.prune(model, random_masks(space, 0))  # the probe runs both models in eval mode
    assert model.training and all(m.training for m in model.modules())
    assert compact.training
    assert torch.equal(model.bn1.running_mean, stats)


# -- partly fixed groups (split_fixed) --------------------------------------------------------------------------
def test_padded_residual_stream_prunes_exactly_and_keeps_the_padding() -> None:
    """Removing stream channels thins all three stages; the shortcuts' padding widths stay valid."""
    from autotrainonce.measure import count_macs

    model, x = build_zoo("resnet20")
    space = discover(model, x, split_fixed=True)
    stream = _group(space, "conv1")
    assert stream.prunable and stream.size == 16
    masks = space.full_masks()
    masks[0] = torch.ones(16, dtype=torch.bool)
    masks[0][[1, 5, 6, 12]] = False  # 12 of stage 1's channels stay
    inner = space.groups.index(_group(space, "layer2.1.conv1"))
    masks[inner] = torch.arange(32) % 3 != 0
    compact = space.prune(model, masks).eval()  # check=True: the compact model matches the masked one
    assert compact.conv1.out_channels == 12 and compact.layer1[2].conv2.out_channels == 12
    assert compact.layer2[0].conv2.out_channels == 8 + 12 + 8  # the shortcut pads 8 on each side, as before
    assert compact.layer3[2].conv2.out_channels == 16 + 28 + 16 and compact.fc.in_features == 60
    assert compact.layer2[1].conv1.out_channels == 21
    with torch.no_grad(), space.masked(model, masks):
        expected = model(x)
    assert torch.allclose(compact(x), expected, atol=1e-5)
    assert space.flops(masks) == count_macs(compact, x)  # the cost of a thinner stream is still exact


def test_by_default_a_partly_fixed_group_stays_whole() -> None:
    model, x = build_zoo("resnet20")
    old = discover(model, x)
    assert len(old.groups) == 11 and len(old.prunable_indices) == 9
    assert not old.groups[0].prunable and "padded" in old.groups[0].reason and old.groups[0].size == 64
    new = discover(model, x, split_fixed=True)
    assert len(new.groups) == 12 and len(new.prunable_indices) == 10
    assert old.flops() == new.flops() and old.params() == new.params()
