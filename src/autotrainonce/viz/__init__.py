"""Plots drawn without a display: training curves (metrics.csv) and kept widths per group (mask.json).

Uses matplotlib's object API with the Agg canvas directly, so it never switches the global pyplot backend of a
notebook or script that imports autotrainonce. A low layer: it imports nothing else from autotrainonce.
"""

from __future__ import annotations

from .curves import curves_figure, plot_curves, read_metrics
from .widths import plot_widths

__all__ = ["curves_figure", "plot_curves", "plot_widths", "read_metrics"]
