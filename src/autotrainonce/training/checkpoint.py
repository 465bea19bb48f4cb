"""Checkpoint files: atomic writes, weights-only loads, RNG state capture and model compatibility checks.

A checkpoint is a plain dict of tensors and primitives, written with ``torch.save`` and always read back with
``torch.load(weights_only=True)``, so loading one never runs code from the file.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "atomic_save",
    "load_checkpoint",
    "get_rng_state",
    "set_rng_state",
    "check_state_dict",
    "load_model_state",
]

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "model")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync it, then ``os.replace`` it onto ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn file; the temp file is
    removed when saving fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Persist the rename itself; not every platform lets us open a directory, which is harmless.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by the Trainer; every failure is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (
        Exception
    ) as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... depending on the damage
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({reason[:200]}); "
            "delete it to start fresh or point --resume at another file"
        ) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED_KEYS):
        raise CheckpointError(
            f"{str(path)!r} is not an autotrainonce checkpoint (expected keys {', '.join(_REQUIRED_KEYS)})"
        )
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {ckpt['format_version']}, newer than this version of "
            f"autotrainonce reads ({FORMAT_VERSION}); upgrade autotrainonce"
        )
    return ckpt


def get_rng_state() -> dict[str, Any]:
    """Torch (CPU and every CUDA device), numpy and Python RNG states as weights-only types."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured (CUDA states only if the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped entries, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {source} {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" and {len(items) - 2} more" if len(items) > 2 else ""
            parts.append(f"{len(items)} {label} ({'; '.join(items[:2])}{more})")
    raise CheckpointError(
        f"{source} does not match the model ({', '.join(parts)}); was it saved for another model or dataset?"
    )


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, with a CheckpointError instead of torch's RuntimeError."""
    check_state_dict(model, state, source)
    model.load_state_dict(state)
