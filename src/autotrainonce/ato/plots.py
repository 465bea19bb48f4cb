"""Plots of an ATO mask: kept channels per group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_widths"]


def plot_widths(summary: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Bar chart of the channels kept (solid) out of each group's size (faint) from ``mask_summary()``.

    Writes a PNG at ``path`` and returns it.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window (headless training machines)
    import matplotlib.pyplot as plt

    groups = summary["groups"]
    names = [g["name"] for g in groups]
    xs = range(len(groups))
    width = max(6.0, 0.28 * len(groups))
    fig, ax = plt.subplots(figsize=(width, 4.0))
    try:
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
        ax.set_title(title)
        ax.legend(loc="upper left")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
