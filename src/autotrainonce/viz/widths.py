"""Plots of an ATO mask: kept channels per group."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

__all__ = ["plot_widths"]


def plot_widths(summary: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Bar chart of the channels kept (solid) out of each group's size (faint) from ``mask_summary()``.

    Writes a PNG at ``path`` and returns it.
    """
    # A Figure with its own Agg canvas, not pyplot: no global backend switch, no window, nothing left open.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = summary["groups"]
    names = [g["name"] for g in groups]
    xs = range(len(groups))
    width = max(6.0, 0.28 * len(groups))
    fig = Figure(figsize=(width, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(xs, [g["size"] for g in groups], color="#c8d3e0", label="channels")
    ax.bar(xs, [g["kept"] for g in groups], color="#2a6fbb", label="kept")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    if title is None:
        tgt = summary.get("target", {})
        title = (
            f"ATO mask: {summary.get('flops_removed', 0.0):.1%} MACs, "
            f"{summary.get('params_removed', 0.0):.1%} params removed "
            f"(target {tgt.get('kind', '?')} -{tgt.get('remove', 0.0):.0%})"
        )
    # wrapped to the figure's width (about 9 characters of a 12 pt title per inch) so it is never cut off
    ax.set_title(textwrap.fill(title, width=int(width * 9)))
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
