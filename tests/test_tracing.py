"""graph.tracing: fx tracing with custom autograd Functions as leaves, shape/FLOPs annotation, and the
fallback for models fx cannot trace."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.fx as fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autotrainonce.errors import TraceError
from autotrainonce.graph import annotate_shapes, node_module_path, trace
from autotrainonce.graph.tracing import FLOPS, SHAPE, as_input_tuple
from autotrainonce.space import discover
from space_archs import SquareFunction, build, fast_cpu, macs, n_params, random_masks


@pytest.fixture(autouse=True)
def _fast_cpu() -> Iterator[None]:
    with fast_cpu():
        yield


def _cbrc(cin: int, mid: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, cout, 1)
    )


class Branchy(nn.Module):
    """A block with data-dependent control flow around a traceable inner block."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _cbrc(8, 6, 8)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if y.abs().sum() > 0:  # data-dependent: fx cannot trace this block (nor anything containing it)
            y = y * self.scale
        return x + y


class DataDependent(nn.Module):
    """Python control flow on tensor values at the top and inside a block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbrc(3, 5, 8)
        self.body = Branchy()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.mean() > -100:  # always true, but fx cannot know
            x = self.body(x)
        return self.fc(x.mean((2, 3)))


def test_trace_keeps_torch_modules_as_leaves_and_annotates() -> None:
    model, x = build("resnext")
    gm = trace(model)
    assert isinstance(gm, fx.GraphModule)
    assert {n.target for n in gm.graph.nodes if n.op == "call_module"} >= {"stem.0", "grouped.0", "fc"}
    training = {name: m.training for name, m in model.named_modules()}
    stats = model.stem[1].running_mean.clone()
    out = annotate_shapes(gm, x)
    assert torch.allclose(out, model(x))
    assert model.stem[1].running_mean.equal(stats)
    assert training == {name: m.training for name, m in model.named_modules()}
    shapes = {n.name: n.meta[SHAPE] for n in gm.graph.nodes}
    assert shapes["grouped_0"] == torch.Size([2, 8, 16, 16])
    assert sum(n.meta[FLOPS] for n in gm.graph.nodes) // 2 == macs(model, x)


def test_tuple_outputs_have_tuple_shapes() -> None:
    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = x.chunk(2, 1)
            return a - b

    gm = trace(Net())
    annotate_shapes(gm, torch.randn(1, 4, 2))
    chunk = next(n for n in gm.graph.nodes if n.target == "chunk")
    assert chunk.meta[SHAPE] == (torch.Size([1, 2, 2]), torch.Size([1, 2, 2]))


def test_custom_autograd_function_is_a_leaf() -> None:
    model, x = build("custom_function")
    original = torch.autograd.Function.__dict__["apply"]
    gm = trace(model)
    assert torch.autograd.Function.__dict__["apply"] is original  # restored
    leaves = [n for n in gm.graph.nodes if getattr(n.target, "ato_autograd_function", None) is SquareFunction]
    assert len(leaves) == 1
    annotate_shapes(gm, x)
    assert torch.allclose(gm(x), model(x))
    # outside tracing the function still runs with its own backward
    t = torch.randn(3, requires_grad=True)
    SquareFunction.apply(t).sum().backward()
    assert torch.allclose(t.grad, 2 * t.detach())


def test_trace_error_names_the_cause_and_restores_apply() -> None:
    original = torch.autograd.Function.__dict__["apply"]
    with pytest.raises(TraceError, match="DataDependent") as info:
        trace(DataDependent())
    assert info.value.__cause__ is not None
    assert torch.autograd.Function.__dict__["apply"] is original


def test_annotate_reports_the_failing_node() -> None:
    gm = trace(nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(TraceError, match="example_inputs"):
        annotate_shapes(gm, torch.randn(2, 5))


def test_node_module_path_and_inputs() -> None:
    model, _ = build("cumsum")
    gm = trace(model)
    paths = {n.name: node_module_path(n) for n in gm.graph.nodes}
    assert paths["cumsum"] == "block" and paths["c3_0"] == "c3.0" and paths["x"] == "<model>"
    assert as_input_tuple(torch.ones(1))[0].shape == (1,)
    assert len(as_input_tuple([torch.ones(1), torch.ones(2)])) == 2
    with pytest.raises(TypeError):
        as_input_tuple("x")


def test_untraceable_model_falls_back_to_traceable_submodules() -> None:
    torch.manual_seed(0)
    model = DataDependent().eval()
    x = torch.randn(2, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="could not trace DataDependent.*2 submodules"):
        space = discover(model, x)
    assert space.flops() == macs(model, x)
    assert space.params() == n_params(model)
    assert all(k in model.state_dict() and model.state_dict()[k].equal(v) for k, v in before.items())
    # channels inside the traceable parts are prunable; those crossing untraceable code are kept
    assert sorted(g.name for g in space.groups if g.prunable) == ["body.inner.0", "stem.0"]
    assert {g.reason for g in space.groups if not g.prunable} == {"output of stem", "output of body.inner"}
    for seed in (0, 1):
        masks = random_masks(space, seed)
        compact = space.prune(model, masks)  # check=True: the probe agrees
        assert space.flops(masks) == macs(compact, x) and space.params(masks) == n_params(compact)
        with torch.no_grad(), space.masked(model, masks):
            assert torch.allclose(model(x), compact(x), atol=1e-5)


def test_untraceable_leaf_model_keeps_everything() -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w.t() if x.sum() > 0 else -x @ self.w.t()

    model, x = Flat(), torch.rand(2, 3)
    with pytest.warns(UserWarning, match="no submodule"):
        space = discover(model, x)
    assert space.groups == [] and space.flops() == macs(model, x) and space.params() == 12
    assert torch.equal(space.prune(model, []).w, model.w)


def test_flop_counter_reference_is_forward_only() -> None:
    """The dense reference the space matches: FlopCounterMode forward FLOPs // 2, under no_grad."""
    model, x = build("vgg_flatten")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert discover(model, x).flops() == counter.get_total_flops() // 2
