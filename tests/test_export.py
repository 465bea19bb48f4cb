"""Compact-model artifacts: compact.pt without autotrainonce, safetensors + JSON round trip, ONNX."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import autotrainonce as ato
from autotrainonce import export
from autotrainonce.errors import CheckpointError, ConfigError
from autotrainonce.export import load_compact, save_compact

# Small inputs keep tracing, discovery and the ONNX export fast; the network is the real resnet20.
SHAPE = (1, 1, 16, 16)
ZOO = {"name": "resnet20", "num_classes": 10, "in_channels": 1, "kwargs": {}}


def _random_masks(space, seed: int = 0) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    masks: list[torch.Tensor | None] = []
    for group in space.groups:
        if not group.prunable:
            masks.append(None)
            continue
        keep = torch.rand(group.size, generator=g) < 0.5
        keep[0] = True  # a layer cannot shrink to zero width
        masks.append(keep)
    return masks


@pytest.fixture(scope="module")
def pruned():
    """(dense, compact, example) for resnet20 with about half of every prunable group removed."""
    torch.manual_seed(0)
    dense = ato.models.create("resnet20", num_classes=10, in_channels=1)
    # Non-trivial BN statistics, so a lost buffer would show in the outputs.
    dense.train()
    with torch.no_grad():
        dense(torch.randn(32, *SHAPE[1:]))
    dense.eval()
    example = torch.randn(*SHAPE)
    space = ato.discover(dense, example)
    compact = space.prune(dense, _random_masks(space)).eval()
    return dense, compact, example


def test_compact_pt_loads_without_autotrainonce(pruned, tmp_path):
    dense, compact, _ = pruned
    paths = save_compact(compact, torch.zeros(SHAPE), tmp_path, onnx=False, zoo=ZOO, reference=dense)
    x = torch.randn(4, *SHAPE[1:])
    with torch.no_grad():
        torch.save({"x": x, "y": compact(x)}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        model = torch.load({str(paths["pt"])!r}, weights_only=False)
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            diff = (model(io["x"]) - io["y"]).abs().max().item()
        assert "autotrainonce" not in sys.modules, "loading compact.pt imported autotrainonce"
        assert not model.training
        print(diff)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) <= 1e-5


def test_safetensors_and_json_round_trip(pruned, tmp_path):
    dense, compact, example = pruned
    paths = save_compact(compact, example, tmp_path, onnx=False, zoo=ZOO, reference=dense)
    desc = json.loads(paths["json"].read_text())
    assert desc["zoo"]["name"] == "resnet20" and desc["input_shape"] == list(SHAPE)
    assert desc["model_class"].endswith("CifarResNet") and desc["modules_listed"] == "changed"
    mods = desc["modules"]
    # Only the resized layers are listed: a block's inner conv/bn and its consumer, not the stem or fc.
    assert mods["layer1.0.conv1"]["type"] == "Conv2d" and mods["layer1.0.bn1"]["type"] == "BatchNorm2d"
    assert mods["layer1.0.conv1"]["args"]["out_channels"] == compact.layer1[0].conv1.out_channels
    assert mods["layer1.0.conv2"]["args"]["in_channels"] == compact.layer1[0].conv2.in_channels
    assert "conv1" not in mods and "fc" not in mods and "layer1.0.bn2" not in mods

    from safetensors.torch import load_file

    weights = load_file(str(paths["safetensors"]))
    assert set(weights) == set(compact.state_dict())

    rebuilt = load_compact(tmp_path)
    assert type(rebuilt) is type(compact) and not rebuilt.training
    x = torch.randn(3, *SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compact(x))
    assert load_compact(paths["json"]).layer3[2].conv1.out_channels == compact.layer3[2].conv1.out_channels


class _Custom(nn.Module):
    """A model that is not in the zoo (a user's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(x.mean((2, 3)))


def test_custom_model_needs_a_fresh_instance(tmp_path):
    torch.manual_seed(0)
    dense = _Custom().eval()
    example = torch.randn(1, 3, 8, 8)
    space = ato.discover(dense, example)
    compact = space.prune(dense, _random_masks(space, seed=1)).eval()
    assert compact.conv.out_channels < 8
    save_compact(compact, example, tmp_path, onnx=False, reference=dense)
    desc = json.loads((tmp_path / export.JSON_FILE).read_text())
    assert desc["zoo"] is None and set(desc["modules"]) == {"conv", "bn", "head"}
    with pytest.raises(ConfigError, match="pass model="):
        load_compact(tmp_path)
    rebuilt = load_compact(tmp_path, model=_Custom())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compact(x))
    (tmp_path / export.SAFETENSORS_FILE).unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_compact(tmp_path, model=_Custom())


def test_onnx_failure_is_one_warning(pruned, tmp_path, monkeypatch, caplog):
    if not export.onnx_available():
        pytest.skip("the onnx package is not installed")
    _, compact, example = pruned

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with caplog.at_level(logging.WARNING, logger="autotrainonce.export"):
        paths = save_compact(compact, example, tmp_path, zoo=ZOO)
    assert "onnx" not in paths and not (tmp_path / export.ONNX_FILE).exists()
    assert {"pt", "safetensors", "json"} <= set(paths)
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1 and "exporter exploded" in warnings_[0].getMessage()


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="needs the onnx extra (onnx, onnxruntime, onnxscript)",
)
def test_onnx_matches_torch(pruned, tmp_path):
    import onnxruntime as ort

    _, compact, example = pruned
    paths = save_compact(compact, example, tmp_path, zoo=ZOO)
    assert paths["onnx"].is_file()
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    x = torch.randn(5, *SHAPE[1:])  # another batch size than the example: the batch dimension is dynamic
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = compact(x).numpy()
    assert got.shape == want.shape
    assert abs(got - want).max() <= 1e-4
