"""The dense Trainer: learning, metrics.csv, checkpoints and resume, divergence, callbacks, schedules."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autotrainonce import data
from autotrainonce.config import Config, LRScheduleConfig, config_from_dict
from autotrainonce.errors import CheckpointError, TrainingDivergedError
from autotrainonce.training import (
    BASE_COLUMNS,
    Callback,
    ClassificationLoss,
    Trainer,
    WarmupCosine,
    WarmupStep,
    atomic_save,
    build_optimizer,
    build_scheduler,
    load_checkpoint,
    read_metrics,
    seed_everything,
)


class TinyCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),  # keep a 2x2 map: 8x8 digits need some spatial layout
        )  # fmt: skip
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def digits_loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    train = data.create("digits", "train", transform="default")
    test = data.create("digits", "test", transform="default")
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
        DataLoader(test, batch_size=256),
    )


def random_loaders(
    n: int = 64, classes: int = 10, batch_size: int = 16, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True), DataLoader(ds, batch_size=32)


def make_trainer(tmp_path, epochs=2, callbacks=(), cfg: dict | None = None, loaders=None, **kw) -> Trainer:
    seed_everything(0)
    train, test = loaders or random_loaders()
    config = config_from_dict(cfg or {"schedule": {"warmup_epochs": 0.5}})
    return Trainer(
        TinyCNN(), train, test, config=config, epochs=epochs, device="cpu", callbacks=callbacks,
        run_dir=tmp_path, progress=False, **kw,
    )  # fmt: skip


class Recorder(Callback):
    """Records every hook call and keeps a step counter as checkpointed state."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.steps = 0

    def on_fit_start(self, trainer):
        self.calls.append(("fit_start",))

    def on_train_epoch_start(self, trainer, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_after_optimizer_step(self, trainer, optimizer):
        self.steps += 1
        assert optimizer is trainer.optimizer
        self.calls.append(("step", trainer.global_step))

    def on_train_epoch_end(self, trainer, epoch):
        self.calls.append(("epoch_end", epoch))
        return {"recorder_steps": float(self.steps)}

    def on_validation_end(self, trainer, metrics):
        self.calls.append(("validation_end", metrics["epoch"]))

    def on_fit_end(self, trainer):
        self.calls.append(("fit_end",))

    def on_exception(self, trainer, exc):
        self.calls.append(("exception", type(exc).__name__))

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def test_trainer_learns_digits(tmp_path):
    train, test = digits_loaders()
    seed_everything(0)
    cfg = config_from_dict({"optim": {"lr": 0.1}, "schedule": {"warmup_epochs": 0.2}})
    trainer = Trainer(
        TinyCNN(), train, test, config=cfg, epochs=3, device="cpu", run_dir=tmp_path, progress=False
    )
    before = trainer.evaluate()["top1"]
    final = trainer.fit()
    assert final["test_top1"] > 80.0 > before
    assert final["test_top5"] >= final["test_top1"]
    assert trainer.global_step == 3 * len(train) == trainer.total_steps
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_metrics_csv_columns_and_rows(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2, callbacks=[Recorder()])
    trainer.fit()
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*BASE_COLUMNS, "recorder_steps"]
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [int(r["step"]) for r in rows] == [4, 8]
    assert all(r["test_top5"] != "" and float(r["images_per_s"]) > 0 for r in rows)


def test_metrics_columns_grow(tmp_path):
    class Late(Callback):
        def on_train_epoch_end(self, trainer, epoch):
            return {"late": 1.0} if epoch == 1 else None

    make_trainer(tmp_path, epochs=2, callbacks=[Late()]).fit()
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["late"] == "" and rows[1]["late"] == "1"


def test_top5_left_out_below_five_classes(tmp_path):
    seed_everything(0)
    train, test = random_loaders(classes=3)
    trainer = Trainer(TinyCNN(num_classes=3), train, test, epochs=1, device="cpu", progress=False)
    assert set(trainer.evaluate()) == {"loss", "top1"}


def test_callback_order_and_counts(tmp_path):
    rec = Recorder()
    trainer = make_trainer(tmp_path, epochs=2, callbacks=[rec])
    trainer.fit()
    steps = trainer.steps_per_epoch
    expected = [("fit_start",)]
    for epoch in range(2):
        expected.append(("epoch_start", epoch))
        expected += [("step", epoch * steps + i + 1) for i in range(steps)]
        expected += [("epoch_end", epoch), ("validation_end", epoch + 1)]
    expected.append(("fit_end",))
    assert rec.calls == expected


def test_on_exception_is_called(tmp_path):
    class Boom(Callback):
        def on_train_epoch_start(self, trainer, epoch):
            raise RuntimeError("boom")

    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(tmp_path, callbacks=[rec, Boom()]).fit()
    assert rec.calls[-1] == ("exception", "RuntimeError")


class StopAt(Callback):
    """Simulates a crash at the start of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _digits_small():
    seed_everything(0)
    train = data.create("digits", "train", transform="default")  # random crops: the RNG matters
    sub = torch.utils.data.Subset(train, range(128))
    test = data.create("digits", "test", transform="default")
    return DataLoader(sub, batch_size=32, shuffle=True, drop_last=True), DataLoader(test, batch_size=256)


def test_resume_matches_uninterrupted_run(tmp_path):
    cfg = {"optim": {"mixup_alpha": 0.2, "label_smoothing": 0.1}, "schedule": {"warmup_epochs": 0.5}}
    rec_a = Recorder()
    full = make_trainer(tmp_path / "a", epochs=4, callbacks=[rec_a], cfg=cfg, loaders=_digits_small())
    full.fit()

    first = make_trainer(
        tmp_path / "b", epochs=4, callbacks=[Recorder(), StopAt(2)], cfg=cfg, loaders=_digits_small()
    )
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2

    torch.manual_seed(123)  # a different init and RNG: the resume must restore both
    rec_b = Recorder()
    second = make_trainer(tmp_path / "b", epochs=4, callbacks=[rec_b], cfg=cfg, loaders=_digits_small())
    second.fit(resume="auto")
    assert rec_b.calls[1] == ("epoch_start", 2)
    assert rec_b.steps == rec_a.steps == second.global_step == full.global_step
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    rows = read_metrics(tmp_path / "b" / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    make_trainer(tmp_path, epochs=1, callbacks=[Recorder()]).fit()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "global_step",
        "rng",
        "config",
        "callbacks",
        "step_in_epoch",
        "world_size",
    ):
        assert key in ckpt
    assert ckpt["step_in_epoch"] == 0 and ckpt["epoch_rng"] is None  # written at the epoch's end
    assert ckpt["callbacks"]["Recorder"] == {"steps": 4}
    assert ckpt["config"]["optim"]["lr"] == 0.1
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_atomic_save_failure_keeps_old_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"format_version": 1, "model": {}}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any pickling error will do
        atomic_save({"bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_a_checkpoint"])
def test_corrupt_checkpoint_is_a_checkpoint_error(tmp_path, damage):
    make_trainer(tmp_path, epochs=1).fit()
    path = tmp_path / "last.pt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a zip file at all" * 10)
    else:
        torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="last.pt"):
        make_trainer(tmp_path, epochs=2).fit(resume="auto")


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    seed_everything(0)
    train, test = random_loaders()
    other = Trainer(TinyCNN(width=8), train, test, epochs=2, device="cpu", run_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        other.fit(resume=tmp_path / "last.pt")


def test_resume_missing_path_and_auto_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        make_trainer(tmp_path, epochs=1).fit(resume=tmp_path / "nope.pt")
    assert make_trainer(tmp_path / "fresh", epochs=1).fit(resume="auto")["epoch"] == 1


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss_fn(logits, targets):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(logits, targets)
        return loss * float("nan") if calls["n"] == 6 else loss  # step 2 of epoch 2

    trainer = make_trainer(tmp_path, epochs=3, loss_fn=loss_fn)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit()
    message = str(info.value)
    assert "epoch 2/3" in message and "step 2" in message and "lower learning rate" in message
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())


def test_step_skipped_by_the_loss_scaler_does_not_count(tmp_path):
    """float16 AMP: a step whose gradients overflow is skipped by the GradScaler, so it must not advance the
    step count, the LR schedule or on_after_optimizer_step (ATO's proximal step). A CPU GradScaler stands in
    for the CUDA one; an inf gradient in the second batch forces the skip."""
    recorder = Recorder()
    trainer = make_trainer(tmp_path, epochs=1, callbacks=[recorder])
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    seen: list[torch.Tensor] = []  # fc.weight at each backward, i.e. after each earlier batch

    def overflow_second_batch(grad: torch.Tensor) -> torch.Tensor:
        seen.append(trainer.model.fc.weight.detach().clone())
        return grad * float("inf") if len(seen) == 2 else grad

    trainer.model.fc.weight.register_hook(overflow_second_batch)
    trainer.fit()
    assert trainer.steps_per_epoch == 4 and trainer.step_in_epoch == 4 and len(seen) == 4
    assert trainer.global_step == 3 and recorder.steps == 3
    assert [c[1] for c in recorder.calls if c[0] == "step"] == [1, 2, 3]
    assert trainer.scheduler.last_epoch == 3  # stepped once per applied update
    assert trainer.scaler.get_scale() == 2.0**9  # halved once, by the skipped step
    assert torch.equal(seen[1], seen[2]) and not torch.equal(seen[2], seen[3])  # batch 2 changed nothing
    assert load_checkpoint(tmp_path / "last.pt")["global_step"] == 3


def test_warmup_cosine_values():
    fn = WarmupCosine(total_steps=100, warmup_steps=10)
    assert fn(0) == pytest.approx(0.1)
    assert fn(9) == pytest.approx(1.0)
    assert fn(10) == pytest.approx(1.0)
    assert fn(55) == pytest.approx(0.5)
    assert fn(99) < 1e-3 and fn(100) == pytest.approx(0.0, abs=1e-12)
    assert all(fn(i) >= fn(i + 1) for i in range(10, 100))


def test_step_schedule_values():
    fn = WarmupStep([20, 30], gamma=0.1, warmup_steps=0)
    assert [fn(19), fn(20), fn(29), fn(30)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = build_scheduler(
        LRScheduleConfig(name="step"), opt, epochs=4, steps_per_epoch=10
    )  # 50%/75% milestones
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert (
        lrs[19] == pytest.approx(0.5) and lrs[20] == pytest.approx(0.05) and lrs[30] == pytest.approx(0.005)
    )


def test_build_scheduler_cosine_per_step():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(LRScheduleConfig(warmup_epochs=1), opt, epochs=5, steps_per_epoch=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[-1] < 0.002 and opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_optimizers_from_config():
    model = TinyCNN()
    sgd = build_optimizer(Config().optim, model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    adamw = build_optimizer(config_from_dict({"optim": {"name": "adamw", "lr": 1e-3}}).optim, model)
    assert isinstance(adamw, torch.optim.AdamW)


def test_label_smoothing_and_mixup_train(tmp_path):
    loss = ClassificationLoss(label_smoothing=0.1, mixup_alpha=0.4)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    mixed_x, (a, b, lam) = loss.mix(x, y)
    assert 0.0 <= lam <= 1.0 and mixed_x.shape == x.shape and torch.equal(a, y)
    cfg = {"optim": {"label_smoothing": 0.1, "mixup_alpha": 0.4, "name": "adamw", "lr": 0.01}}
    final = make_trainer(tmp_path, epochs=1, cfg=cfg).fit()
    assert math.isfinite(final["train_loss"]) and 0.0 <= final["train_acc"] <= 100.0


def test_replace_model_mid_training(tmp_path):
    class Swap(Callback):
        def on_after_optimizer_step(self, trainer, optimizer):
            if trainer.global_step == 3:
                self.lr_before = optimizer.param_groups[0]["lr"]
                trainer.replace_model(copy.deepcopy(trainer.model))
                self.lr_after = trainer.optimizer.param_groups[0]["lr"]

    swap = Swap()
    reference = make_trainer(tmp_path / "ref", epochs=2)
    reference.fit()
    trainer = make_trainer(tmp_path / "swap", epochs=2, callbacks=[swap])
    old_model = trainer.model
    trainer.fit()
    assert trainer.model is not old_model and trainer.model.training
    assert swap.lr_after == pytest.approx(swap.lr_before)
    # The schedule carries on from the same step on the new optimiser.
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(reference.optimizer.param_groups[0]["lr"])
    assert trainer.global_step == reference.global_step


def test_replace_model_with_a_differently_grouped_optimizer(tmp_path):
    """Every group of the new optimiser follows the schedule, and the next steps do not fail."""

    class Regroup(Callback):
        def on_after_optimizer_step(self, trainer, optimizer):
            if trainer.global_step == 3:
                groups = [{"params": [p]} for p in trainer.model.parameters()]
                trainer.replace_model(trainer.model, optimizer=torch.optim.SGD(groups, lr=1.0))

    reference = make_trainer(tmp_path / "ref", epochs=2)
    reference.fit()
    trainer = make_trainer(tmp_path / "regroup", epochs=2, callbacks=[Regroup()])
    trainer.fit()
    expected = reference.optimizer.param_groups[0]["lr"]
    assert len(trainer.optimizer.param_groups) > 1
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == pytest.approx([expected] * len(lrs))
