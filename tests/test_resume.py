"""Exact resume: step checkpoints, SIGKILL mid-epoch, fallback to the previous checkpoint, sampler purity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from autotrainonce import data
from autotrainonce.config import config_from_dict
from autotrainonce.data import ResumableBatchSampler, SeededDataset, epoch_order
from autotrainonce.errors import CheckpointError
from autotrainonce.training import Callback, Trainer, load_checkpoint, read_metrics, seed_everything
from autotrainonce.training import checkpoint as ckpt_mod

# A training process as `ato train` runs it (run_training), slowed down per step so that the test can kill it
# mid-epoch. argv: config as JSON, seconds to sleep after each step.
SCRIPT = """
import json, logging, sys, time
import torch
torch.set_num_threads(1)  # the same float summation order in every run
import autotrainonce.export as export
export.onnx_available = lambda: False
from autotrainonce.config import config_from_dict
from autotrainonce.training import Callback
from autotrainonce.runner import run_training

class Slow(Callback):
    def on_after_optimizer_step(self, trainer, optimizer):
        time.sleep(float(sys.argv[2]))

logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
run_training(config_from_dict(json.loads(sys.argv[1])), callbacks=[Slow()])
"""

ATO = {"method": "ato", "remove_flops": 0.4,
       "options": {"controller_start": 0.1, "proximal_start": 0.2, "lambda_switch": 0.7, "freeze_at": 0.8,
                   "hyper_step": 2, "mask_interval": 3}}  # fmt: skip


def _config(out_dir: Path, name: str, prune: bool, resume: str | None = None) -> str:
    cfg = {
        "model": {"name": "resnet20"},
        # digits train with random crops; mixup and label smoothing draw from the global RNG every step
        "data": {"name": "digits", "train_subset": 320, "batch_size": 32, "workers": 0, "augment": True,
                 "holdout_fraction": 0.1},
        "optim": {"lr": 0.05, "mixup_alpha": 0.2, "label_smoothing": 0.1},
        "schedule": {"warmup_epochs": 0.5},
        "run": {"epochs": 3, "device": "cpu", "out_dir": str(out_dir), "name": name, "resume": resume,
                "checkpoint_every_steps": 2},
    }  # fmt: skip
    if prune:
        cfg["prune"] = ATO
    return json.dumps(cfg)


def _start(cfg: str, delay: float) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, cfg, str(delay)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _kill_mid_epoch(proc: subprocess.Popen, path: Path) -> dict:
    """SIGKILL ``proc`` as soon as ``path`` is a mid-epoch checkpoint of its second epoch or later."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before a mid-epoch checkpoint was seen"
        try:
            ckpt = torch.load(path, weights_only=True)
        except Exception:  # not written yet (it is replaced atomically, so never torn)
            ckpt = None
        if ckpt is not None and ckpt["epoch"] >= 1 and ckpt["step_in_epoch"] > 0:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            return ckpt
        time.sleep(0.03)
    proc.kill()
    raise AssertionError("no mid-epoch checkpoint appeared")


@pytest.mark.parametrize("prune", [False, True], ids=["dense", "ato"])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, prune):
    reference = _start(_config(tmp_path, "ref", prune), 0.0)  # runs alongside: the other one mostly sleeps
    victim = _start(_config(tmp_path, "run", prune), 0.15)
    seen = _kill_mid_epoch(victim, tmp_path / "run" / "last.pt")
    _finish(reference)
    assert seen["step_in_epoch"] < seen["steps_per_epoch"]
    out = _finish(_start(_config(tmp_path, "run", prune, resume="auto"), 0.0))
    assert "resumed from" in out and " at step " in out, out[-2000:]

    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert a["global_step"] == b["global_step"] == 3 * a["steps_per_epoch"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows_a, rows_b = (
        read_metrics(tmp_path / "ref" / "metrics.csv"),
        read_metrics(tmp_path / "run" / "metrics.csv"),
    )
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]  # the resumed epoch too
    if prune:
        sa, sb = a["callbacks"]["ato"], b["callbacks"]["ato"]
        assert sa["frozen"] and sb["frozen"] and sa["holdout_drawn"] == sb["holdout_drawn"] > 0
        assert all(torch.equal(x, y) for x, y in zip(sa["mask"], sb["mask"]))
        assert 0 < seen["global_step"] < 0.8 * a["global_step"]  # killed during the controller's search


# ------------------------------------------------------------------------------------------------ in-process
class StopAtStep(Callback):
    """Simulates a crash right after global step ``step`` (after that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_optimizer_step(self, trainer, optimizer):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def _trainer(run_dir: Path, callbacks=(), epochs: int = 3, every: int = 3) -> Trainer:
    from test_training import TinyCNN  # the tiny net of the Trainer tests

    seed_everything(0)
    # A plain DataLoader: RandomSampler shuffles and random crops draw from the global RNG (no skip())
    train = Subset(data.create("digits", "train", transform="default"), range(160))
    loader = DataLoader(train, batch_size=32, shuffle=True, drop_last=True)
    cfg = config_from_dict({"optim": {"mixup_alpha": 0.2}, "schedule": {"warmup_epochs": 0.5},
                            "run": {"checkpoint_every_steps": every}})  # fmt: skip
    return Trainer(TinyCNN(), loader, None, config=cfg, epochs=epochs, device="cpu", callbacks=list(callbacks),
                   run_dir=run_dir, progress=False)  # fmt: skip


def _same_weights(a: Trainer, b: Trainer) -> None:
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_mid_epoch_resume_of_a_plain_dataloader_replays_its_rng(tmp_path):
    full = _trainer(tmp_path / "a")
    full.fit()
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "b", [StopAtStep(7)]).fit()  # 5 steps per epoch; checkpoints at steps 3 and 6
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 1, 6)
    assert ckpt["epoch_rng"] is not None and ckpt["epoch_state"]["samples"] == 32
    torch.manual_seed(123)  # another init and RNG: the resume must restore both
    resumed = _trainer(tmp_path / "b")
    resumed.fit(resume="auto")
    assert resumed.global_step == full.global_step == 15
    _same_weights(full, resumed)
    assert [r["train_loss"] for r in read_metrics(tmp_path / "a" / "metrics.csv")] == [
        r["train_loss"] for r in read_metrics(tmp_path / "b" / "metrics.csv")
    ]


def test_resume_auto_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    full = _trainer(tmp_path / "a", every=0)
    full.fit()
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "b", [StopAtStep(12)], every=0).fit()  # last.pt = epoch 2, prev.pt = epoch 1
    last, prev = tmp_path / "b" / "last.pt", tmp_path / "b" / "prev.pt"
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(prev)["epoch"] == 1
    last.write_bytes(last.read_bytes()[:1000])  # the newest file is damaged
    resumed = _trainer(tmp_path / "b", every=0)
    with caplog.at_level("WARNING", logger="autotrainonce.training.checkpoint"):
        resumed.fit(resume="auto")
    assert any("resuming from the previous checkpoint" in r.getMessage() for r in caplog.records)
    _same_weights(full, resumed)
    # an explicit path never falls back, and nothing readable at all is an error naming last.pt
    prev.write_bytes(b"garbage")
    last.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pt"):
        _trainer(tmp_path / "b", every=0).fit(resume="auto")


def test_step_checkpoints_rotate_and_zero_means_epoch_ends_only(tmp_path):
    # StopAtStep raises inside step 5, before that step's checkpoint: the last ones are steps 4 and 2
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "a", [StopAtStep(5)], every=2).fit()
    assert load_checkpoint(tmp_path / "a" / "last.pt")["global_step"] == 4
    assert load_checkpoint(tmp_path / "a" / "prev.pt")["global_step"] == 2
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "b", [StopAtStep(5)], every=0).fit()
    assert not (tmp_path / "b" / "last.pt").exists()
    # a fresh run in a used folder drops the older run's previous checkpoint before its first write
    stale = load_checkpoint(tmp_path / "a" / "last.pt")
    _trainer(tmp_path / "a", epochs=1, every=0).fit()
    assert (
        not (tmp_path / "a" / "prev.pt").exists()
        and load_checkpoint(tmp_path / "a" / "last.pt")["epoch"] == 1
    )
    assert stale["global_step"] == 4


def test_save_checkpoint_without_hard_links_still_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_mod.save_checkpoint({"format_version": 2, "model": {"w": torch.zeros(1)}}, path)

    def no_links(src, dst):
        raise OSError("links not supported")

    monkeypatch.setattr(os, "link", no_links)
    ckpt_mod.save_checkpoint({"format_version": 2, "model": {"w": torch.ones(1)}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(1))
    assert torch.equal(load_checkpoint(tmp_path / "prev.pt")["model"]["w"], torch.zeros(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]


def test_sampler_order_is_a_pure_function_of_seed_and_epoch():
    a = ResumableBatchSampler(50, 8, seed=3, drop_last=True)
    torch.manual_seed(1)
    a.set_epoch(4)
    first = list(a)
    torch.manual_seed(2)  # the global RNG plays no part
    b = ResumableBatchSampler(50, 8, seed=3, drop_last=True)
    b.set_epoch(4)
    assert list(b) == first and len(first) == len(b) == 6
    b.set_epoch(5)
    assert list(b) != first
    assert sorted(epoch_order(50, 3, 4).tolist()) == list(range(50))
    b.set_epoch(4)
    b.skip(4)
    assert list(b) == first[4:] and list(b) == first  # skip applies to one pass only
    stream = ResumableBatchSampler(10, 5, seed=0, auto_epoch=True, tag_epoch=True)
    passes = [list(stream), list(stream)]
    assert [p[0][0][0] for p in passes] == [0, 1]  # (epoch, index) pairs, epoch advancing by itself


def test_seeded_dataset_augments_by_seed_epoch_and_index():
    base = data.create("digits", "train", transform="train")  # random crops from torch's RNG
    ds = SeededDataset(base, seed=7)
    torch.manual_seed(0)
    x1 = ds[(2, 11)][0]
    state = torch.get_rng_state()
    torch.manual_seed(99)
    x2 = ds[(2, 11)][0]
    assert torch.equal(x1, x2)
    torch.manual_seed(0)
    ds[(2, 11)]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    different = [not torch.equal(x1, ds[(e, 11)][0]) for e in range(3, 13)]
    assert any(different)  # other epochs draw other crops
    assert len(ds) == len(base) and ds.info is base.info
    loader = DataLoader(ds, batch_sampler=ResumableBatchSampler(len(ds), 16, seed=1, tag_epoch=True),
                        num_workers=2)  # fmt: skip
    in_workers = next(iter(loader))[0]
    order = next(iter(ResumableBatchSampler(len(ds), 16, seed=1, tag_epoch=True)))
    in_process = torch.stack([ds[k][0] for k in order])
    assert torch.equal(in_workers, in_process)  # the same images whatever process draws them
