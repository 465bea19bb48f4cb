"""Property test: random small CNN graphs (convs, BN, activations, residual adds, concats, pooling, depthwise
and grouped convs, global pool + linear) with random masks keep compact == masked and exact MACs/params."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from autotrainonce.space import discover
from space_archs import assert_state_equal, fast_cpu, hook_count, macs, n_params, random_masks, state_snapshot

# One step of a spec: (op, inputs, option). Tensors are numbered in creation order; 0 is the stem's output.
Step = tuple[str, tuple[int, ...], int]
Net = tuple[list[Step], list[int], list[int], bool]


class RandomNet(nn.Module):
    """A DAG interpreted from ``spec``; fx unrolls the loop, so every step is a node of the traced graph."""

    def __init__(self, spec: list[Step], widths: list[int], sizes: list[int], flatten: bool, classes: int = 3) -> None:
        super().__init__()
        self.spec = spec
        stem = widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        self.layers = nn.ModuleList()
        for (op, inputs, option), width in zip(spec, widths[1:]):
            cin = widths[inputs[0]]
            if op == "conv":  # option: kernel size 1 or 3, with BN + ReLU
                layer: nn.Module = nn.Sequential(
                    nn.Conv2d(cin, width, option, padding=option // 2, bias=False), nn.BatchNorm2d(width), nn.ReLU()
                )
            elif op == "convbias":  # conv with bias, no BN, SiLU
                layer = nn.Sequential(nn.Conv2d(cin, width, 1), nn.SiLU())
            elif op == "grouped":  # option = groups
                layer = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1, groups=option), nn.BatchNorm2d(width))
            elif op == "dw":  # option = channel multiplier
                layer = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1, groups=cin), nn.BatchNorm2d(width), nn.ReLU6())
            elif op == "up":  # transposed conv doubling the size
                layer = nn.Sequential(nn.ConvTranspose2d(cin, width, 2, stride=2), nn.GroupNorm(1, width))
            elif op == "se":  # squeeze-excite: option = reduced width
                layer = nn.Sequential(
                    nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, option, 1), nn.ReLU(), nn.Conv2d(option, cin, 1),
                    nn.Hardsigmoid(),
                )
            else:  # add, cat, pool, glu: no parameters
                layer = nn.Identity()
            self.layers.append(layer)
        self.flat = flatten  # flatten C x H x W into the classifier instead of global pooling
        self.fc = nn.Linear(widths[-1] * (sizes[-1] ** 2 if flatten else 1), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ts = [self.stem(x)]
        for (op, inputs, option), layer in zip(self.spec, self.layers):
            if op == "add":
                y = ts[inputs[0]] + ts[inputs[1]]
            elif op == "mul":
                y = ts[inputs[0]] * torch.sigmoid(ts[inputs[1]])
            elif op == "cat":
                y = torch.cat([ts[i] for i in inputs], dim=1)
            elif op == "pool":
                y = F.max_pool2d(ts[inputs[0]], 2) if option else F.avg_pool2d(ts[inputs[0]], 2)
            elif op == "glu":
                a, b = ts[inputs[0]].chunk(2, dim=1)
                y = a * torch.sigmoid(b)
            elif op == "se":
                y = ts[inputs[0]] * layer(ts[inputs[0]])
            else:
                y = layer(ts[inputs[0]])
            ts.append(y)
        if self.flat:
            return self.fc(ts[-1].flatten(1))
        return self.fc(F.adaptive_avg_pool2d(ts[-1], 1).flatten(1))


@st.composite
def random_net(draw: st.DrawFn) -> Net:
    """(spec, widths, sizes, flatten): each tensor's channel count and spatial size, so ops only meet
    compatible shapes; ``flatten`` ends in flatten + Linear instead of global pooling."""
    stem = draw(st.integers(2, 6))
    widths, sizes, spec = [stem], [8], []
    for _ in range(draw(st.integers(1, 7))):
        ops = ["conv", "conv", "convbias", "grouped", "dw"]
        last = len(widths) - 1
        cin, size = widths[last], sizes[last]
        same = [i for i in range(last) if widths[i] == widths[last] and sizes[i] == sizes[last]]
        spatial = [i for i in range(last) if sizes[i] == sizes[last]]
        if same:
            ops += ["add", "add", "mul"]
        if spatial:
            ops += ["cat"]
        if sizes[last] >= 2:
            ops += ["pool"]
        if sizes[last] <= 4:
            ops += ["up"]
        if cin % 2 == 0:
            ops += ["glu"]
        ops += ["se"]
        op = draw(st.sampled_from(ops))
        if op in ("conv", "convbias"):
            step: Step = (op, (last,), draw(st.sampled_from([1, 3])))
            width = draw(st.integers(1, 8))
        elif op == "grouped":
            groups = draw(st.sampled_from([g for g in (1, 2, 3) if cin % g == 0]))
            width = groups * draw(st.integers(1, 3))
            step = (op, (last,), groups)
        elif op == "dw":
            mult = draw(st.integers(1, 2))
            step, width = (op, (last,), mult), cin * mult
        elif op in ("add", "mul"):
            step, width = (op, (draw(st.sampled_from(same)), last), 0), cin
        elif op == "cat":
            other = draw(st.sampled_from(spatial))
            step, width = (op, (last, other), 0), cin + widths[other]
        elif op == "up":
            step, width, size = (op, (last,), 0), draw(st.integers(1, 6)), size * 2
        elif op == "glu":
            step, width = (op, (last,), 0), cin // 2
        elif op == "se":
            step, width = (op, (last,), draw(st.integers(1, 4))), cin
        else:
            step, width, size = (op, (last,), draw(st.integers(0, 1))), cin, size // 2
        spec.append(step)
        widths.append(width)
        sizes.append(size)
    return spec, widths, sizes, draw(st.booleans())


@pytest.fixture(autouse=True)
def _fast_cpu() -> Iterator[None]:
    with fast_cpu():
        yield


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=random_net(), seed=st.integers(0, 2**16), keep=st.floats(0.1, 0.9))
def test_random_graphs_compact_equals_masked(net: Net, seed: int, keep: float) -> None:
    check_random_net(net, seed, keep)


def check_random_net(net: Net, seed: int, keep: float) -> None:
    """The property, callable with more examples from a stress script."""
    spec, widths, sizes, flatten = net
    torch.manual_seed(seed)
    model = RandomNet(spec, widths, sizes, flatten).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8)
    before = state_snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every op here is known: no warning allowed
        space = discover(model, x)
    assert space.flops() == macs(model, x) and space.params() == n_params(model)
    masks = random_masks(space, seed, keep)
    compact = space.prune(model, masks, check=False)
    with torch.no_grad():
        with space.masked(model, masks):
            ref = model(x)
        got = compact(x)
    assert float((ref - got).abs().max()) <= 1e-4
    assert space.flops(masks) == macs(compact, x)
    assert space.params(masks) == n_params(compact)
    assert hook_count(model) == 0
    assert_state_equal(model, before)
