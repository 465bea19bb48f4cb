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


class DataDependent(nn.Module):
    """Python control flow on tensor values: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
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


def test_untraceable_model_falls_back_with_exact_dense_cost() -> None:
    torch.manual_seed(0)
    model = DataDependent().eval()
    x = torch.randn(2, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="could not trace"):
        space = discover(model, x)
    assert space.flops() == macs(model, x)
    assert space.params() == n_params(model)
    assert all(k in model.state_dict() and model.state_dict()[k].equal(v) for k, v in before.items())
    masks = random_masks(space, 0)
    compact = space.prune(model, masks)
    assert space.flops(masks) == macs(compact, x) and space.params(masks) == n_params(compact)
    with torch.no_grad(), space.masked(model, masks):
        assert torch.allclose(model(x), compact(x), atol=1e-5)


def test_flop_counter_reference_is_forward_only() -> None:
    """The dense reference the space matches: FlopCounterMode forward FLOPs // 2, under no_grad."""
    model, x = build("vgg_flatten")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert discover(model, x).flops() == counter.get_total_flops() // 2
