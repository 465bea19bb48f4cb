"""Per-epoch metrics: ``metrics.csv`` in the run directory, plus TensorBoard when asked and installed.

Columns may grow during a run (a callback starts reporting a new metric in a later epoch). The file is small
(one row per epoch), so it is rewritten whole, atomically, after every epoch with the union of all columns seen
so far: the header is always complete and earlier rows get empty cells for metrics they did not have.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..viz.curves import read_metrics

__all__ = ["BASE_COLUMNS", "MetricsLogger", "read_metrics", "accuracy_counts"]

log = logging.getLogger(__name__)

#: Columns every run writes, in this order; callbacks' extra metrics follow, in order of first appearance.
BASE_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_top1",
    "test_top5",
    "epoch_time_s",
    "images_per_s",
)


def accuracy_counts(logits: Any, targets: Any, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows of ``logits`` have the target among their top-k, for each k that fits the class count."""
    num_classes = logits.shape[1]
    ks = [k for k in ks if k <= num_classes]
    if not ks:
        return {}
    top = logits.topk(max(ks), dim=1).indices
    hits = top.eq(targets.view(-1, 1))
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class MetricsLogger:
    """Collects one row per epoch and keeps ``metrics.csv`` (and TensorBoard) up to date."""

    def __init__(self, run_dir: str | Path | None, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.csv" if run_dir is not None else None
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = list(BASE_COLUMNS)
        self._tb = self._open_tensorboard(run_dir) if tensorboard else None

    @staticmethod
    def _open_tensorboard(run_dir: str | Path | None) -> Any:
        if run_dir is None:
            log.warning("TensorBoard needs a run directory; not logging to TensorBoard")
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed (pip install tensorboard); continuing without it")
            return None
        return SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def resume(self, upto_epoch: int) -> None:
        """Reload the rows of epochs ``<= upto_epoch`` (1-based) from an existing metrics.csv.

        Rows of later epochs belong to a run that died after logging them but before its checkpoint, so they
        are dropped and will be logged again.
        """
        if self.path is None:
            return
        rows = read_metrics(self.path)
        self.rows = [r for r in rows if r.get("epoch") and int(float(r["epoch"])) <= upto_epoch]
        for row in self.rows:
            self._extend_columns(row)

    def _extend_columns(self, row: dict[str, Any]) -> None:
        self.columns.extend(k for k in row if k not in self.columns)

    def log(self, row: dict[str, Any]) -> None:
        """Append one epoch's row and rewrite the CSV; TensorBoard gets every numeric value."""
        self.rows.append(dict(row))
        self._extend_columns(row)
        if self.path is not None:
            self._write()
        if self._tb is not None:
            step = int(row.get("epoch", len(self.rows)))
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def _write(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".csv.tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns, restval="")
                writer.writeheader()
                for row in self.rows:
                    writer.writerow({k: _cell(v) for k, v in row.items()})
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
