"""Helpers shared by the bench scripts: arguments, base config, main, environment record, timing callback,
paired latency, summaries and tables.

Not part of the library: the bench scripts put this folder on ``sys.path`` and import it as ``_common``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import logging
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from autotrainonce import data, models
from autotrainonce.config import Config, config_from_dict, merge_overrides
from autotrainonce.errors import UserError
from autotrainonce.measure import alternating_latency, count_macs
from autotrainonce.runner import build_data, resolve_model_config
from autotrainonce.training import Callback
from autotrainonce.training.utils import resolve_device

__all__ = [
    "apply_defaults",
    "check_threads",
    "check_models",
    "parse_overrides",
    "base_config",
    "run_main",
    "warm_up_models",
    "probe_images",
    "group_by_cell",
    "add_column_stats",
    "values_of",
    "seeds_text",
    "with_ratio",
    "EpochTimer",
    "environment",
    "paired_latency",
    "mean_spread",
    "fmt_stat",
    "markdown_table",
    "write_csv",
    "write_json",
    "parse_floats",
    "parse_ints",
    "parse_list",
]


# ------------------------------------------------------------------------------------------------ arguments
def apply_defaults(args: argparse.Namespace, defaults: dict[str, Any], quick: dict[str, Any]) -> None:
    """Fill the unset options from ``quick`` (with --quick) or ``defaults``; latency rounds: 1 quick, else 3."""
    base = quick if args.quick else defaults
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.latency_rounds is None:
        args.latency_rounds = 1 if args.quick else 3


def check_threads(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One torch thread for --quick unless set; a usage error for fewer than one."""
    if args.threads is None and args.quick:
        args.threads = 1  # tiny tensors: more threads only spin-wait on each other
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")


def check_models(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """A usage error naming the models that the zoo does not have."""
    unknown = [m for m in names if m not in models.list_models()]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(models.list_models())}")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c.d=x"]`` -> ``{"a.b": 1, "c.d": "x"}`` (values read as YAML); UserError on a bad item."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


# ------------------------------------------------------------------------------------------------ config and main
def base_config(args: argparse.Namespace, quick_overrides: dict[str, Any]) -> Config:
    """The recipe every cell shares: data, optimiser, schedule, epochs (model, seed and pruning set per cell).

    ``quick_overrides`` applies with --quick; the ``--set`` overrides apply last.
    """
    cfg = config_from_dict({
        "data": {"name": args.data, "train_subset": args.train_subset, "batch_size": args.batch_size,
                 "eval_batch_size": 500, "workers": 0, "augment": True},
        "optim": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": args.warmup_epochs},
        "run": {"epochs": args.epochs, "device": args.device, "out_dir": str(args.out), "resume": None},
    })  # fmt: skip
    if args.quick:
        cfg = merge_overrides(cfg, quick_overrides)
    return merge_overrides(cfg, parse_overrides(args.set))


def run_main(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    quick_overrides: dict[str, Any],
    run_all: Callable[[argparse.Namespace, Config], int],
) -> int:
    """The body of a bench script's ``main``: logging, base config, a data check, threads, then ``run_all``.

    Returns 2 (after a one-line message on stderr) when the config or the data set is unusable, else what
    ``run_all(args, base)`` returns; torch's thread count is restored afterwards.
    """
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        base = base_config(args, quick_overrides)
        data.create(base.data.name, "test", root=base.data.root, **base.data.options)  # fail early: data there?
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return run_all(args, base)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ data and models
def warm_up_models(base: Config, model_names: Sequence[str]) -> None:
    """Load the data and run one forward/backward pass and one MACs count of each model on one batch.

    Pays the one-time costs (dataset files, first kernels, torch._dynamo's import) before any timed run.
    """
    cfg = resolve_model_config(base, data.info(base.data.name, root=base.data.root, **base.data.options))
    run_data = build_data(cfg)
    x, y = next(iter(DataLoader(run_data.train, batch_size=base.data.batch_size, shuffle=False)))
    device = resolve_device(base.run.device)
    x, y = x.to(device), y.to(device)
    for name in model_names:
        model = models.create(name, num_classes=cfg.model.num_classes, in_channels=cfg.model.in_channels)
        model.to(device)
        count_macs(model, x[:1])  # the first FlopCounterMode imports torch._dynamo (seconds)
        model.train()
        nn.functional.cross_entropy(model(x), y).backward()


def probe_images(loader: Iterable[Any], n: int = 64) -> torch.Tensor:
    """The first ``n`` images of ``loader`` on the CPU (repeated if it has fewer)."""
    parts, have = [], 0
    for batch in loader:
        parts.append(batch[0].cpu())
        have += parts[-1].shape[0]
        if have >= n:
            break
    x = torch.cat(parts)
    reps = -(-n // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n].contiguous()


# ------------------------------------------------------------------------------------------------ environment
def _cpu_model() -> str:
    """The first 'model name' of /proc/cpuinfo (else platform.processor(), else 'unknown')."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit(repo: Path) -> str | None:
    """``git rev-parse HEAD`` (+ '-dirty' when the tree has changes), or None outside a checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def environment(argv: Sequence[str], script: str, device: str) -> dict[str, Any]:
    """Date, versions, CPU, cores, threads, device and the command line of this invocation."""
    import autotrainonce

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, script, *argv]),
        "autotrainonce": autotrainonce.__version__,
        "git_commit": _git_commit(Path(__file__).resolve().parent),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# ------------------------------------------------------------------------------------------------ timing
class EpochTimer(Callback):
    """Times each training epoch (first step to last step, pruner steps included, evaluation excluded).

    Also keeps the trainer, the metrics rows (whose ``epoch_time_s`` includes evaluation) and the steps per
    epoch, so that the caller can reach the trained model and the other callbacks after ``run_training``.
    """

    def __init__(self) -> None:
        self.trainer: Any = None
        self.train_seconds: list[float] = []
        self.rows: list[dict[str, float]] = []
        self.fit_end: float | None = None  # perf_counter() when the last epoch's checkpoint was written
        self._start = 0.0

    def on_fit_start(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_epoch_start(self, trainer: Any, epoch: int) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, epoch: int) -> dict[str, float] | None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        self.train_seconds.append(time.perf_counter() - self._start)
        return None

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.rows.append(dict(metrics))

    def on_fit_end(self, trainer: Any) -> None:
        self.fit_end = time.perf_counter()

    def callback_of(self, state_key: str) -> Any:
        """The trainer's callback with this ``state_key`` (e.g. ``"ato"``), or None."""
        if self.trainer is None:
            return None
        return next((cb for cb in self.trainer.callbacks if cb.state_key == state_key), None)


def paired_latency(
    first: nn.Module, second: nn.Module, inputs: torch.Tensor, rounds: int = 3, seconds: float = 0.5
) -> tuple[float, float]:
    """Median forward latency (ms) of two models on the same inputs, measured alternately (the library's
    :func:`autotrainonce.measure.alternating_latency`, as the results table of `ato train` uses)."""
    ms = alternating_latency({"first": first, "second": second}, inputs, rounds=rounds, seconds=seconds)
    return ms["first"], ms["second"]


# ------------------------------------------------------------------------------------------------ statistics
def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if v is None or v == "":
            continue
        f = float(v)
        if math.isfinite(f):
            out.append(f)
    return out


def mean_spread(values: Iterable[Any]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of the finite values; spread 0 for one value, NaN for none."""
    vals = _finite(values)
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def fmt_stat(values: Iterable[Any], digits: int = 2, suffix: str = "", signed: bool = False) -> str:
    """``"12.34"`` for one value, ``"12.34 ± 0.56"`` for several, ``"—"`` for none."""
    mean, spread, n = mean_spread(values)
    if n == 0:
        return "—"
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{digits}f}{suffix}"
    return text if n == 1 else f"{text} ± {spread:.{digits}f}"


# ------------------------------------------------------------------------------------------------ summaries
def group_by_cell(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    """Rows grouped by (model, method, target_pct), in the order the groups first appear."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["target_pct"]), []).append(r)
    return groups


def add_column_stats(
    entry: dict[str, Any], rows: Sequence[dict[str, Any]], columns: Sequence[str], skip_bool: bool = False
) -> None:
    """Set ``entry[col]`` to ``{"mean", "spread", "n", "values"}`` for every column numeric in all ``rows``.

    The key columns (model, method, target_pct, seed) are left out; ``skip_bool`` treats booleans as not numeric.
    """
    for col in columns:
        if col in ("model", "method", "target_pct", "seed"):
            continue
        vals = [r.get(col) for r in rows]
        if vals and all(isinstance(v, (int, float)) and not (skip_bool and isinstance(v, bool)) for v in vals):
            mean, spread, n = mean_spread(vals)
            entry[col] = {"mean": mean, "spread": spread, "n": n, "values": vals}


def values_of(entry: dict[str, Any], col: str) -> list[float]:
    """The per-seed values of ``col`` in a summary entry ([] when the column has none)."""
    return list(entry.get(col, {}).get("values", []))


def seeds_text(entry: dict[str, Any]) -> str:
    """``"0,1"``, with ``" (failed: 2)"`` when some seeds failed; ``"—"`` when none completed."""
    text = ",".join(str(s) for s in entry["seeds"]) or "—"
    failed = entry["failed_seeds"]
    return text + (f" (failed: {','.join(map(str, failed))})" if failed else "")


def with_ratio(
    entry: dict[str, Any], value: str, ratio: str, digits: int, unit: str, hide_empty_ratio: bool = False
) -> str:
    """``"12.3 s (1.04×)"``; the dense row shows no ratio, nor (with ``hide_empty_ratio``) a row without one."""
    text = f"{fmt_stat(values_of(entry, value), digits)} {unit}"
    if entry["method"] == "dense" or (hide_empty_ratio and not values_of(entry, ratio)):
        return text
    return f"{text} ({fmt_stat(values_of(entry, ratio), 2)}×)"


# ------------------------------------------------------------------------------------------------ output
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one letter per column (l/r), default l for the first, r after."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, Paths strings, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (no NaN tokens), atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_plain(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts) with these columns, atomically; floats get 6 significant digits, NaN is empty."""

    def cell(v: Any) -> Any:
        if isinstance(v, float):
            return "" if not math.isfinite(v) else f"{v:.6g}"
        return "" if v is None else v

    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: cell(row.get(k)) for k in columns})
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ parsing
def parse_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_floats(text: str) -> list[float]:
    """Comma-separated floats."""
    return [float(t) for t in parse_list(text)]


def parse_ints(text: str) -> list[int]:
    """Comma-separated integers."""
    return [int(t) for t in parse_list(text)]
