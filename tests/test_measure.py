"""Parameter and MAC counting, latency and number formatting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autotrainonce import models
from autotrainonce.measure import count_macs, count_params, format_count, latency_ms


def test_linear_and_conv_macs():
    assert count_macs(nn.Linear(10, 20), torch.zeros(1, 10)) == 200
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, torch.zeros(1, 3, 16, 16)) == 8 * 3 * 9 * 16 * 16
    assert count_macs(nn.Linear(10, 20), torch.zeros(4, 10)) == 800  # per batch, not per image


def test_resnet56_reference_numbers():
    net = models.create("resnet56", num_classes=10, in_channels=3)
    macs = count_macs(net, torch.zeros(1, 3, 32, 32))
    assert abs(macs - 125.75e6) / 125.75e6 < 0.005
    assert abs(count_params(net) - 0.85e6) / 0.85e6 < 0.01


def test_modes_and_grad_restored():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout())
    net.train()
    net[2].eval()  # a deliberately mixed state must come back exactly
    count_macs(net, torch.zeros(2, 4))
    latency_ms(net, torch.zeros(2, 4), repeats=2, warmup=1)
    assert net.training and net[1].training and not net[2].training
    assert torch.is_grad_enabled()
    assert net[1].num_batches_tracked.item() == 0  # eval mode: BN statistics untouched


def test_tuple_inputs_and_params():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)

        def forward(self, x, y):
            return self.a(x) + self.a(y)

    two = Two()
    assert count_macs(two, (torch.zeros(1, 3), torch.zeros(1, 3))) == 12
    assert count_params(two) == 8


def test_latency_positive():
    assert latency_ms(nn.Linear(8, 8), torch.zeros(1, 8), repeats=3, warmup=0) > 0
    with pytest.raises(ValueError):
        latency_ms(nn.Linear(8, 8), torch.zeros(1, 8), repeats=0)


@pytest.mark.parametrize(
    ("n", "unit", "text"),
    [(125_747_200, None, "125.75M"), (853_018, None, "853.02K"), (999, None, "999"), (2.5e9, None, "2.50G"),
     (853_018, "M", "0.85M"), (0, None, "0")],
)  # fmt: skip
def test_format_count(n, unit, text):
    assert format_count(n, unit) == text


def test_alternating_latency_times_every_model_in_turns(monkeypatch):
    from autotrainonce import measure

    calls = []

    def fake(model, inputs, repeats=50, warmup=10):
        calls.append((model.tag, repeats))
        return {"a": 2.0, "b": 1.0}[model.tag] + 0.1 * sum(1 for c in calls if c[0] == model.tag)

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    a.tag, b.tag = "a", "b"
    monkeypatch.setattr(measure, "latency_ms", fake)
    ms = measure.alternating_latency({"a": a, "b": b}, torch.zeros(1, 2), rounds=3, repeats=7)
    assert [c[0] for c in calls] == ["a", "b"] * 3 and all(r == 7 for _, r in calls)
    assert ms == pytest.approx({"a": 2.2, "b": 1.2})  # the median of each model's three rounds
