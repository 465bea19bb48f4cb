"""The report side of a run: results.json, the before/after table, CPU latency of dense vs compact."""

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
from torch.utils.data import DataLoader

from .. import models
from ..config import Config
from ..core.callbacks import Callback
from ..measure import alternating_latency, count_macs, count_params, format_count
from ..training.trainer import Trainer

__all__ = ['RESULTS_FILE', 'RunResult', 'cpu_latency', 'format_comparison', 'format_table']

log = logging.getLogger("autotrainonce.runner.run")


RESULTS_FILE = "results.json"

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

def format_table(title: str, rows: list[tuple[str, str]]) -> str:
    """A small two-column text table."""
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * max(len(title), width + 2 + max(len(v) for _, v in rows))]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)

def _count(n: int) -> str:
    return f"{format_count(n)} ({n:,})"

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
    """Median CPU forward time (ms) of each model at each batch size, on CPU copies in eval mode, the models
    measured in turns (:func:`~autotrainonce.measure.alternating_latency`)."""
    cpu = {name: copy.deepcopy(m).cpu().to(memory_format=torch.contiguous_format).eval()
           for name, m in models_by_name.items()}  # fmt: skip
    x1 = example.detach().cpu()
    best: dict[str, dict[str, float]] = {}
    for batch, reps in zip(batches, repeats):
        x = x1.expand(batch, *x1.shape[1:]).contiguous()
        best[f"latency_b{batch}_ms"] = alternating_latency(cpu, x, rounds=rounds, repeats=reps)
    return {"ms": best, "threads": torch.get_num_threads(),
            "repeats": dict(zip((f"b{b}" for b in batches), repeats))}  # fmt: skip


def format_comparison(results: dict[str, Any], reference: dict[str, Any] | None = None) -> str:
    """The before/after table of a pruning run's ``results`` (results.json).

    Without ``reference`` the left column is the trained network just before the cut (its dropped channels
    exactly zero), so the accuracy change only shows what the cut itself cost; after a cut during training
    there is no such network left and the accuracy cell says so. With ``reference`` (the results of a run of
    the same recipe without pruning) the left column is that dense network: the change is what pruning cost.
    """
    d, c, eq = dict(results["dense"]), results["compact"], results.get("equivalence", {})
    if reference is not None:
        for key in ("test_top1", "test_top5"):
            d[key] = reference["dense"].get(key)
        if d.get("test_top5") is None:
            d.pop("test_top5", None)

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
    times = (reference or {}).get("train_seconds"), results.get("train_seconds")
    if None not in times:
        rows.append(("training time", f"{times[0]:.0f} s", f"{times[1]:.0f} s", f"x{times[1] / times[0]:.2f}"))
    diff = eq.get("max_abs_diff")
    check = "equivalence check (at the cut)" if results["dense"].get("note") else "equivalence check"
    rows.append(("max |masked - compact|", "", "n/a" if diff is None else f"{diff:.2e}", check))
    left = "dense, no pruning" if reference is not None else "before the cut"
    header = ("", left, "compact", "change")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    what = "dense training vs pruned while training" if reference is not None else "before / after the cut"
    title = f"Results: {what} ({results.get('model')}, {results.get('data')}, {results.get('epochs')} epochs)"
    out = [title, "-" * max(len(title), sum(widths) + 6), line.format(*header)]
    out += [line.format(*r) for r in rows]
    return "\n".join(out)

def _share(kept: int, total: int) -> str:
    return f"{100.0 * (1 - kept / total):.1f}%" if total else "n/a"
