"""autotrainonce: train a network from scratch and structurally prune it in the same run.

Public entry points are re-exported here; see README.md and docs/ for the guided tour.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import data, errors, measure, models, pruners  # noqa: E402
from .ato import AutoTrainOnce, Flops, Params  # noqa: E402
from .space import ChannelGroup, PruningSpace, discover  # noqa: E402

__all__ = [
    "AutoTrainOnce",
    "ChannelGroup",
    "Flops",
    "Params",
    "PruningSpace",
    "__version__",
    "data",
    "discover",
    "errors",
    "measure",
    "models",
    "pruners",
]
