"""One whole run from a :class:`~autotrainonce.config.Config`: data, model, (pruner), Trainer, report.

This is what ``ato train`` and ``ato demo`` call; it is also the easiest way to run from Python::

    from autotrainonce.config import load_config
    from autotrainonce.runner import run_training
    result = run_training(load_config("configs/resnet20_fmnist.yaml"))

The data side lives in :mod:`.builders`, the report side (results.json, tables, latency) in :mod:`.report`.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from .. import data, models, pruners
from ..config import Config, save_config
from ..core.callbacks import Callback
from ..errors import ConfigError
from ..measure import count_macs, count_params
from ..training import distributed as dist_utils
from ..training.trainer import Trainer
from ..training.utils import count_steps, seed_everything
from .builders import _loader, build_data, build_model, resolve_model_config
from .report import RunResult, _count, _report_dense, _report_pruned, format_table

__all__ = ["run_training"]

log = logging.getLogger(__name__)


def run_training(cfg: Config, callbacks: list[Callback] | None = None) -> RunResult:
    """Train (and, with ``prune.method: ato``, prune) as ``cfg`` says; logs the before/after tables.

    Started by torchrun (or ``ato train --nproc N``) in several processes, it joins them in one process group
    and trains with DistributedDataParallel; ``data.batch_size`` stays the global batch. Only rank 0 logs and
    writes files; every rank returns its RunResult (the numbers are the same on all).
    """
    with dist_utils.distributed_session(cfg.run.device):
        return _run_training(cfg, callbacks)

def _run_training(cfg: Config, callbacks: list[Callback] | None) -> RunResult:
    started = time.perf_counter()
    make_pruner = pruners.make_callback if cfg.prune.method != "none" else None
    world, rank, main = dist_utils.world_size(), dist_utils.rank(), dist_utils.is_main()
    seed_everything(cfg.run.seed)  # the same on every rank: one model init, one split, one pruner
    device = dist_utils.rank_device(cfg.run.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    cfg = resolve_model_config(cfg, data.info(cfg.data.name, root=cfg.data.root, **cfg.data.options))
    run_data = build_data(cfg)
    model = build_model(cfg)  # a zoo name, or module:attr of the user's own model
    example = run_data.test[0][0].unsqueeze(0)
    params = count_params(model)
    try:
        macs = count_macs(model, example)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shape = "x".join(str(d) for d in example.shape[1:])
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model {cfg.model.name!r} cannot run on the dataset's {shape} inputs ({reason}); use a model built "
            "for this input size, or set data.image_size / model.in_channels to match the model"
        ) from None
    run_dir = Path(cfg.run.out_dir) / (cfg.run.name or _default_name(cfg))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    rows = [
        ("model", f"{cfg.model.name} ({cfg.model.in_channels} -> {cfg.model.num_classes} classes)"),
        ("data", f"{cfg.data.name}: {len(run_data.train)} train / {len(run_data.test)} test images"),  # type: ignore[arg-type]
        ("input", "x".join(str(s) for s in example.shape)),
        ("parameters", _count(params)),
        ("MACs", _count(macs)),
        ("device", str(device) if world == 1 else f"{device.type}, {world} processes (DDP)"),
        ("run dir", str(run_dir)),
    ]
    if world > 1:
        rows.insert(-1, ("batch", f"{cfg.data.batch_size} global = {world} x {cfg.data.batch_size // world}"))
    if main:
        log.info(format_table("Before training", rows))
    d = cfg.data
    seed = cfg.run.seed
    train_loader = _loader(run_data.train, d.batch_size, d.workers, device, train=True, seed=seed,
                           augment=d.augment)  # fmt: skip
    test_loader = _loader(run_data.test, d.eval_batch_size, d.workers, device, train=False)
    all_callbacks = list(callbacks or [])
    pruner = None
    dense_arch = model
    if make_pruner is not None:
        # Its own seed stream, so the controller's batches do not follow the training order.
        holdout_loader = None if run_data.holdout is None else _loader(
            run_data.holdout, d.batch_size, d.workers, device, train=True, seed=seed + 1, holdout=True
        )  # fmt: skip
        total_steps = cfg.run.epochs * count_steps(train_loader, cfg.run.max_steps_per_epoch)
        # The freeze cut prunes `model` in place, so the dense architecture is kept aside (before the pruner
        # touches the model) for the latency comparison and for compact.json's list of changed layers.
        dense_arch = copy.deepcopy(model)
        pruner = make_pruner(cfg.prune, model, example, holdout_loader, total_steps)
        all_callbacks.append(pruner)
    if world > 1:
        # Different dropout / mixup draws per rank; model init, data order, augmentation and the pruner's
        # draws do not depend on the global RNG (per-sample seeds, private generators).
        seed_everything(seed + rank)
    trainer = Trainer(
        model, train_loader, test_loader, config=cfg, callbacks=all_callbacks, run_dir=run_dir,
        model_name=cfg.model.name,
    )  # fmt: skip
    fit_started = time.perf_counter()
    metrics = trainer.fit(resume=cfg.run.resume)
    fit_seconds = time.perf_counter() - fit_started
    result = RunResult(run_dir, cfg, params, macs, metrics, 0.0)
    dense = {"test_top1": metrics.get("test_top1", float("nan")), "params": params, "macs": macs}
    if "test_top5" in metrics:
        dense["test_top5"] = metrics["test_top5"]
    result.results = {
        "model": cfg.model.name, "data": cfg.data.name, "epochs": cfg.run.epochs, "dense": dense,
        "train_seconds": fit_seconds,  # Trainer.fit alone (training and per-epoch evaluation)
    }  # fmt: skip
    if pruner is None:
        if main:
            _report_dense(result, started)
    else:
        _report_pruned(result, trainer, pruner, dense_arch, example, test_loader, started)
    return result

def _default_name(cfg: Config) -> str:
    name = f"{models.short_name(cfg.model.name)}-{cfg.data.name}"  # module:attr -> attr: no ':' in folder names
    return f"{name}-{cfg.prune.method}" if cfg.prune.method != "none" else name
