"""The lowest layer: the contracts every other layer may import (training callbacks, the pruner interface).

Nothing here imports another autotrainonce layer except :mod:`autotrainonce.errors`.
"""

from __future__ import annotations

from .callbacks import Callback, CallbackList
from .pruner import Pruner

__all__ = ["Callback", "CallbackList", "Pruner"]
