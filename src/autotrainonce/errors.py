"""The exception tree of autotrainonce.

Every error a user can cause derives from :class:`UserError`; the CLI prints its message on one line and exits
with status 2 instead of showing a traceback. Messages say what is wrong *and* what to do about it.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "AutoTrainOnceError",
    "UserError",
    "ConfigError",
    "DatasetError",
    "UnknownNameError",
    "CheckpointError",
    "DiskFullError",
    "TargetError",
    "TraceError",
    "ExampleInputError",
    "UnsupportedOpError",
    "SurgeryError",
    "TrainingDivergedError",
    "is_disk_full",
]


class AutoTrainOnceError(Exception):
    """Base class of every error raised on purpose by autotrainonce."""


class UserError(AutoTrainOnceError):
    """Bad input from the user (arguments, files, configs). The CLI exits with status 2 on these."""


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid."""


class DatasetError(UserError, FileNotFoundError):
    """A dataset is missing, truncated or corrupt."""


class UnknownNameError(UserError, KeyError):
    """A name (model, dataset, optimizer, ...) is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(UserError):
    """A checkpoint is corrupt, incomplete or belongs to another model."""


class DiskFullError(UserError, OSError):
    """The disk (or the user's quota) filled up while a file was being written; the old file, if any, is kept.

    Also an ``OSError``, so code that already handles failed writes keeps working.
    """


class TargetError(UserError, ValueError):
    """A pruning target is outside (0, 1) or cannot be reached by the prunable part of the network."""


class TraceError(AutoTrainOnceError):
    """The model could not be traced into a graph."""


class ExampleInputError(UserError, TraceError, ValueError):
    """The example input does not fit the model (wrong shape, dtype or number of inputs).

    A :class:`TraceError` too, because discovery used to report it as one.
    """


class UnsupportedOpError(AutoTrainOnceError):
    """An op the pruning space does not understand was asked to be pruned."""


class SurgeryError(AutoTrainOnceError):
    """Physical pruning failed or the compact model does not match the masked one."""


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = tuple(os.strerror(e) for e in _DISK_FULL)  # "No space left on device", ...


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, says the disk or the quota is full.

    Writers wrap the ``OSError``: torch.save's zip writer raises a RuntimeError from it, and safetensors
    raises its own error carrying only the OS message, so both the cause chain and the message text count.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            return True
        if any(text in str(cause) for text in _DISK_FULL_TEXT):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
