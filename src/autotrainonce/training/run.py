"""One whole run from a :class:`~autotrainonce.config.Config`: data, model, (pruner), Trainer, report.

This is what ``ato train`` and ``ato demo`` call; it is also the easiest way to run from Python::

    from autotrainonce.config import load_config
    from autotrainonce.training.run import run_training
    result = run_training(load_config("configs/resnet20_fmnist.yaml"))
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import data, models, pruners
from ..config import Config, merge_overrides, save_config
from ..core.callbacks import Callback
from ..data.sampler import ResumableBatchSampler, SeededDataset
from ..errors import ConfigError
from ..measure import count_macs, count_params, format_count, latency_ms
from . import distributed as dist_utils
from .trainer import Trainer
from .utils import count_steps, seed_everything

__all__ = [
    "RunResult",
    "RunData",
    "build_data",
    "resolve_model_config",
    "format_table",
    "format_comparison",
    "cpu_latency",
    "run_training",
    "per_rank_batch_size",
    "RESULTS_FILE",
]

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


@dataclass
class RunData:
    """The datasets of a run: training part, test split, optional held-out part, and the dataset's facts."""

    train: Dataset
    test: Dataset
    holdout: Dataset | None
    info: data.DatasetInfo


@dataclass
class RunResult:
    """What :func:`run_training` returns."""

    run_dir: Path
    config: Config
    params: int
    macs: int
    metrics: dict[str, float]
    seconds: float
    compact: nn.Module | None = None
    compact_params: int | None = None
    compact_macs: int | None = None
    compact_metrics: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    """What results.json holds: dense (and for pruning runs compact, change, equivalence, latency)."""
    artifacts: dict[str, Path] = field(default_factory=dict)
    """Pruning runs: the compact model's files (see autotrainonce.export.save_compact)."""


def resolve_model_config(cfg: Config, info: data.DatasetInfo) -> Config:
    """``cfg`` with ``model.num_classes`` / ``model.in_channels`` filled from the data where left as None."""
    in_channels = cfg.model.in_channels or cfg.data.in_channels or info.in_channels
    return merge_overrides(
        cfg, {"model": {"num_classes": cfg.model.num_classes or info.num_classes, "in_channels": in_channels}}
    )


def _with_transform(ds: Dataset, transform: Any) -> Dataset:
    """A shallow copy of ``ds`` (sharing its image tensors) with another transform."""
    view = copy.copy(ds)
    view.transform = transform  # type: ignore[attr-defined]
    return view


def build_data(cfg: Config) -> RunData:
    """Datasets for ``cfg`` (model.in_channels already resolved); the holdout is split off only when pruning.

    The held-out images use the evaluation transform: the pruning controller should see clean images.
    """
    d = cfg.data
    info = data.info(d.name, root=d.root, **d.options)
    target_channels = cfg.model.in_channels
    convert = target_channels if target_channels not in (None, info.in_channels) else None
    train_tf = data.build_transform(
        info, True, augment=d.augment, image_size=d.image_size, in_channels=convert
    )
    eval_tf = data.build_transform(info, False, image_size=d.image_size, in_channels=convert)
    base = data.create(d.name, "train", root=d.root, transform=train_tf, **d.options)
    test = data.create(d.name, "test", root=d.root, transform=eval_tf, **d.options)
    train: Dataset = base
    clean: Dataset = _with_transform(base, eval_tf)
    if d.train_subset is not None:
        keep = list(range(min(d.train_subset, len(base))))  # type: ignore[arg-type]
        train, clean = Subset(base, keep), Subset(clean, keep)
    holdout = None
    if cfg.prune.method != "none":
        if d.holdout_fraction <= 0:
            raise ConfigError("pruning needs a held-out set: set data.holdout_fraction above 0 (e.g. 0.05)")
        train_part, hold_part = data.split_holdout(train, d.holdout_fraction, seed=cfg.run.seed)
        train, holdout = train_part, Subset(clean, hold_part.indices)
    return RunData(train=train, test=test, holdout=holdout, info=info)


def per_rank_batch_size(global_batch: int, world: int, key: str = "data.batch_size") -> int:
    """The batch of one process: the global ``global_batch`` split evenly over ``world`` processes."""
    if global_batch % world:
        raise ConfigError(
            f"{key}={global_batch} is the global batch and must split evenly over {world} processes "
            f"(e.g. {max(world, global_batch - global_batch % world)})"
        )
    return global_batch // world


def _loader(
    ds: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    train: bool,
    *,
    seed: int = 0,
    augment: bool = False,
    holdout: bool = False,
) -> DataLoader:
    """A DataLoader over ``ds`` whose order is a pure function of (seed, epoch) and which shards across ranks.

    ``batch_size`` is global; each process loads its ``batch_size / world`` share of every batch. Training
    loaders shuffle, drop a ragged last batch (a few images make BatchNorm statistics noisy) unless it is all
    there is, and with ``augment`` draw each sample's augmentation from (seed, epoch, index). The holdout
    stream advances its epoch by itself at every pass. Evaluation loaders keep the order, never repeat an image
    and may leave the shards uneven.
    """
    world, rank = dist_utils.world_size(), dist_utils.rank()
    n = len(ds)  # type: ignore[arg-type]
    if train:
        local = per_rank_batch_size(batch_size, world)
        drop_last = n >= batch_size
    else:
        local = max(1, -(-batch_size // world))
        drop_last = False
    sampler = ResumableBatchSampler(
        n, local, shuffle=train, seed=seed, drop_last=drop_last, even=train, num_replicas=world, rank=rank,
        auto_epoch=holdout, tag_epoch=augment,
    )  # fmt: skip
    return DataLoader(
        SeededDataset(ds, seed) if augment else ds,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def format_table(title: str, rows: list[tuple[str, str]]) -> str:
    """A small two-column text table."""
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * max(len(title), width + 2 + max(len(v) for _, v in rows))]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{format_count(n)} ({n:,})"


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
    model = models.build(  # a zoo name, or module:attr of the user's own model
        cfg.model.name,
        num_classes=cfg.model.num_classes,
        in_channels=cfg.model.in_channels,
        **cfg.model.kwargs,
    )
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
        assert run_data.holdout is not None
        # Its own seed stream, so the controller's batches do not follow the training order.
        holdout_loader = _loader(run_data.holdout, d.batch_size, d.workers, device, train=True,
                                 seed=seed + 1, holdout=True)  # fmt: skip
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
    metrics = trainer.fit(resume=cfg.run.resume)
    result = RunResult(run_dir, cfg, params, macs, metrics, 0.0)
    dense = {"test_top1": metrics.get("test_top1", float("nan")), "params": params, "macs": macs}
    if "test_top5" in metrics:
        dense["test_top5"] = metrics["test_top5"]
    result.results = {
        "model": cfg.model.name, "data": cfg.data.name, "epochs": cfg.run.epochs, "dense": dense,
    }  # fmt: skip
    if pruner is None:
        if main:
            _report_dense(result, started)
    else:
        _report_pruned(result, trainer, pruner, dense_arch, example, test_loader, started)
    return result


def _report_dense(result: RunResult, started: float) -> None:
    """Log the results table of a dense run and write results.json."""
    dense = result.results["dense"]
    rows = [("test top-1", f"{dense['test_top1']:.2f}%")]
    if "test_top5" in dense:
        rows.append(("test top-5", f"{dense['test_top5']:.2f}%"))
    rows += [("parameters", _count(result.params)), ("MACs", _count(result.macs))]
    result.seconds = time.perf_counter() - started
    rows += [
        ("epochs", str(result.config.run.epochs)), ("time", f"{result.seconds:.0f}s"),
        ("run dir", str(result.run_dir)),
    ]  # fmt: skip
    log.info(format_table("Results", rows))
    _write_results(result)


def _report_pruned(
    result: RunResult, trainer: Trainer, pruner: Callback, dense_model: nn.Module, example: torch.Tensor,
    test_loader: DataLoader, started: float,
) -> None:  # fmt: skip
    """Export, evaluate, time and save the compact model; log the outputs and the before/after table."""
    cfg, run_dir, dense = result.config, result.run_dir, result.results["dense"]
    if getattr(getattr(pruner, "pruner", pruner), "cut", False):
        # surgery="freeze": the trainer ended on the compact model, so there is no trained dense network to
        # evaluate; latency only depends on the architecture, so the dense one is timed from `dense_model`.
        dense["test_top1"] = None
        dense.pop("test_top5", None)
        dense["note"] = "cut during training (surgery=freeze): no dense accuracy at the end"
    else:
        dense_model = trainer.model
    compact = pruner.export().to(trainer.device)  # type: ignore[attr-defined]
    report = dict(getattr(getattr(pruner, "pruner", pruner), "export_report", None) or {})
    result.compact = compact
    result.compact_params = count_params(compact)
    result.compact_macs = count_macs(compact, example.to(trainer.device))
    result.compact_metrics = trainer.evaluate(test_loader, model=compact)  # collective: every rank
    if not trainer.is_main:
        return  # rank 0 alone times, reports and saves
    log.info("measuring CPU latency of the dense and the compact model ...")
    latency = cpu_latency({"dense": dense_model, "compact": compact}, example)
    after = {"test_top1": result.compact_metrics["top1"], "params": result.compact_params,
             "macs": result.compact_macs}  # fmt: skip
    if "top5" in result.compact_metrics:
        after["test_top5"] = result.compact_metrics["top5"]
    for key, value in latency["ms"].items():
        dense[key], after[key] = value["dense"], value["compact"]
    result.results.update(
        compact=after,
        change={
            "test_top1_pt": None if dense["test_top1"] is None else after["test_top1"] - dense["test_top1"],
            **{f"{k}_ratio": _ratio(after[k], dense[k]) for k in ("params", "macs", *latency["ms"])},
        },
        equivalence={
            "max_abs_diff": report.get("max_abs_diff"),  # masked vs compact on the example input
            "max_abs_diff_dense": report.get("max_abs_diff_dense"),  # ungated vs masked
        },
        latency={"device": "cpu", "threads": latency["threads"], "repeats": latency["repeats"]},
    )
    _write_results(result)  # the numbers first: a failing export below must not lose them

    from ..export import save_compact

    zoo = {"name": cfg.model.name, "num_classes": cfg.model.num_classes, "in_channels": cfg.model.in_channels,
           "kwargs": dict(cfg.model.kwargs)}  # fmt: skip
    if models.is_custom_name(cfg.model.name):
        # load_compact rebuilds zoo models only (it must not import code named by a file), so a model of the
        # user's own is recorded by its class and loaded with load_compact(run_dir, model=<fresh instance>).
        zoo = None
    log.info("saving the compact model ...")
    try:
        result.artifacts = save_compact(compact, example, run_dir, zoo=zoo, reference=dense_model)
    finally:
        result.seconds = time.perf_counter() - started
        result.results["artifacts"] = {k: str(v) for k, v in result.artifacts.items()}
        result.results["seconds"] = result.seconds
        _write_results(result)
        rows = [
            ("epochs", str(cfg.run.epochs)), ("time", f"{result.seconds:.0f}s"), ("run dir", str(run_dir)),
            ("results", str(run_dir / RESULTS_FILE)),
        ]  # fmt: skip
        rows += [(f"compact ({key})", str(path)) for key, path in result.artifacts.items()]
        log.info(format_table("Outputs", rows))
        log.info(format_comparison(result.results))  # last, so a run ends with the before/after table


def _ratio(new: float, old: float) -> float | None:
    return new / old if old else None


def _write_results(result: RunResult) -> None:
    """``results.json``: the numbers of the results table (the same that :func:`format_comparison` prints)."""
    path = result.run_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.results, indent=1) + "\n")
    os.replace(tmp, path)


def cpu_latency(
    models_by_name: dict[str, nn.Module],
    example: torch.Tensor,
    batches: tuple[int, ...] = (1, 64),
    repeats: tuple[int, ...] = (20, 5),
    rounds: int = 2,
) -> dict[str, Any]:
    """Median CPU forward time (ms) of each model at each batch size, on CPU copies in eval mode.

    The models are measured in turns, ``rounds`` times, keeping each one's best median: on a shared machine a
    burst of load then slows one measurement of each model, not all of one model's (biasing the ratio).
    """
    cpu = {name: copy.deepcopy(m).cpu().to(memory_format=torch.contiguous_format).eval()
           for name, m in models_by_name.items()}  # fmt: skip
    x1 = example.detach().cpu()
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for batch, reps in zip(batches, repeats):
            key = f"latency_b{batch}_ms"
            x = x1.expand(batch, *x1.shape[1:]).contiguous()
            for name, m in cpu.items():
                ms = latency_ms(m, x, repeats=reps, warmup=max(1, reps // 4))
                best.setdefault(key, {})[name] = min(ms, best.get(key, {}).get(name, float("inf")))
    return {"ms": best, "threads": torch.get_num_threads(),
            "repeats": dict(zip((f"b{b}" for b in batches), repeats))}  # fmt: skip


def format_comparison(results: dict[str, Any]) -> str:
    """The before/after table of a pruning run (dense = the trained network ungated, compact = pruned)."""
    d, c, eq = results["dense"], results["compact"], results.get("equivalence", {})

    def count_change(key: str) -> str:
        r = _ratio(c[key], d[key])
        return "n/a" if r is None else f"x{r:.2f} ({-100 * (1 - r):+.1f}%)"

    def speed_change(key: str) -> str:
        if not (d[key] > 0 and c[key] > 0):
            return "n/a"
        speedup = d[key] / c[key]
        word = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
        return f"x{c[key] / d[key]:.2f} ({word})"

    if d["test_top1"] is None:  # cut during training: no dense network left to evaluate
        rows = [("test top-1", "-", f"{c['test_top1']:.2f}%", "n/a (cut during training)")]
    else:
        rows = [("test top-1", f"{d['test_top1']:.2f}%", f"{c['test_top1']:.2f}%",
                 f"{c['test_top1'] - d['test_top1']:+.2f} pt")]  # fmt: skip
    if "test_top5" in d and "test_top5" in c:
        rows.append(("test top-5", f"{d['test_top5']:.2f}%", f"{c['test_top5']:.2f}%",
                     f"{c['test_top5'] - d['test_top5']:+.2f} pt"))  # fmt: skip
    rows += [
        ("MACs", format_count(d["macs"]), format_count(c["macs"]), count_change("macs")),
        ("parameters", format_count(d["params"]), format_count(c["params"]), count_change("params")),
    ]
    for key in sorted(k for k in d if k.startswith("latency_b")):
        batch = key.removeprefix("latency_b").removesuffix("_ms")
        row = (f"CPU latency, batch {batch}", f"{d[key]:.2f} ms", f"{c[key]:.2f} ms", speed_change(key))
        rows.append(row)
    diff = eq.get("max_abs_diff")
    check = "equivalence check (at the cut)" if d.get("note") else "equivalence check"
    rows.append(("max |masked - compact|", "", "n/a" if diff is None else f"{diff:.2e}", check))
    header = ("", "dense", "compact", "change")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    title = f"Results: before / after pruning ({results.get('model')}, {results.get('data')})"
    out = [title, "-" * max(len(title), sum(widths) + 6), line.format(*header)]
    out += [line.format(*r) for r in rows]
    return "\n".join(out)


def _share(kept: int, total: int) -> str:
    return f"{100.0 * (1 - kept / total):.1f}%" if total else "n/a"


def _default_name(cfg: Config) -> str:
    name = f"{models.short_name(cfg.model.name)}-{cfg.data.name}"  # module:attr -> attr: no ':' in folder names
    return f"{name}-{cfg.prune.method}" if cfg.prune.method != "none" else name
