"""The exception tree of autotrainonce.

Every error a user can cause derives from :class:`UserError`; the CLI prints its message on one line and exits
with status 2 instead of showing a traceback. Messages say what is wrong *and* what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AutoTrainOnceError",
    "UserError",
    "ConfigError",
    "DatasetError",
    "UnknownNameError",
    "CheckpointError",
    "TargetError",
    "TraceError",
    "UnsupportedOpError",
    "SurgeryError",
    "TrainingDivergedError",
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


class TargetError(UserError, ValueError):
    """A pruning target is outside (0, 1) or cannot be reached by the prunable part of the network."""


class TraceError(AutoTrainOnceError):
    """The model could not be traced into a graph."""


class UnsupportedOpError(AutoTrainOnceError):
    """An op the pruning space does not understand was asked to be pruned."""


class SurgeryError(AutoTrainOnceError):
    """Physical pruning failed or the compact model does not match the masked one."""


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite."""
