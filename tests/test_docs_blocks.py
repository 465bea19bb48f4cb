"""The code examples of docs/data.md, export.md, models.md, training.md and pruning-space.md run as written.

The blocks of one page run in order in one namespace (later blocks build on earlier ones). Names the page says
are the reader's own (``model``, ``example_inputs``, ``compact``, a run folder) are defined first by a small
stand-in; everything else is the page's text, unchanged. (README.md, ato.md, pruners.md, integrations.md and
cli.md have their own tests: tests/test_docs_examples.py, test_integrations_*.py, test_custom_model.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from autotrainonce import discover, models
from autotrainonce.export import save_compact

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.S)


def _prune_setup() -> dict:
    """A ResNet-20 for 1x28x28 images, its pruning space, half-kept masks and the compact copy."""
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    space = discover(model, x[:1])
    masks = [None if not g.prunable else torch.arange(g.size) % 2 == 0 for g in space.groups]
    float_masks = [None if m is None else m.float().requires_grad_() for m in masks]
    return {"model": model, "example_inputs": x[:1], "x": x, "masks": masks, "float_masks": float_masks,
            "compact": space.prune(model, masks), "dense_model": model}  # fmt: skip


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (make test installs it)")
def test_data_page():
    ns: dict = {}
    for block in _blocks("data.md"):
        exec(block, ns)
    assert next(ns["stream"])[0].shape[1:] == (1, 28, 28)


def test_models_and_training_pages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(_blocks("models.md")[0], ns)
    assert models.count_params(ns["net"]) == 853018  # the figure the page prints
    ns = {}
    exec(_blocks("training.md")[0], ns)
    assert ns["final"]["epoch"] == 5 and ns["final"]["test_top1"] > 50  # the page's comment
    assert (tmp_path / "runs" / "digits" / "metrics.csv").is_file()


def test_pruning_space_page():
    ns = _prune_setup()
    model = ns["model"]
    dense_params = sum(p.numel() for p in model.parameters())
    for block in _blocks("pruning-space.md"):
        exec(block, ns)
    assert sum(p.numel() for p in model.parameters()) == dense_params  # "model untouched"
    assert sum(p.numel() for p in ns["compact"].parameters()) < dense_params


def test_export_page(tmp_path, monkeypatch):
    pytest.importorskip("onnx", reason="the export page writes ONNX: needs the onnx extra (make test installs it)")
    monkeypatch.chdir(tmp_path)
    ns = _prune_setup()
    zoo = {"name": "resnet20", "num_classes": 10, "in_channels": 1, "kwargs": {}}
    save_compact(ns["compact"], ns["example_inputs"], "runs/demo", zoo=zoo, reference=ns["model"])  # as ato demo
    ns["MyNet"] = ns["build_dense_model"] = lambda: models.create("resnet20", num_classes=10, in_channels=1)
    ns["MY_LAYERS"] = {}  # "your own model" / "your classes": the page's stand-ins for the reader's code
    for block in _blocks("export.md"):
        exec(block, ns)
    assert (tmp_path / "runs" / "mine" / "compact.json").is_file()
    with torch.no_grad():
        want = ns["compact"].eval()(ns["x"])
        assert torch.allclose(ns["model"].eval()(ns["x"]), want, atol=1e-5)  # the last load_compact
