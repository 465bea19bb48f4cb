"""Checkpoint files: atomic writes, weights-only loads, RNG state capture and model compatibility checks.

A checkpoint is a plain dict of tensors and primitives, written with ``torch.save`` and always read back with
``torch.load(weights_only=True)``, so loading one never runs code from the file.

A run directory keeps two: ``last.pt`` (the newest) and ``prev.pt`` (the one before it). :func:`save_checkpoint`
hard-links the old ``last.pt`` to ``prev.pt`` before atomically replacing it, so at every moment at least one
complete checkpoint exists, and :func:`find_resume_checkpoint` falls back to ``prev.pt`` when ``last.pt`` is
unreadable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
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
    "previous_checkpoint_path",
    "save_checkpoint",
    "find_resume_checkpoint",
]

log = logging.getLogger(__name__)

#: 2 added mid-epoch checkpoints (``step_in_epoch``, ``epoch_state``, ``epoch_rng``, ``rng_ranks``); files of
#: format 1 (epoch ends only) still load.
FORMAT_VERSION = 2
_REQUIRED_KEYS = ("format_version", "model")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync it, then ``os.replace`` it onto ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn file; the temp file is
    removed when saving fails. A full disk or quota (ENOSPC, EDQUOT) raises
    :class:`~autotrainonce.errors.DiskFullError` naming ``path``.
    """
    from ..errors import DiskFullError, is_disk_full

    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(
                f"no space left on the device (or quota exceeded) while writing {path}; the previous "
                f"{path.name}, if any, is unchanged. Free some disk space or choose another --out-dir, "
                "then rerun with --resume auto"
            ) from exc
        raise
    # Persist the rename itself; not every platform lets us open a directory, which is harmless.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def previous_checkpoint_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``prev.pt`` next to ``last.pt``, else ``<stem>.prev<suffix>``."""
    path = Path(path)
    if path.name == "last.pt":
        return path.with_name("prev.pt")
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(obj: Any, path: str | Path, keep_previous: bool = True) -> None:
    """Write ``obj`` to ``path`` atomically, keeping the file it replaces as :func:`previous_checkpoint_path`.

    The old file is hard-linked (renamed where links are not supported) to the previous-checkpoint name
    *before* the new one is written, so a crash at any point leaves a complete checkpoint behind and a later
    corruption of the newest file still leaves the one before it. ``keep_previous=False`` (a fresh run in a
    used folder) deletes a previous checkpoint instead, so that it cannot be mistaken for one of this run.
    """
    path = Path(path)
    prev = previous_checkpoint_path(path)
    if not keep_previous:
        prev.unlink(missing_ok=True)
    elif path.is_file():
        tmp = prev.with_name(f".{prev.name}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
            os.replace(tmp, prev)
        except OSError:
            # No hard links here (some network or FUSE file systems): move it instead. Until the new file
            # lands, only prev.pt exists, which find_resume_checkpoint() accepts.
            tmp.unlink(missing_ok=True)
            os.replace(path, prev)
    atomic_save(obj, path)


def find_resume_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint among ``path`` and its previous one, loaded; None if neither exists.

    An unreadable (corrupt, truncated, foreign) newest file is skipped with a warning when the previous one
    loads; when no candidate loads, the error of the newest one is raised.
    """
    path = Path(path)
    errors: list[CheckpointError] = []
    for candidate in (path, previous_checkpoint_path(path)):
        if not candidate.is_file():
            continue
        try:
            ckpt = load_checkpoint(candidate)
        except CheckpointError as exc:
            errors.append(exc)
            continue
        if errors:
            log.warning("%s; resuming from the previous checkpoint %s instead", errors[0], candidate)
        return candidate, ckpt
    if errors:
        raise errors[0]
    return None


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
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours parts of its message
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:  # a readable pickle with code in it (a whole pickled model, say), not a training state
            raise CheckpointError(
                f"{str(path)!r} is not an autotrainonce checkpoint: it pickles {refused.group(1)}, which is "
                "never unpickled from a checkpoint; pass a last.pt/prev.pt written by `ato train`"
            ) from None
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
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
