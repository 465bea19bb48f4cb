"""Helpers shared by the bench scripts: environment record, timing callback, paired latency, tables.

Not part of the library: the bench scripts put this folder on ``sys.path`` and import it as ``_common``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autotrainonce.measure import latency_ms
from autotrainonce.training import Callback

__all__ = [
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
    """Median forward latency (ms) of two models on the same inputs, measured alternately.

    Alternating ``rounds`` times cancels most of the drift of a shared machine; each measurement takes about
    ``seconds`` (the repeat count is calibrated on the slower model).
    """
    probe = max(latency_ms(first, inputs, repeats=1, warmup=1), latency_ms(second, inputs, repeats=1, warmup=1))
    repeats = int(min(50, max(3, seconds * 1000.0 / max(probe, 1e-3))))
    a: list[float] = []
    b: list[float] = []
    for _ in range(max(1, rounds)):
        a.append(latency_ms(first, inputs, repeats=repeats, warmup=2))
        b.append(latency_ms(second, inputs, repeats=repeats, warmup=2))
    return statistics.median(a), statistics.median(b)


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
