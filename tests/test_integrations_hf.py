"""AutoTrainOnceCallback for Hugging Face transformers.Trainer: end to end on digits, resume, unsupported set-ups."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install transformers)"
)
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install accelerate)")

# torch's note about the Trainer's default pin_memory=True on a machine without an accelerator
pytestmark = pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")

from ato_nets import EX, Net, digits  # noqa: E402
from autotrainonce import Flops  # noqa: E402
from autotrainonce.errors import CheckpointError, ConfigError  # noqa: E402
from autotrainonce.integrations.hf import (  # noqa: E402
    ATO_STATE_FILE,
    AutoTrainOnceCallback,
    default_batch_fn,
    logits_cross_entropy,
)
from autotrainonce.measure import count_macs  # noqa: E402

OPTS = dict(controller_start=0.05, hyper_step=2, proximal_start=0.1, lambda_switch=0.4, freeze_at=0.5,
            mask_interval=5, controller_lr=1e-2)  # fmt: skip


class Digits(Dataset):
    """Digits as dicts, the way Hugging Face datasets hand out examples."""

    def __init__(self, start: int, stop: int) -> None:
        x, y = digits()
        self.x, self.y = x[start:stop], y[start:stop]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class Classifier(nn.Module):
    """A backbone (``self.net``) and a loss, returning ``{"loss", "logits"}`` like a transformers model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net(8)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def _trainer(model: nn.Module, out_dir, callbacks: list, epochs: int = 3, **kw) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        output_dir=str(out_dir), num_train_epochs=epochs, per_device_train_batch_size=32, learning_rate=0.05,
        lr_scheduler_type="constant", use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
        dataloader_num_workers=0, logging_steps=10, **{"save_strategy": "no", **kw},
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return transformers.Trainer(model=model, args=args, train_dataset=Digits(0, 640), callbacks=callbacks,
                                optimizers=(opt, None))  # fmt: skip


def _removed_macs(compact: nn.Module) -> float:
    return 1 - count_macs(compact, EX) / count_macs(Net(8), EX)


class SnapshotAtCut(transformers.TrainerCallback):
    """Copies the backbone's weights right after the cut (runs after the ATO callback)."""

    def __init__(self, ato_cb: AutoTrainOnceCallback) -> None:
        self.ato_cb, self.weights = ato_cb, None

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.weights is None and self.ato_cb.cut_step is not None:
            self.weights = {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def test_prunes_a_backbone_cuts_and_keeps_training_with_accumulation(tmp_path):
    # No holdout: the controller learns from the batches the Trainer feeds the model (read by a forward hook).
    torch.manual_seed(0)
    model = Classifier()
    modules = list(model.net.modules())
    ato_cb = AutoTrainOnceCallback(Flops(remove=0.4), EX, module="net", **OPTS)
    snap = SnapshotAtCut(ato_cb)
    trainer = _trainer(model, tmp_path, [ato_cb, snap], epochs=6, gradient_accumulation_steps=2)
    trainer.train()  # 20 batches of 32 -> 10 optimizer steps per epoch

    p = ato_cb.pruner
    assert p.schedule.total_steps == 60 == trainer.state.global_step == p.global_step
    assert p.cut and ato_cb.cut_step == 30
    assert p.last["task_loss"] > 0  # the controller trained on training batches
    m = p.metrics()
    assert abs(m["ato/flops_removed"] - 0.4) <= 0.03, m
    assert abs(1 - p.space.flops(p.current_masks()) / p.space.flops(None) - 0.4) <= 0.03
    logged = [h for h in trainer.state.log_history if "ato/flops_removed" in h]
    assert logged and logged[-1]["ato/cut"] == 1.0

    # the Trainer's model trains the compact backbone after the cut: the same modules, new weights
    assert model.net is p.model and all(a is b for a, b in zip(model.net.modules(), modules))
    after = model.net.state_dict()
    assert all(after[k].shape == v.shape for k, v in snap.weights.items())
    assert any(not torch.equal(after[k], v) for k, v in snap.weights.items() if v.is_floating_point())
    compact = ato_cb.export()
    assert compact is model.net
    assert abs(_removed_macs(compact) - 0.4) <= 0.03
    assert not model._forward_pre_hooks  # the batch hook is removed at the end


class Plain(Net):
    """Net(8) called as ``model(pixel_values=...)``; the loss comes from the Trainer's compute_loss_func."""

    def __init__(self) -> None:
        super().__init__(8)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return super().forward(pixel_values)


@pytest.mark.parametrize("surgery", ["freeze", "end"])
def test_prunes_the_whole_model_with_a_holdout(tmp_path, surgery):
    torch.manual_seed(0)
    model = Plain()
    holdout = DataLoader(Digits(1400, 1600), batch_size=50)  # dict batches, as the training ones
    ato_cb = AutoTrainOnceCallback(Flops(remove=0.4), EX, holdout=holdout, surgery=surgery, **OPTS)
    trainer = _trainer(model, tmp_path, [ato_cb], label_names=["labels"])
    trainer.compute_loss_func = lambda out, labels, num_items_in_batch=None: F.cross_entropy(out, labels)
    trainer.train()
    p = ato_cb.pruner
    assert p.global_step == trainer.state.global_step == 60 and p.frozen and p.cut == (surgery == "freeze")
    assert p.holdout.drawn > 0
    assert abs(p.metrics()["ato/flops_removed"] - 0.4) <= 0.03
    compact = ato_cb.export()
    assert (compact is model) == (surgery == "freeze")
    assert abs(_removed_macs(compact) - 0.4) <= 0.03


def test_labels_popped_by_the_trainer_need_a_holdout(tmp_path):
    ato_cb = AutoTrainOnceCallback(Flops(remove=0.4), EX, **dict(OPTS, controller_start=1, hyper_step=1))
    trainer = _trainer(Plain(), tmp_path, [ato_cb], epochs=1, label_names=["labels"])
    trainer.compute_loss_func = lambda out, labels, num_items_in_batch=None: F.cross_entropy(out, labels)
    with pytest.raises(ConfigError, match="no labels.*holdout="):
        trainer.train()


def test_resume_from_checkpoints_before_and_after_the_cut(tmp_path):
    torch.manual_seed(0)
    first = AutoTrainOnceCallback(Flops(remove=0.4), EX, module="net", **OPTS)
    trainer = _trainer(Classifier(), tmp_path, [first], save_strategy="steps", save_steps=20)
    trainer.train()  # checkpoints at steps 20 (dense), 40 and 60 (cut at 30)
    assert (tmp_path / "checkpoint-20" / ATO_STATE_FILE).is_file()
    shapes = {k: v.shape for k, v in first.pruner.model.state_dict().items()}

    # after the cut: restore() cuts the fresh model before the Trainer loads the compact weights
    model = Classifier()
    second = AutoTrainOnceCallback(Flops(remove=0.4), EX, module="net", **OPTS)
    second.restore(model, tmp_path / "checkpoint-40")
    assert second.pruner.cut and second.pruner.global_step == 40
    resumed = _trainer(model, tmp_path, [second])
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-40"))
    assert second.pruner.global_step == resumed.state.global_step == 60
    assert {k: v.shape for k, v in model.net.state_dict().items()} == shapes
    assert second.pruner.mask_summary()["groups"] == first.pruner.mask_summary()["groups"]

    # before the cut: the pruner's state is found in the checkpoint folder the Trainer resumes from
    third = AutoTrainOnceCallback(Flops(remove=0.4), EX, module="net", **OPTS)
    resumed = _trainer(Classifier(), tmp_path, [third])
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-20"))
    assert third.pruner.cut and third.pruner.global_step == 60

    with pytest.raises(CheckpointError, match="not written with AutoTrainOnceCallback"):
        AutoTrainOnceCallback(Flops(remove=0.4), EX, module="net").restore(Classifier(), tmp_path)


def test_unsupported_set_ups_are_config_errors(tmp_path):
    cb = AutoTrainOnceCallback(Flops(remove=0.4), EX, module="net")
    with pytest.raises(ConfigError, match="distributed run.*surgery='end'"):
        cb._check_args(SimpleNamespace(deepspeed=None, fsdp=None, world_size=2))
    AutoTrainOnceCallback(Flops(0.4), EX, surgery="end")._check_args(
        SimpleNamespace(deepspeed=None, fsdp="", world_size=2)
    )
    with pytest.raises(ConfigError, match="DeepSpeed or FSDP"):
        cb._check_args(SimpleNamespace(deepspeed=None, fsdp="full_shard", world_size=2))
    with pytest.raises(ConfigError, match="total_steps.*Hugging Face trainer"):
        AutoTrainOnceCallback(Flops(remove=0.4), EX, total_steps=10)
    with pytest.raises(ConfigError, match="no submodule 'backbone'"):
        _trainer(Classifier(), tmp_path, [AutoTrainOnceCallback(Flops(0.4), EX, module="backbone")]).train()
    with pytest.raises(ConfigError, match="before training"):
        cb.export()


def test_batch_and_loss_adapters():
    x, y = torch.zeros(2, 1, 8, 8), torch.tensor([1, 2])
    assert default_batch_fn({"pixel_values": x, "labels": y}) == (x, y)
    assert default_batch_fn((x, y, "extra")) == (x, y)
    with pytest.raises(ConfigError, match="batch_fn"):
        default_batch_fn({"input_ids": x, "attention_mask": x, "labels": y})
    logits = torch.randn(2, 10)
    ref = F.cross_entropy(logits, y)
    for out in (logits, {"logits": logits}, SimpleNamespace(logits=logits), (logits,)):
        assert torch.equal(logits_cross_entropy(out, y), ref)


def test_import_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "autotrainonce.integrations.hf")
    with pytest.raises(ImportError, match="pip install transformers"):
        importlib.import_module("autotrainonce.integrations.hf")


def test_docs_example_runs(tmp_path, monkeypatch):
    """The example of docs/integrations.md runs as written and prunes what it asks for."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "from transformers import" in b]
    monkeypatch.chdir(tmp_path)  # the trainer writes its logs and checkpoints here
    torch.manual_seed(0)
    ns: dict = {"__name__": "docs_example"}
    exec(compile(code, "docs/integrations.md", "exec"), ns)
    p = ns["ato_cb"].pruner
    assert p.cut and ns["compact"] is ns["model"].backbone
    assert abs(p.metrics()["ato/flops_removed"] - 0.5) <= 0.05
