"""autotrainonce: train a network from scratch and structurally prune it in the same run.

Public entry points are re-exported here; see README.md and docs/ for the guided tour.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import data, errors, models  # noqa: E402

__all__ = ["__version__", "data", "errors", "models"]
