"""A restricted unpickler for data files: numpy arrays and plain containers only, no code execution."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError

__all__ = ["RestrictedUnpickler", "safe_load"]


def _allowed() -> dict[tuple[str, str], Any]:
    # Take numpy's reconstruction functions from live objects so the answer is right on numpy 1.x and 2.x,
    # whichever module path (numpy.core / numpy._core) the file was written with.
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[mod, "_reconstruct"] = reconstruct
        allowed[mod, "scalar"] = scalar
    allowed["numpy", "ndarray"] = np.ndarray
    allowed["numpy", "dtype"] = np.dtype
    # Protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(str, "latin1").
    allowed["_codecs", "encode"] = _latin1_encode
    for mod in ("builtins", "__builtin__"):  # Python 2 files name the builtins module __builtin__
        for name, obj in (("list", list), ("dict", dict), ("tuple", tuple), ("set", set),
                          ("frozenset", frozenset), ("bytearray", bytearray)):  # fmt: skip
            allowed[mod, name] = obj
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Only the text codecs pickle itself uses; arbitrary codecs (zlib, rot13, ...) are not data.
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591", "ascii", "utf8"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return text.encode(encoding)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` resolves only numpy array pieces and builtin containers."""

    _ALLOWED = _allowed()

    def __init__(self, file: io.BufferedIOBase, *, source: str = "<pickle>", **kw: Any) -> None:
        super().__init__(file, **kw)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise DatasetError(
                f"{self.source} references {module}.{name}, which a data file has no need for; "
                "refusing to load it (the file is corrupt or not what it claims to be)"
            ) from None


def safe_load(path: str | Path, *, hint: str = "replace the file") -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="bytes"``, as CIFAR's files need)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, source=str(path), encoding="bytes").load()
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; {hint}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path} ({exc.strerror or exc}); {hint}") from None
    except Exception as exc:
        # Only allowed classes are ever built, so whatever load() raises comes from damaged bytes: truncation
        # (EOFError), bad opcodes (UnpicklingError), absurd lengths (OverflowError, MemoryError), a bad memo
        # reference (KeyError), ...
        reason = f"{type(exc).__name__}: {exc}"[:200]
        raise DatasetError(f"{path} is corrupt ({reason}); {hint}") from None
