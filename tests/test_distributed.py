"""DistributedDataParallel training: 2 CPU processes (gloo) against a single-process run, and the launcher."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from autotrainonce import cli, data
from autotrainonce.config import config_from_dict
from autotrainonce.data import ResumableBatchSampler
from autotrainonce.errors import ConfigError, DatasetError
from autotrainonce.runner import per_rank_batch_size, run_training
from autotrainonce.training import Callback, load_checkpoint, read_metrics
from autotrainonce.training import distributed as dist_utils

WORLD = 2
ATO_OPTIONS = {"controller_start": 2, "hyper_step": 1, "mask_interval": 2, "proximal_start": 3,
               "lambda_switch": 6, "freeze_at": 8, "controller_lr": 0.01}  # fmt: skip


PLAIN = "ddp_test_plainnet"  # registered only while a test needs it (and in the spawned ranks)


class PlainNet(nn.Module):
    """Three conv-ReLU layers and a classifier, without BatchNorm: with a mean loss, 2 ranks x 16 images
    compute the same gradient as 1 process x 32 images (up to float rounding); BN's per-rank statistics
    would not."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


@contextlib.contextmanager
def _plain_registered() -> Iterator[None]:
    from autotrainonce.models import MODELS

    MODELS.register(PLAIN)(PlainNet)
    try:
        yield
    finally:
        MODELS._builders.pop(PLAIN, None)  # keep the zoo as other tests expect it


def _config(
    out_dir: Path, name: str, *, model: str = "resnet20", surgery: str = "end", mixup: float = 0.2
) -> dict:
    return {
        "model": {"name": model},
        "data": {"name": "digits", "train_subset": 320, "batch_size": 32, "eval_batch_size": 128, "workers": 0,
                 "holdout_fraction": 0.1, "augment": True},
        "optim": {"lr": 0.05, "mixup_alpha": mixup},  # mixup draws from each rank's own RNG
        "schedule": {"warmup_epochs": 0.5},
        "run": {"epochs": 2, "max_steps_per_epoch": 6, "device": "cpu", "out_dir": str(out_dir), "name": name,
                "checkpoint_every_steps": 4},
        "prune": {"method": "ato", "remove_flops": 0.4, "options": {**ATO_OPTIONS, "surgery": surgery}},
    }  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _widths(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Per-layer shapes of every conv / linear weight: the structure of a (compact) model."""
    return [
        (n, tuple(m.weight.shape)) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]


class Capture(Callback):
    """Records, after every optimiser step, the pruner's mask and the model's parameters on this rank.

    It is the first callback, so at step t it sees the pruner as it was after step t - 1.
    """

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.ddp_ok: list[bool] = []

    def on_after_optimizer_step(self, trainer, optimizer):
        if trainer.global_step == 5 and trainer.is_main and trainer.checkpoint_path.exists():
            # What a kill inside step 5 would leave behind: the mid-epoch checkpoint of step 4.
            shutil.copyfile(trainer.checkpoint_path, trainer.run_dir / "step4.pt")
        pruner = next(cb for cb in trainer.callbacks if cb.state_key == "ato").pruner
        self.steps.append({
            "mask": [m.clone() for m in pruner.mask] if pruner.mask is not None else None,
            "params": {k: v.detach().clone() for k, v in trainer.model.named_parameters()},
            "cut": pruner.cut,
        })  # fmt: skip
        # Callbacks see the plain module; the wrapper around it is used for the forward pass only.
        self.ddp_ok.append(
            isinstance(trainer.forward_model, nn.parallel.DistributedDataParallel)
            and trainer.forward_model.module is trainer.model
            and not isinstance(trainer.model, nn.parallel.DistributedDataParallel)
        )

    def on_fit_end(self, trainer):
        self.final = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _worker(rank: int, port: int, cfg: dict, out: str) -> None:
    """One DDP rank, as torchrun would start it (environment variables), running run_training."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))  # fmt: skip
    torch.set_num_threads(1)
    from autotrainonce import export

    export.onnx_available = lambda: False  # ONNX export has its own tests; keep this fast
    capture = Capture()
    with _plain_registered():
        result = run_training(config_from_dict(cfg), callbacks=[capture])
    torch.save({"steps": capture.steps, "ddp_ok": capture.ddp_ok, "final": capture.final,
                "widths": _widths(result.compact), "top1": result.compact_metrics["top1"],
                "group_alive": dist_utils.is_active()}, Path(out) / f"rank{rank}.pt")  # fmt: skip


def _run_ddp(cfg: dict, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(_free_port(), cfg, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _single(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    from autotrainonce import export

    saved = export.onnx_available
    export.onnx_available = lambda: False
    try:
        with _plain_registered():
            return _widths(run_training(config_from_dict(cfg)).compact)
    finally:
        export.onnx_available = saved


def _assert_ranks_agree(ranks: list[dict]) -> None:
    a, b = ranks
    assert len(a["steps"]) == len(b["steps"]) == 12
    for step, (sa, sb) in enumerate(zip(a["steps"], b["steps"]), start=1):
        assert (sa["mask"] is None) == (sb["mask"] is None), step
        if sa["mask"] is not None:
            assert all(torch.equal(x, y) for x, y in zip(sa["mask"], sb["mask"])), (
                f"masks differ at step {step}"
            )
        assert sa["params"].keys() == sb["params"].keys()
        for k in sa["params"]:
            assert torch.equal(sa["params"][k], sb["params"][k]), f"{k} differs at step {step}"
    for k in a["final"]:  # buffers included: BN statistics are synced before evaluation and checkpoints
        assert torch.equal(a["final"][k], b["final"][k]), k
    assert all(a["ddp_ok"]) and all(b["ddp_ok"])
    assert a["widths"] == b["widths"] and a["top1"] == b["top1"]
    assert not a["group_alive"] and not b["group_alive"]  # torn down when run_training returned


def test_ddp_ato_ranks_agree_and_match_single_process(tmp_path):
    # No mixup and no BatchNorm here, so that the 2-rank run is the single-process run up to float rounding;
    # the surgery test below has both (ranks then differ in RNG draws and BN statistics) and still agrees.
    cfg = _config(tmp_path, "ddp", model=PLAIN, mixup=0.0)
    ranks = _run_ddp(cfg, tmp_path / "ranks")
    _assert_ranks_agree(ranks)
    masks = [s["mask"] for s in ranks[0]["steps"] if s["mask"] is not None]
    assert len(masks) >= 5 and any(not bool(m.all()) for m in masks[-1])  # the controller did prune

    run_dir = tmp_path / "ddp"
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]  # written once, by rank 0
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["world_size"] == WORLD and len(ckpt["rng_ranks"]) == WORLD
    assert ckpt["global_step"] == 12 and (run_dir / "prev.pt").is_file()
    assert json.loads((run_dir / "results.json").read_text())["compact"]["params"] > 0

    # Same global batch (2 x 16 = 32), same data order and augmentation, same controller batches: the
    # single-process run keeps as many channels in every layer.
    single = _single(_config(tmp_path, "single", model=PLAIN, mixup=0.0))
    assert ranks[0]["widths"] == single
    assert ranks[0]["widths"] != _widths(PlainNet())


def test_ddp_surgery_freeze_cuts_the_same_groups_and_rewraps(tmp_path):
    cfg = _config(tmp_path, "freeze", surgery="freeze")  # resnet20: BatchNorm, and mixup per rank
    ranks = _run_ddp(cfg, tmp_path / "ranks")
    _assert_ranks_agree(ranks)  # params compared step by step, also across the cut (shapes change)
    cuts = [[s["cut"] for s in r["steps"]] for r in ranks]
    # Capture runs before the pruner's callback: it sees the cut of step 8 (freeze_at) at step 9, on both ranks.
    assert cuts[0] == cuts[1] and cuts[0].index(True) == 8
    before, after = ranks[0]["steps"][7]["params"], ranks[0]["steps"][8]["params"]
    assert sum(v.numel() for v in after.values()) < sum(v.numel() for v in before.values())
    final = ranks[0]["final"]
    assert ranks[0]["widths"] == [(k.removesuffix(".weight"), tuple(v.shape)) for k, v in final.items()
                                  if k.endswith("weight") and v.dim() in (2, 4)]  # fmt: skip
    assert ranks[0]["widths"] != _widths(_dense_resnet20())
    rows = read_metrics(tmp_path / "freeze" / "metrics.csv")
    assert [r["ato/cut"] for r in rows] == ["0", "1"]

    # Resumed from the mid-epoch checkpoint of step 4 (before the cut at 8) with 2 processes: each rank gets
    # its own RNG state back, so the run ends bit-identical to the uninterrupted one, cut included.
    ckpt = load_checkpoint(tmp_path / "freeze" / "step4.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["callbacks"]["ato"]["cut"]) == (0, 4, False)
    resumed_cfg = _config(tmp_path, "again", surgery="freeze")
    resumed_cfg["run"]["resume"] = str(tmp_path / "freeze" / "step4.pt")
    resumed = _run_ddp(resumed_cfg, tmp_path / "resumed")
    assert len(resumed[0]["steps"]) == 8  # steps 5..12 only
    for k, v in ranks[0]["final"].items():
        assert torch.equal(v, resumed[0]["final"][k]) and torch.equal(v, resumed[1]["final"][k]), k


def _dense_resnet20() -> nn.Module:
    from autotrainonce import models

    return models.create("resnet20", num_classes=10, in_channels=1)


# ------------------------------------------------------------------------------------------------ in-process
def test_sampler_shards_make_up_the_global_batch():
    n, per_rank = 103, 8
    single = ResumableBatchSampler(n, per_rank * 3, seed=5, drop_last=True)
    shards = [
        ResumableBatchSampler(n, per_rank, seed=5, drop_last=True, num_replicas=3, rank=r) for r in range(3)
    ]
    for s in [single, *shards]:
        s.set_epoch(2)
    assert len(single) == 4 and all(len(s) == 4 for s in shards)
    for g, *parts in zip(single, *shards):
        assert sorted(g) == sorted(i for p in parts for i in p) and all(len(p) == per_rank for p in parts)
    # even=True pads so every rank steps as often; even=False (evaluation) covers every index exactly once
    train = [list(ResumableBatchSampler(10, 2, shuffle=False, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(t) for t in train] == [2, 2, 2]
    evals = [
        ResumableBatchSampler(10, 2, shuffle=False, even=False, num_replicas=3, rank=r) for r in range(3)
    ]
    assert sorted(i for s in evals for b in s for i in b) == list(range(10)) and [len(s) for s in evals] == [
        2,
        2,
        2,
    ]


def test_helpers_are_no_ops_in_one_process():
    t = torch.ones(3)
    assert dist_utils.all_reduce_sum(t) is t and torch.equal(t, torch.ones(3))
    assert dist_utils.broadcast_object({"a": 1}) == {"a": 1} and dist_utils.all_gather_object(7) == [7]
    assert not dist_utils.is_active() and dist_utils.world_size() == 1 and dist_utils.is_main()
    with dist_utils.distributed_session("cpu") as active:
        assert active is False
    assert per_rank_batch_size(128, 4) == 32
    with pytest.raises(ConfigError, match="split evenly over 3 processes"):
        per_rank_batch_size(128, 3)


def test_launcher_passes_the_same_arguments_to_torchrun(monkeypatch, capsys):
    calls = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "call", lambda cmd, env=None: calls.append(cmd) or 0)
    argv = ["-v", "train", "--data", "digits", "--nproc", "2", "--epochs=3", "--nnodes=2", "--node-rank", "1",
            "--rdzv-endpoint", "host:29400", "--batch-size", "64"]  # fmt: skip
    assert cli.main(argv) == 0
    (cmd,) = calls
    launcher = cmd[: cmd.index("-m", 3)]
    assert launcher[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in launcher
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d", "--rdzv-endpoint=host:29400"} <= set(
        launcher
    )
    assert cmd[cmd.index("-m", 3):] == ["-m", "autotrainonce.cli", "-v", "train", "--data", "digits",
                                         "--epochs=3", "--batch-size", "64"]  # fmt: skip
    calls.clear()
    assert cli.main(["train", "--data", "digits", "--nproc", "2", "--batch-size", "63"]) == 2
    assert "split evenly over 2 processes" in capsys.readouterr().err and not calls
    assert cli.main(["train", "--data", "digits", "--nnodes", "2"]) == 2
    assert "--rdzv-endpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end
def _ato_train(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "autotrainonce.cli", "train", *argv], capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip


@pytest.mark.slow
def test_load_resnet20_fashion_mnist_two_processes(tmp_path):
    """A short real run: ResNet-20 on Fashion-MNIST in 2 CPU processes through `ato train --nproc 2`."""
    try:
        data.info("fashion-mnist")
        data.create("fashion-mnist", "test")
    except DatasetError as exc:
        pytest.skip(f"Fashion-MNIST is not installed ({exc})")
    started = time.perf_counter()
    proc = _ato_train(
        "--model", "resnet20", "--data", "fashion-mnist", "--epochs", "1", "--max-steps-per-epoch", "12",
        "--batch-size", "64", "--workers", "0", "--device", "cpu", "--set", "data.augment=true",
        "--set", "data.eval_batch_size=500", "--set", "run.checkpoint_every_steps=5",
        "--out-dir", str(tmp_path), "--name", "fm", "--nproc", "2", timeout=240,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cpu, 2 processes (DDP)" in proc.stdout and "64 global = 2 x 32" in proc.stdout
    assert proc.stdout.count("Before training") == 1  # rank 1 does not log
    rows = read_metrics(tmp_path / "fm" / "metrics.csv")
    assert len(rows) == 1 and float(rows[0]["test_top1"]) > 15.0  # above chance (10%) after 12 steps
    ckpt = load_checkpoint(tmp_path / "fm" / "last.pt")
    assert ckpt["global_step"] == 12 and ckpt["world_size"] == 2
    assert seconds < 120, f"took {seconds:.0f}s"
