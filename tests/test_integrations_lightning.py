"""AutoTrainOnceCallback for PyTorch Lightning: end to end on digits, resume across the cut, unsupported set-ups."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning", reason="PyTorch Lightning is not installed (pip install lightning)")

from ato_nets import EX, Net, digits  # noqa: E402
from autotrainonce import Flops  # noqa: E402
from autotrainonce.errors import ConfigError  # noqa: E402
from autotrainonce.integrations.lightning import AutoTrainOnceCallback  # noqa: E402
from autotrainonce.measure import count_macs  # noqa: E402

# Lightning's own notes (its use of torch's pytree API, default loggers and loops), not about this callback
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:Starting from v1.9.0, `tensorboardX` has been removed"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
]

# A short schedule (fractions of the run): controller from 5%, mask frozen and network cut at half of training.
OPTS = dict(controller_start=0.05, hyper_step=2, proximal_start=0.1, lambda_switch=0.4, freeze_at=0.5,
            mask_interval=5, controller_lr=1e-2)  # fmt: skip


class Classifier(L.LightningModule):
    """Net(8) as ``self.net``; SGD with momentum."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def _loaders() -> tuple[DataLoader, DataLoader]:
    x, y = digits()
    torch.manual_seed(0)
    train = DataLoader(TensorDataset(x[:640], y[:640]), batch_size=32, shuffle=True)
    holdout = DataLoader(TensorDataset(x[1400:1600], y[1400:1600]), batch_size=50)
    return train, holdout


def _trainer(max_epochs: int, callbacks: list, **kw) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, **kw)  # fmt: skip


class SnapshotAtCut(L.Callback):
    """Copies the pruned module's weights right after the cut (runs after the ATO callback)."""

    def __init__(self, ato_cb: AutoTrainOnceCallback) -> None:
        self.ato_cb, self.weights, self.module = ato_cb, None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.weights is None and self.ato_cb.cut_step is not None:
            self.module = pl_module.net
            self.weights = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}


def _removed_macs(compact: torch.nn.Module) -> float:
    return 1 - count_macs(compact, EX) / count_macs(Net(8), EX)


def test_prunes_a_submodule_cuts_and_keeps_training_with_accumulation():
    torch.manual_seed(0)
    train, holdout = _loaders()
    model = Classifier()
    dense_modules = list(model.net.modules())
    ato_cb = AutoTrainOnceCallback(Flops(remove=0.4), EX, holdout=holdout, module="net", **OPTS)
    snap = SnapshotAtCut(ato_cb)
    # 20 batches per epoch, 10 optimizer steps
    trainer = _trainer(6, [ato_cb, snap], accumulate_grad_batches=2)
    trainer.fit(model, train)

    p = ato_cb.pruner
    assert p.schedule.total_steps == 60 == trainer.global_step
    assert p.global_step == 60  # one pruner step per optimizer step, not per batch
    assert p.cut and ato_cb.cut_step == 30  # freeze_at=0.5
    m = p.metrics()
    assert m["ato/cut"] == 1.0 and abs(m["ato/flops_removed"] - 0.4) <= 0.03, m
    assert trainer.callback_metrics["ato/flops_removed"] == pytest.approx(m["ato/flops_removed"])
    masks = p.current_masks()
    assert abs(1 - p.space.flops(masks) / p.space.flops(None) - 0.4) <= 0.03

    # the LightningModule trains the compact network after the cut: same shapes, new values
    assert model.net is p.model and snap.module is model.net
    assert all(a is b for a, b in zip(model.net.modules(), dense_modules))  # cut in place: the same modules
    after = model.net.state_dict()
    assert all(after[k].shape == v.shape for k, v in snap.weights.items())
    assert any(not torch.equal(after[k], v) for k, v in snap.weights.items() if v.is_floating_point())
    opt = trainer.optimizers[0]
    assert {id(q) for g in opt.param_groups for q in g["params"]} == {id(q) for q in model.parameters()}

    compact = ato_cb.export()
    assert compact is model.net
    assert abs(_removed_macs(compact) - 0.4) <= 0.03
    x, y = digits()
    compact.eval()
    with torch.no_grad():
        accuracy = (compact(x[1600:]).argmax(1) == y[1600:]).float().mean()
    assert accuracy > 0.15  # it learns (60 steps; chance is 0.1)


@pytest.mark.parametrize("surgery", ["freeze", "end"])
def test_prunes_the_whole_module_from_training_batches(surgery):
    # No holdout: the controller learns from the training batches; the LightningModule itself is pruned.
    torch.manual_seed(0)
    train, _ = _loaders()
    model = Classifier()
    ato_cb = AutoTrainOnceCallback(Flops(remove=0.4), EX, surgery=surgery, **OPTS)
    trainer = _trainer(3, [ato_cb])
    trainer.fit(model, train)
    p = ato_cb.pruner
    assert p.global_step == trainer.global_step == 60 and p.frozen
    assert p.cut == (surgery == "freeze")
    assert abs(p.metrics()["ato/flops_removed"] - 0.4) <= 0.03
    compact = ato_cb.export()
    assert (compact is model) == (surgery == "freeze")
    assert abs(_removed_macs(compact.net) - 0.4) <= 0.03


class StopAfter(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def test_resume_from_a_checkpoint_written_after_the_cut(tmp_path):
    torch.manual_seed(0)
    train, holdout = _loaders()
    first = AutoTrainOnceCallback(Flops(remove=0.4), EX, holdout=holdout, module="net", **OPTS)
    trainer = _trainer(4, [first, StopAfter(2)])  # 80 planned steps, cut at 40, stopped after 60
    trainer.fit(Classifier(), train)
    assert first.pruner.cut and trainer.global_step == 60
    ckpt = tmp_path / "stopped.ckpt"
    trainer.save_checkpoint(ckpt)

    model = Classifier()  # dense, as a fresh process would build it
    second = AutoTrainOnceCallback(Flops(remove=0.4), EX, holdout=holdout, module="net", **OPTS)
    resumed = _trainer(4, [second])
    resumed.fit(model, train, ckpt_path=ckpt)
    p = second.pruner
    assert p.cut and p.global_step == resumed.global_step == 80
    assert model.net is p.model
    shapes = {k: v.shape for k, v in first.pruner.model.state_dict().items()}
    assert {k: v.shape for k, v in model.net.state_dict().items()} == shapes
    assert p.mask_summary()["groups"] == first.pruner.mask_summary()["groups"]
    assert abs(_removed_macs(second.export()) - 0.4) <= 0.03
    assert "on_load_checkpoint" not in model.__dict__  # the restore hook is removed at teardown

    # evaluating the checkpoint: in a fresh dense model, and in the model that was cut in this process
    val = DataLoader(TensorDataset(*(t[1600:] for t in digits())), batch_size=100)
    for target in (Classifier(), model):
        cb = second if target is model else AutoTrainOnceCallback(Flops(remove=0.4), EX, module="net", **OPTS)
        [metrics] = _trainer(4, [cb]).validate(target, val, ckpt_path=ckpt, verbose=False)
        assert metrics["val_acc"] > 0.15 and cb.pruner.cut


# ------------------------------------------------------------------------------------------------- errors
class Manual(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        opt.step()


def test_manual_optimization_is_a_config_error():
    train, holdout = _loaders()
    ato_cb = AutoTrainOnceCallback(Flops(remove=0.4), EX, holdout=holdout, module="net")
    with pytest.raises(ConfigError, match="automatic optimization.*pruner.step"):
        _trainer(1, [ato_cb]).fit(Manual(), train)


def test_unsupported_set_ups_are_config_errors():
    cb = AutoTrainOnceCallback(Flops(remove=0.4), EX, module="net")
    two = SimpleNamespace(optimizers=[object(), object()])
    with pytest.raises(ConfigError, match="exactly one optimizer.*returned 2"):
        cb._check_optimization(two, Classifier())
    ddp = SimpleNamespace(strategy=L.pytorch.strategies.DDPStrategy())
    with pytest.raises(ConfigError, match="DDP.*surgery='end'"):
        cb._check_strategy(ddp)
    AutoTrainOnceCallback(Flops(remove=0.4), EX, surgery="end")._check_strategy(ddp)  # supported
    fsdp = SimpleNamespace(strategy=L.pytorch.strategies.FSDPStrategy())
    with pytest.raises(ConfigError, match="FSDPStrategy.*single device"):
        cb._check_strategy(fsdp)
    with pytest.raises(ConfigError, match="total_steps.*from the Lightning trainer"):
        AutoTrainOnceCallback(Flops(remove=0.4), EX, total_steps=100)
    with pytest.raises(ConfigError, match="unknown AutoTrainOnce option"):
        AutoTrainOnceCallback(Flops(remove=0.4), EX, hyperstep=3)
    with pytest.raises(ConfigError, match="Flops"):
        AutoTrainOnceCallback(0.5, EX)
    train, _ = _loaders()
    with pytest.raises(ConfigError, match="no submodule 'backbone'.*net"):
        _trainer(1, [AutoTrainOnceCallback(Flops(remove=0.4), EX, module="backbone")]).fit(
            Classifier(), train
        )
    with pytest.raises(ConfigError, match="before training"):
        cb.export()


def test_dict_batches_need_a_holdout_or_batch_fn():
    class DictModule(Classifier):
        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch["x"]), batch["y"])

    x, y = digits()
    data = DataLoader([{"x": x[i : i + 32], "y": y[i : i + 32]} for i in range(0, 320, 32)], batch_size=None)
    opts = dict(OPTS, controller_start=1, hyper_step=1)
    with pytest.raises(ConfigError, match="batch_fn"):
        _trainer(1, [AutoTrainOnceCallback(Flops(0.4), EX, module="net", **opts)]).fit(DictModule(), data)
    cb = AutoTrainOnceCallback(Flops(0.4), EX, module="net", batch_fn=lambda b: (b["x"], b["y"]), **opts)
    _trainer(1, [cb]).fit(DictModule(), data)
    assert cb.pruner.global_step == 10 and cb.pruner.last["task_loss"] > 0


def test_import_without_lightning_says_what_to_install(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # "import lightning" now raises ImportError
    monkeypatch.delitem(sys.modules, "autotrainonce.integrations.lightning")
    with pytest.raises(ImportError, match="pip install lightning"):
        importlib.import_module("autotrainonce.integrations.lightning")
    monkeypatch.undo()
    importlib.import_module("autotrainonce.integrations.lightning")


def test_docs_example_runs(tmp_path, monkeypatch):
    """The example of docs/integrations.md runs as written and prunes what it asks for."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "import lightning" in b]
    monkeypatch.chdir(tmp_path)  # the trainer writes its logs and checkpoints here
    torch.manual_seed(0)
    ns: dict = {"__name__": "docs_example"}
    exec(compile(code, "docs/integrations.md", "exec"), ns)
    p = ns["ato_cb"].pruner
    assert p.cut and ns["compact"] is ns["model"].net
    assert abs(p.metrics()["ato/flops_removed"] - 0.5) <= 0.05
    [csv] = tmp_path.glob("lightning_logs/*/metrics.csv")  # the Trainer's default logger got the ATO metrics
    assert "ato/flops_removed" in csv.read_text().splitlines()[0]
