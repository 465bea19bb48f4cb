"""Training curves from a run's metrics.csv.

Uses matplotlib's object API with the Agg canvas directly, so it never switches the global pyplot backend of
a notebook or script that imports autotrainonce.
"""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["curves_figure", "plot_curves", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """Rows of a metrics.csv as dicts of strings (empty list when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key, "")
        if value not in ("", None) and row.get("epoch"):
            xs.append(float(row["epoch"]))
            ys.append(float(value))
    return xs, ys


def _first_epoch(rows: list[dict[str, str]], key: str) -> float | None:
    """The first epoch at whose end ``key`` reads 1 (e.g. ``ato/frozen``, ``ato/cut``), or None."""
    for row in rows:
        value = row.get(key, "")
        if value not in ("", None) and float(value) >= 0.5 and row.get("epoch"):
            return float(row["epoch"])
    return None


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Draw loss and accuracy versus epoch from ``metrics_csv`` into ``out_png``; returns the PNG's path."""
    rows = read_metrics(metrics_csv)
    if not rows:
        raise ValueError(f"{metrics_csv} has no rows to plot")
    fig = curves_figure(rows)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def curves_figure(rows: list[dict[str, str]]) -> Figure:
    """The loss/accuracy figure for metrics rows (as read from metrics.csv), ATO freeze/cut marked."""
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, keys, title, ylabel in (
        (ax_loss, (("train_loss", "train"), ("test_loss", "test")), "Loss", "cross-entropy"),
        (ax_acc, (("train_acc", "train"), ("test_top1", "test top-1"), ("test_top5", "test top-5")),
         "Accuracy", "%"),
    ):  # fmt: skip
        for key, label in keys:
            xs, ys = _series(rows, key)
            if xs:
                # Markers keep a one-epoch run (a single point) visible.
                ax.plot(xs, ys, marker="o", markersize=4, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(rows) == 1:  # a lone point would otherwise sit in a meaningless fractional axis
            only = float(rows[0]["epoch"])
            ax.set_xlim(only - 0.5, only + 0.5)
            ax.set_xticks([only])
        ax.set_ylabel(ylabel)
        # ATO events land in the epoch that ends at the marked row: show where the mask froze / the net was cut
        for key, label, style in (("ato/frozen", "mask frozen", ":"), ("ato/cut", "network cut", "--")):
            at = _first_epoch(rows, key)
            if at is not None:
                ax.axvline(at - 0.5, color="grey", linestyle=style, label=f"{label} (epoch {at:g})")
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.tight_layout()
    return fig
