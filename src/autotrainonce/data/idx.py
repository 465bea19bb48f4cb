"""A reader for the IDX format of (Fashion-)MNIST, optionally gzip-compressed.

Layout: two zero bytes, one type code, one byte with the number of dimensions, then each dimension as a
big-endian uint32, then the values (big-endian for multi-byte types) in row-major order.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError

__all__ = ["read_idx", "IDX_TYPES"]

# type code -> big-endian numpy dtype
IDX_TYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _corrupt(path: Path, reason: str, hint: str) -> DatasetError:
    return DatasetError(f"{path} is corrupt ({reason}); {hint}")


# Deflate can expand up to ~1000x; real IDX data (images, labels) expands far less. Past this ratio a small
# file would only be a way to exhaust memory (a "gzip bomb"), so it is refused.
_MAX_EXPANSION = 200
_MIN_LIMIT = 64 << 20


def _gunzip(raw: bytes, path: Path, hint: str) -> bytes:
    """Decompress no more than the IDX header says the file holds (plus one byte, to notice extra data)."""
    stream = zlib.decompressobj(wbits=31)  # wbits 31: a gzip container
    out = stream.decompress(raw, 4)
    if len(out) == 4 and out[:2] == b"\0\0" and out[2] in IDX_TYPES:
        out += stream.decompress(stream.unconsumed_tail, 4 * out[3])
        if len(out) == 4 + 4 * out[3]:
            dims = struct.unpack(f">{out[3]}I", out[4:])
            need = math.prod(dims) * np.dtype(IDX_TYPES[out[2]]).itemsize
            limit = max(_MIN_LIMIT, _MAX_EXPANSION * len(raw))
            if need > limit:
                raise _corrupt(
                    path, f"its header claims {need} bytes, more than {limit} from {len(raw)} compressed", hint
                )
            out += stream.decompress(stream.unconsumed_tail, need + 1)
            return out
    return out  # a bad header: read_idx reports it


def read_idx(path: str | Path, *, hint: str = "replace the file") -> np.ndarray:
    """Read one IDX file (gzip detected from its content, not its name) into a native-endian array.

    Any format problem raises :class:`DatasetError` naming the file, with ``hint`` saying how to fix it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; {hint}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path} ({exc.strerror or exc}); {hint}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = _gunzip(raw, path, hint)
        except DatasetError:
            raise
        except (OSError, EOFError, zlib.error) as exc:
            raise _corrupt(path, f"bad gzip data: {exc}", hint) from None
    if len(raw) < 4:
        raise _corrupt(path, f"only {len(raw)} bytes", hint)
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in IDX_TYPES or ndim == 0:
        raise _corrupt(path, f"bad IDX magic number 0x{raw[:4].hex()}", hint)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, "header cut short", hint)
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_TYPES[code])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a damaged header must not overflow int64
    if len(raw) - header != expected:
        raise _corrupt(path, f"{len(raw) - header} data bytes where dims {dims} need {expected}", hint)
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    # frombuffer views immutable bytes; a native-endian copy is writable and torch-friendly.
    return arr.astype(dtype.newbyteorder("="), copy=True)
