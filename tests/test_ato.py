"""AutoTrainOnce end to end: targets, controller isolation, state round trip, export, the Trainer callback."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ato_nets import EX, Net, digits, digits_train_loader, interrupt_at_epoch
from autotrainonce.ato import AutoTrainOnce, Flops, Params
from autotrainonce.errors import CheckpointError, ConfigError, TargetError, UserError
from autotrainonce.pruners import make_callback


class WithFixedPath(nn.Module):
    """21% of the MACs sit in a linear layer on the raw input that no mask can touch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head, self.skip = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 10), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).mean((2, 3))) + self.skip(x.flatten(1))


def loaders(batch: int = 64) -> tuple[DataLoader, DataLoader, tuple[torch.Tensor, torch.Tensor]]:
    x, y = digits()
    train = DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=batch, shuffle=True, drop_last=True)
    holdout = DataLoader(TensorDataset(x[1400:1600], y[1400:1600]), batch_size=50)
    return train, holdout, (x[1600:], y[1600:])




# ---------------------------------------------------------------------------------------------- targets, options
def test_bad_targets():
    with pytest.raises(TargetError, match="strictly between 0 and 1"):
        AutoTrainOnce(Net(), EX, Flops(1.0), total_steps=10)
    with pytest.raises(TargetError, match=r"at most 78\.6% of the network's MACs.*cannot be pruned"):
        AutoTrainOnce(WithFixedPath(), EX, Flops(0.9), total_steps=10)
    with pytest.raises(TargetError, match="no prunable channel groups"):
        AutoTrainOnce(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), EX, Flops(0.5), total_steps=10)
    ok = AutoTrainOnce(WithFixedPath(), EX, Flops(0.5), total_steps=10)
    b = ok.budget
    assert (b.total, b.fixed) == (2984, 640)  # conv 9*4*64 + head 40 + skip 640
    assert b.p == pytest.approx((0.5 * 2984 - 640) / (2984 - 640))


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown AutoTrainOnce option.*hyperstep.*valid options:.*hyper_step"):
        AutoTrainOnce(Net(), EX, Flops(0.5), total_steps=10, hyperstep=3)
    with pytest.raises(ConfigError, match="total_steps"):
        AutoTrainOnce(Net(), EX, Flops(0.5))


# ---------------------------------------------------------------------------------------------- controller step
def test_controller_step_trains_only_the_controller():
    torch.manual_seed(0)
    model = Net(8)
    model.b2.eval()  # a submodule the user froze must stay in eval mode
    _, holdout, _ = loaders()
    pruner = AutoTrainOnce(model, EX, Flops(0.5), holdout=holdout, total_steps=100, controller_start=1,
                           hyper_step=1, proximal_start=100, freeze_at=100, variant="paper")  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctrl_before = [p.detach().clone() for p in pruner.controller.parameters()]
    rng = torch.get_rng_state()
    pruner.step(opt)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG (data order, augmentation) is left alone
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():  # weights and BN running stats untouched
        assert torch.equal(v, before[k]), k
    assert model.training and model.c1.training and not model.b2.training
    changed = [not torch.equal(a, b.detach()) for a, b in zip(ctrl_before, pruner.controller.parameters())]
    assert any(changed)
    m = pruner.metrics()
    assert all(k in m for k in ("ato/task_loss", "ato/resource_loss", "ato/kept_fraction", "ato/flops_removed"))
    assert pruner.current_masks() is not None and len(pruner.current_masks()) == len(pruner.space.groups)


def test_controller_without_holdout_uses_the_step_batch():
    model = Net(8)
    pruner = AutoTrainOnce(model, EX, Flops(0.5), total_steps=100, controller_start=1, hyper_step=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="holdout"):
        pruner.step(opt)
    x, y = digits()
    pruner.step(opt, batch=(x[:32], y[:32]))
    assert "task_loss" in pruner.last


@pytest.mark.parametrize(
    ("total", "options", "rows", "capped"),
    [
        (100, {}, 64, True),  # a short run: the cost cap binds, and the updates use 64 rows
        (100_000, {}, 100, False),  # a long run: the whole batch
        (100, {"variant": "paper"}, 100, False),  # the paper variant keeps the whole batch
        (100, {"controller_batch": 16}, 16, True),
        (100_000, {"controller_batch": 500}, 100, False),
    ],
)
def test_controller_update_rows(total: int, options: dict, rows: int, capped: bool) -> None:
    # a controller update with a whole 128-row batch cost ~0.8 of a training step on CPU, with 64 rows ~0.3: in
    # short runs (where the cost cap raises hyper_step) the decide variant uses the batch's first 64 rows
    model = Net(8)
    pruner = AutoTrainOnce(model, EX, Flops(0.5), total_steps=total, controller_start=1, **options)
    assert pruner.schedule.cost_capped is capped
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    x, y = digits()
    pruner.step(torch.optim.SGD(model.parameters(), lr=0.1), batch=(x[:100], y[:100]))
    assert seen == [rows]


def test_first_rows_cuts_every_tensor_of_a_nested_batch() -> None:
    from collections import namedtuple

    from autotrainonce.ato._utils import first_rows

    Pair = namedtuple("Pair", "a b")
    batch = {"ids": torch.arange(12).reshape(6, 2), "parts": [Pair(torch.ones(6), "text")], "scale": torch.tensor(2.0)}
    out = first_rows(batch, 4)
    assert torch.equal(out["ids"], torch.arange(8).reshape(4, 2)) and out["parts"][0].a.shape == (4,)
    assert isinstance(out["parts"][0], Pair) and out["parts"][0].b == "text" and out["scale"].dim() == 0


def test_controller_batch_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="controller_batch must be >= 1"):
        AutoTrainOnce(Net(8), EX, Flops(0.5), total_steps=100, controller_batch=0)


# ---------------------------------------------------------------------------------------------- state round trip
# surgery="end" (the paper's mode) throughout this file; surgery="freeze", the default, is tested in
# test_surgery_freeze.py.
SHORT = dict(controller_start=3, hyper_step=2, proximal_start=6, lambda_switch=24, freeze_at=30,
             mask_interval=5, controller_lr=1e-2, surgery="end")  # fmt: skip


def _build(target=None):
    torch.manual_seed(1)
    model = Net(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _, holdout, _ = loaders()  # unshuffled, 4 batches: the resume has to continue mid-loader
    pruner = AutoTrainOnce(model, EX, target or Params(0.4), holdout=holdout, total_steps=40, **SHORT)
    return model, opt, pruner


def _train(model, opt, pruner, batches):
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        pruner.step(opt)


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_continues_identically():
    x, y = digits()
    batches = [(x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16]) for i in range(40)]
    ma, oa, pa = _build()
    _train(ma, oa, pa, batches)

    mb, ob, pb = _build()
    _train(mb, ob, pb, batches[:20])
    saved = _roundtrip({"model": mb.state_dict(), "opt": ob.state_dict(), "ato": pb.state_dict()})
    mc, oc, pc = _build()
    mc.load_state_dict(saved["model"])
    oc.load_state_dict(saved["opt"])
    pc.load_state_dict(saved["ato"])
    assert pc.global_step == 20 and pc.mask is not None and pc.state_dict()["holdout_drawn"] % 4 != 0
    _train(mc, oc, pc, batches[20:])

    assert pa.frozen and pc.frozen
    assert all(torch.equal(a, c) for a, c in zip(pa.mask, pc.mask))
    for (k, va), vc in zip(ma.state_dict().items(), mc.state_dict().values()):
        assert torch.equal(va, vc), k
    for a, c in zip(pa.controller.parameters(), pc.controller.parameters()):
        assert torch.equal(a, c)
    assert pa.state_dict()["holdout_drawn"] == pc.state_dict()["holdout_drawn"]


def test_state_of_another_model_is_rejected():
    _, _, pruner = _build()
    other = AutoTrainOnce(Net(4), EX, Flops(0.3), total_steps=40)
    with pytest.raises(CheckpointError, match="another model|does not fit"):
        other.load_state_dict(_roundtrip(pruner.state_dict()))


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_end_to_end_digits_reaches_target_and_exports_exactly(opt_name):
    torch.manual_seed(0)
    model = Net(16)
    train, holdout, (xt, yt) = loaders()
    epochs = 10
    total = epochs * len(train)
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    pruner = AutoTrainOnce(model, EX, Flops(0.5), holdout=holdout, total_steps=total, steps_per_epoch=len(train),
                           hyper_step=2, controller_lr=1e-2, lambda_switch=0.45, freeze_at=0.5,
                           surgery="end")  # fmt: skip
    for _ in range(epochs):
        for xb, yb in train:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
            pruner.step(opt)
    assert pruner.frozen
    m = pruner.metrics()
    assert abs(m["ato/flops_removed"] - 0.5) <= 0.03, m
    dropped, zero, worst = pruner.proximal.count_zero()
    assert dropped > 0 and zero == dropped and worst == 0.0  # exact zeros, no hard-zeroing needed at export
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # export must not need to warn (not frozen / not zero)
        compact = pruner.export()
    assert pruner.export_report["max_abs_diff"] <= 1e-4
    assert pruner.controller is None
    n_dense = sum(p.numel() for p in model.parameters())
    n_compact = sum(p.numel() for p in compact.parameters())
    assert n_compact < n_dense
    model.eval()
    compact.eval()
    with torch.no_grad():
        acc_dense = (model(xt).argmax(1) == yt).float().mean().item()
        acc_compact = (compact(xt).argmax(1) == yt).float().mean().item()
    assert acc_compact == acc_dense  # the dropped channels were already exactly zero
    assert acc_compact > 0.8


def test_export_before_freeze_warns_and_hard_zeroes():
    torch.manual_seed(0)
    model = Net(8)
    pruner = AutoTrainOnce(model, EX, Flops(0.3), total_steps=100, offset=0.0, surgery="end")  # ~half dropped
    with pytest.warns(UserWarning, match="before the mask froze"):
        compact = pruner.export()
    assert pruner.frozen and pruner.export_report["max_abs_diff"] <= 1e-4
    # the untrained controller's plain threshold drops far too much; the calibrated freeze lands on target
    assert abs(pruner.metrics()["ato/flops_removed"] - 0.3) <= 0.03
    dropped, zero, _ = pruner.proximal.count_zero()
    assert dropped > 0 and zero == dropped
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())


def test_freeze_without_calibration_is_the_plain_threshold():
    torch.manual_seed(0)
    pruner = AutoTrainOnce(Net(8), EX, Flops(0.3), total_steps=100, offset=0.0, calibrate_freeze=False)
    plain = pruner.controller.sample(deterministic=True)
    pruner.freeze()
    assert all(torch.equal(a, b) for a, b in zip(pruner.mask, plain))
    assert pruner.final_mask() is pruner.mask  # frozen: never changes again


# ---------------------------------------------------------------------------------------------- callback
def test_callback_with_a_trainer_like_object(tmp_path):
    torch.manual_seed(0)
    model = Net(8)
    train, holdout, _ = loaders()
    cfg = SimpleNamespace(method="ato", remove_flops=None, remove_params=0.4, options=dict(SHORT))
    cb = make_callback(cfg, model, EX, holdout, total_steps=40)
    assert cb.state_key == "ato"
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = SimpleNamespace(model=model, optimizer=opt, global_step=0, steps_per_epoch=20, run_dir=tmp_path)
    cb.on_fit_start(trainer)
    x, y = digits()
    for i in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x[i * 20 : (i + 1) * 20]), y[i * 20 : (i + 1) * 20]).backward()
        opt.step()
        trainer.global_step += 1
        cb.on_after_optimizer_step(trainer, opt)
        if i == 29:  # the mask froze at step 30: mask.json is there
            summary = json.loads((tmp_path / "mask.json").read_text())
            assert summary["frozen"] and summary["target"] == {"kind": "params", "remove": 0.4,
                                                               "p": pytest.approx(cb.pruner.budget.p)}  # fmt: skip
            assert [g["name"] for g in summary["groups"]] == ["c1", "c2", "c3"]
            assert all(len(g["keep"]) == g["size"] and sum(g["keep"]) == g["kept"] for g in summary["groups"])
    metrics = cb.on_train_epoch_end(trainer, 2)
    assert metrics["ato/frozen"] == 1.0 and all(isinstance(v, float) for v in metrics.values())
    cb.on_fit_end(trainer)
    assert (tmp_path / "widths.png").stat().st_size > 0
    state = _roundtrip(cb.state_dict())
    assert state["frozen"] and state["global_step"] == 40
    assert cb.export() is not None


def _trainer_run(run_dir, stop_at_epoch=None, resume=None):
    from autotrainonce.training import Trainer

    torch.manual_seed(0)
    model = Net(8)
    train = digits_train_loader()
    _, holdout, _ = loaders()
    cfg = SimpleNamespace(method="ato", remove_flops=0.4, remove_params=None,
                          options=dict(hyper_step=2, controller_lr=1e-2, lambda_switch=0.5, freeze_at=0.6,
                                       surgery="end"))  # fmt: skip
    cb = make_callback(cfg, model, EX, holdout, total_steps=6 * len(train))
    extra = interrupt_at_epoch(stop_at_epoch)
    trainer = Trainer(model, train, None, epochs=6, callbacks=[cb, *extra], run_dir=run_dir, device="cpu",
                      progress=False)  # fmt: skip
    with pytest.raises(KeyboardInterrupt) if stop_at_epoch is not None else contextlib.nullcontext():
        trainer.fit(resume=resume)
    return model, cb


def test_trainer_resume_mid_search_gives_the_same_run(tmp_path):
    model_a, cb_a = _trainer_run(tmp_path / "a")
    _trainer_run(tmp_path / "b", stop_at_epoch=3)  # last.pt after epoch 3 (step 30), inside the search phase
    model_b, cb_b = _trainer_run(tmp_path / "b", resume="auto")
    assert cb_a.pruner.global_step == cb_b.pruner.global_step == 60
    assert all(torch.equal(a, b) for a, b in zip(cb_a.pruner.mask, cb_b.pruner.mask))
    for (k, va), vb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert json.loads((tmp_path / "b" / "mask.json").read_text())["frozen"]


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (dict(remove_flops=None, remove_params=None), "exactly one target"),
        (dict(remove_flops=0.5, remove_params=0.5), "exactly one target"),
        (dict(remove_flops=0.5, remove_params=None, method="l2"), "unknown pruning method 'l2'"),
        (dict(remove_flops=0.5, remove_params=None, options={"nope": 1}), "unknown AutoTrainOnce option"),
    ],
)
def test_make_callback_rejects_bad_configs(cfg, match):
    full = dict(method="ato", options={}) | cfg
    with pytest.raises(UserError, match=match):  # ConfigError, UnknownNameError
        make_callback(SimpleNamespace(**full), Net(8), EX, None, total_steps=10)
