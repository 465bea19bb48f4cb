"""The op table (issue 14): one registration per op holds its rule, attribute fixer and rebuild description.

The "Your own layer" example of docs/pruning-space.md runs here verbatim; the other tests pin the table's
contents and semantics, and a layer of the user's own through prune, export and reload.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import autotrainonce as ato
from autotrainonce import export
from autotrainonce.errors import CheckpointError
from autotrainonce.export import load_compact, save_compact
from autotrainonce.space import (
    fixers,
    max_output_diff,
    register_attribute_fixer,
    register_op,
    register_op_rule,
    rules_channel,
    rules_shape,
    unregister_op,
)
from autotrainonce.space.ops import MODULE_OPS, OpSpec, op_spec

ROOT = Path(__file__).resolve().parents[1]

FULL = {  # built-in layers that surgery resizes: rule, fixer and rebuild description
    nn.Conv1d: (rules_channel.conv, fixers.fix_conv),
    nn.Conv2d: (rules_channel.conv, fixers.fix_conv),
    nn.Conv3d: (rules_channel.conv, fixers.fix_conv),
    nn.ConvTranspose1d: (rules_channel.conv, fixers.fix_conv),
    nn.ConvTranspose2d: (rules_channel.conv, fixers.fix_conv),
    nn.ConvTranspose3d: (rules_channel.conv, fixers.fix_conv),
    nn.Linear: (rules_channel.linear, fixers.fix_linear),
    nn.BatchNorm1d: (rules_channel.channel_norm, fixers.fix_channel_norm),
    nn.BatchNorm2d: (rules_channel.channel_norm, fixers.fix_channel_norm),
    nn.BatchNorm3d: (rules_channel.channel_norm, fixers.fix_channel_norm),
    nn.SyncBatchNorm: (rules_channel.channel_norm, fixers.fix_channel_norm),
    nn.InstanceNorm1d: (rules_channel.channel_norm, fixers.fix_channel_norm),
    nn.InstanceNorm2d: (rules_channel.channel_norm, fixers.fix_channel_norm),
    nn.InstanceNorm3d: (rules_channel.channel_norm, fixers.fix_channel_norm),
    nn.GroupNorm: (rules_channel.group_norm, fixers.fix_group_norm),
    nn.PReLU: (rules_channel.prelu, fixers.fix_prelu),
}
SAMPLES = {  # one instance of each, with non-default arguments where they matter
    nn.Conv1d: lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, bias=False),
    nn.Conv2d: lambda: nn.Conv2d(4, 8, (3, 1), dilation=2, groups=2, padding_mode="reflect"),
    nn.Conv3d: lambda: nn.Conv3d(2, 4, 3),
    nn.ConvTranspose1d: lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1),
    nn.ConvTranspose2d: lambda: nn.ConvTranspose2d(4, 6, 3, bias=False),
    nn.ConvTranspose3d: lambda: nn.ConvTranspose3d(2, 4, 3),
    nn.Linear: lambda: nn.Linear(5, 7, bias=False),
    nn.BatchNorm1d: lambda: nn.BatchNorm1d(6, eps=1e-3),
    nn.BatchNorm2d: lambda: nn.BatchNorm2d(6, momentum=0.2),
    nn.BatchNorm3d: lambda: nn.BatchNorm3d(6, affine=False),
    nn.SyncBatchNorm: lambda: nn.SyncBatchNorm(6),
    nn.InstanceNorm1d: lambda: nn.InstanceNorm1d(6, affine=True),
    nn.InstanceNorm2d: lambda: nn.InstanceNorm2d(6),
    nn.InstanceNorm3d: lambda: nn.InstanceNorm3d(6, track_running_stats=True),
    nn.GroupNorm: lambda: nn.GroupNorm(3, 6, eps=1e-4),
    nn.PReLU: lambda: nn.PReLU(6),
}


def _section(path: Path, title: str) -> str:
    """The text of the markdown section ``title`` (up to the next heading of any level)."""
    text = path.read_text()
    start = text.index(f"### {title}\n")
    nxt = re.search(r"^#{1,3} ", text[start + 4 :], flags=re.M)
    return text[start : start + 4 + nxt.start()] if nxt else text[start:]


def _masks(space, seed: int = 0) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor | None] = []
    for group in space.groups:
        if not group.prunable:
            out.append(None)
            continue
        keep = torch.rand(group.size, generator=g) < 0.5
        keep[0] = True  # a layer cannot shrink to zero width
        out.append(keep)
    return out


# -- the documented example ---------------------------------------------------------------------------------
def test_your_own_layer_example_runs_verbatim(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _section(ROOT / "docs/pruning-space.md", "Your own layer"), re.S)
    assert blocks and "register_op(" in blocks[0] and "load_compact(" in blocks[-1]
    monkeypatch.chdir(tmp_path)  # the example writes runs/scaled
    ns: dict = {"__name__": "your_own_layer"}
    try:
        for block in blocks:
            exec(compile(block, "docs/pruning-space.md", "exec"), ns)
    finally:
        if "ScaledConv2d" in ns:
            unregister_op(ns["ScaledConv2d"])
    desc = json.loads((tmp_path / "runs/scaled" / export.JSON_FILE).read_text())
    assert desc["modules"]["conv1"]["type"] == "your_own_layer:ScaledConv2d"
    assert desc["modules"]["conv2"]["args"]["bias"] is False


# -- the table ------------------------------------------------------------------------------------------------
def test_table_holds_every_builtin_type_with_its_parts():
    for cls, (rule, fixer) in FULL.items():
        spec = op_spec(cls)
        assert spec is not None and spec.rule is rule and spec.fix_attributes is fixer, cls
        assert spec.rebuild and all(isinstance(n, str) for n in spec.rebuild), cls
    assert op_spec(nn.ConvTranspose2d).rebuild[-1] == "output_padding"
    # known, channels kept or passed on: a rule only
    for cls, rule in [(nn.LayerNorm, rules_channel.layer_norm), (nn.MultiheadAttention, rules_channel.attention_module),
                      (nn.ReLU, rules_channel.passthrough), (nn.MaxPool2d, rules_channel.spatial_passthrough),
                      (nn.Softmax, rules_channel.softmax), (nn.Flatten, rules_shape.flatten)]:  # fmt: skip
        assert op_spec(cls) == OpSpec(rule=rule), cls
    # functions and Tensor methods keep a rule table of their own, reached through the same function
    assert op_spec(torch.cat).rule is rules_shape.cat and op_spec("view").rule is rules_shape.reshape
    assert op_spec(torch.nn.functional.scaled_dot_product_attention).rule is rules_channel.sdpa
    assert op_spec(torch.cumsum) is None and op_spec(nn.Embedding) is None


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_builtin_rebuild_descriptions_round_trip(cls):
    module = SAMPLES[cls]()
    spec = export._module_spec(module)
    assert spec is not None and spec["type"] == cls.__name__
    json.dumps(spec)  # storable as is
    rebuilt = export._build_module("m", json.loads(json.dumps(spec)))
    assert type(rebuilt) is cls and export._module_spec(rebuilt) == spec
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}


class _Layer(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _fixer(m: nn.Module, space, path: str, masks: list) -> None:  # noqa: ANN001
    pass


def test_a_registration_replaces_an_earlier_one():
    try:
        register_op(_Layer, rule=rules_channel.passthrough, fix_attributes=_fixer, rebuild=("n",))
        assert MODULE_OPS[_Layer] == OpSpec(rules_channel.passthrough, _fixer, ("n",))
        register_op(_Layer, rule=rules_channel.elementwise)  # the whole entry: the other parts are gone
        assert MODULE_OPS[_Layer] == OpSpec(rule=rules_channel.elementwise)
        # the one-part registrations of earlier versions set their part and keep the rest
        register_attribute_fixer(_Layer, _fixer)
        register_op_rule(_Layer, rules_channel.passthrough)
        assert MODULE_OPS[_Layer] == OpSpec(rules_channel.passthrough, _fixer, None)
        register_op_rule(torch.cumsum, rules_channel.passthrough)
        assert op_spec(torch.cumsum).rule is rules_channel.passthrough
    finally:
        unregister_op(_Layer)
        unregister_op(torch.cumsum)
    assert op_spec(_Layer) is None and op_spec(torch.cumsum) is None


def test_register_op_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="give rule="):
        register_op(_Layer)
    with pytest.raises(TypeError, match="only module classes"):
        register_op(torch.cumsum, rule=rules_channel.passthrough, rebuild=("dim",))
    with pytest.raises(ValueError, match="needs rule="):
        register_op("cumsum")
    with pytest.raises(TypeError, match="tuple of argument names"):
        register_op(_Layer, rebuild="n")  # a bare string would be read letter by letter
    with pytest.raises(ValueError, match=r"\['width'\].*_Layer\(\) does not take"):
        register_op(_Layer, rebuild=("width",))
    assert op_spec(_Layer) is None


# -- a layer of one's own ---------------------------------------------------------------------------------------
class ChannelScale(nn.Module):
    """Not a torch.nn subclass: a learned scale per channel, written with plain tensor ops."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.scale = nn.Parameter(torch.rand(num_channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


def channel_scale_rule(ctx, node):  # noqa: ANN001, ANN201
    out = rules_channel.passthrough(ctx, node)
    if out is not None:
        path, _ = ctx.module(node)
        ctx.record((path, "scale"), "param", 0, out.ids, "channelwise")
        ctx.activations[(path, "in")] = out.ids  # lets fixers.kept_inputs read the kept width
    return out


def fix_channel_scale(m: nn.Module, space, path: str, masks: list) -> None:  # noqa: ANN001
    m.num_channels = fixers.kept_inputs(space, path, masks, m.num_channels)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.scale1 = ChannelScale(12)
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1)
        self.scale2 = ChannelScale(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.scale1(self.conv1(x)))
        x = torch.relu(self.scale2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def registered():
    register_op(ChannelScale, rule=channel_scale_rule, fix_attributes=fix_channel_scale, rebuild=("num_channels",))
    yield
    unregister_op(ChannelScale)


def _dense_and_space(seed: int = 0):
    torch.manual_seed(seed)
    dense = Net().eval()
    x = torch.randn(2, 3, 10, 10)
    return dense, x, ato.discover(dense, x)


def test_unregistered_layer_is_traced_through_and_kept():
    _, _, space = _dense_and_space()
    by_name = {g.name: g for g in space.groups}
    assert not by_name["conv1"].prunable and not by_name["conv2"].prunable  # x * self.scale: fixed channels


def test_custom_layer_prunes_exports_and_reloads(registered, tmp_path):
    dense, x, space = _dense_and_space()
    by_name = {g.name: g for g in space.groups}
    assert by_name["conv1"].prunable and by_name["conv2"].prunable
    assert any(m.module == "scale1" and m.name == "scale" for m in by_name["conv1"].members)
    masks = _masks(space)
    compact = space.prune(dense, masks)
    kept = int(masks[[g.name for g in space.groups].index("conv1")].sum())
    assert compact.scale1.num_channels == kept == compact.scale1.scale.numel() == compact.conv2.in_channels
    diff, _ = max_output_diff(space, dense, compact, masks, (torch.randn(3, 3, 10, 10),))
    assert diff <= 1e-5
    assert space.params(masks) == sum(p.numel() for p in compact.parameters())

    paths = save_compact(compact, x, tmp_path, onnx=False, reference=dense)
    desc = json.loads(paths["json"].read_text())
    assert desc["modules"]["scale1"] == {"type": f"{__name__}:ChannelScale", "args": {"num_channels": kept}}
    rebuilt = load_compact(tmp_path, model=Net())
    assert isinstance(rebuilt.scale1, ChannelScale) and rebuilt.scale1.num_channels == kept
    probe = torch.randn(4, 3, 10, 10)
    with torch.no_grad():
        assert torch.allclose(rebuilt(probe), compact(probe), atol=1e-5)
        # compact.pt: fx traced through the layer, so the graph holds torch calls only
        pt = torch.load(paths["pt"], weights_only=False)
        assert torch.allclose(pt(probe), compact(probe), atol=1e-5)


def test_per_call_rule_also_keeps_the_layer_one_node():
    torch.manual_seed(0)
    dense = Net().eval()
    space = ato.discover(dense, torch.randn(1, 3, 8, 8), rules={ChannelScale: channel_scale_rule})
    assert {g.name: g.prunable for g in space.groups}["conv1"]


def test_unregistered_type_in_compact_json_is_refused(registered, tmp_path):
    dense, x, space = _dense_and_space()
    compact = space.prune(dense, _masks(space))
    save_compact(compact, x, tmp_path, onnx=False, reference=dense)
    unregister_op(ChannelScale)  # a loading process that never registered the class
    with pytest.raises(CheckpointError, match=r"'scale1' of type '.*:ChannelScale', which load_compact cannot rebuild: no class of that name is registered"):
        load_compact(tmp_path, model=Net())
    rebuilt = load_compact(tmp_path, model=Net(), allowed_types=[ChannelScale])  # or allowed explicitly
    assert rebuilt.scale1.scale.numel() == compact.scale1.scale.numel()

    # A file naming a module path never makes the loader import it.
    path = tmp_path / export.JSON_FILE
    desc = json.loads(path.read_text())
    desc["modules"]["scale1"]["type"] = "ato_not_imported_module:Thing"
    path.write_text(json.dumps(desc))
    with pytest.raises(CheckpointError, match="ato_not_imported_module:Thing.*never imports code"):
        load_compact(tmp_path, model=Net(), allowed_types=[ChannelScale])
    assert "ato_not_imported_module" not in sys.modules


class _SubConv(nn.Conv2d):
    """A torch layer subclass that keeps forward: the Conv2d rule and fixer apply, its constructor may differ."""


def test_subclass_keeping_forward_inherits_rule_and_fixer_not_rebuild(tmp_path):
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = _SubConv(3, 8, 3)
            self.b = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    dense = M().eval()
    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaf with the Conv2d rule: no unknown op
        space = ato.discover(dense, x)
    assert space.groups[0].prunable
    compact = space.prune(dense, _masks(space))
    assert compact.a.out_channels == compact.a.weight.shape[0] < 8
    save_compact(compact, x, tmp_path, onnx=False, reference=dense)
    spec = json.loads((tmp_path / export.JSON_FILE).read_text())["modules"]["a"]
    assert "args" not in spec and spec["type"].endswith(":_SubConv")  # listed with its shapes only
    with pytest.raises(CheckpointError, match="without constructor arguments"):
        load_compact(tmp_path, model=M())
