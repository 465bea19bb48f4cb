"""CIFAR-10 and CIFAR-100 from their python-pickle releases, read with a restricted unpickler.

Each data row holds 3072 bytes: the 1024 red values of the 32×32 image in row-major order, then green,
then blue, so ``reshape(N, 3, 32, 32)`` is already channels-first.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from .base import DatasetInfo, TensorImageDataset, check_split, env_root
from .safe_pickle import safe_load

__all__ = ["cifar10", "cifar10_info", "cifar100", "cifar100_info", "find_cifar"]

_LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "archive": "cifar-10-python.tar.gz",
        # Per-channel mean/std of the 50k training images in [0, 1].
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "archive": "cifar-100-python.tar.gz",
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_LABEL_TYPES = ("fine", "coarse")


def _hint(kind: str) -> str:
    lay = _LAYOUT[kind]
    return (
        f"extract {lay['archive']} (from https://www.cs.toronto.edu/~kriz/cifar.html) and point --data-root "
        f"(root=) or ATO_DATA_ROOT at the folder holding {lay['folder']}/"
    )


def find_cifar(kind: str, root: str | Path | None) -> Path:
    """The folder holding ``kind``'s batch files: ``root`` (or ``$ATO_DATA_ROOT``) itself or its subfolder."""
    base = Path(root).expanduser() if root is not None else env_root()
    if base is None:
        raise DatasetError(f"{kind} has no default location; {_hint(kind)}")
    lay = _LAYOUT[kind]
    for folder in (base, base / lay["folder"]):
        if (folder / lay["test"][0]).is_file() or (folder / lay["train"][0]).is_file():
            return folder
    raise DatasetError(f"{kind} files not found in {base} or {base / lay['folder']}; {_hint(kind)}")


def _str_keys(obj: Any, path: Path, hint: str) -> dict[str, Any]:
    # The real files decode with bytes keys under encoding="bytes"; files written by Python 3 may use str.
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} is corrupt (holds {type(obj).__name__}, not a dict); {hint}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _names(values: Any) -> tuple[str, ...]:
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values)


def _read_batch(path: Path, label_key: str, hint: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(safe_load(path, hint=hint), path, hint)
    if "data" not in batch or label_key not in batch:
        raise DatasetError(f"{path} is corrupt (keys {sorted(batch)}, need data and {label_key}); {hint}")
    data = np.asarray(batch["data"])
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:  # labels that are not a flat list of ints
        raise DatasetError(f"{path} is corrupt ({label_key}: {exc}); {hint}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(
            f"{path} is corrupt (data {data.dtype} {data.shape}, expected uint8 N×3072); {hint}"
        )
    if len(labels) != len(data):
        raise DatasetError(f"{path} is corrupt ({len(data)} images but {len(labels)} labels); {hint}")
    return data, labels


@functools.lru_cache(maxsize=4)
def _load(folder: Path, files: tuple[str, ...], label_key: str, kind: str, _stamp: tuple[int, ...]):
    hint = _hint(kind)
    parts = [_read_batch(folder / f, label_key, hint) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(data).reshape(-1, 3, 32, 32)
    return x, torch.from_numpy(labels)


def _meta_names(kind: str, folder: Path | None, key: str) -> tuple[str, ...] | None:
    if folder is None or not (folder / _LAYOUT[kind]["meta"]).is_file():
        return None
    path = folder / _LAYOUT[kind]["meta"]
    meta = _str_keys(safe_load(path, hint=_hint(kind)), path, _hint(kind))
    return _names(meta[key]) if key in meta else None


def _info(kind: str, folder: Path | None, label_type: str = "fine") -> DatasetInfo:
    lay = _LAYOUT[kind]
    if kind == "cifar10":
        num_classes, names = 10, _meta_names(kind, folder, "label_names") or _CIFAR10_NAMES
        name = "cifar10"
    else:
        num_classes = 100 if label_type == "fine" else 20
        names = _meta_names(kind, folder, f"{label_type}_label_names")
        name = "cifar100"
    if names is not None and len(names) != num_classes:
        names = None  # a meta file that disagrees is not worth failing over; the labels are what count
    return DatasetInfo(name, num_classes, 3, (32, 32), lay["mean"], lay["std"], names)


def _build(kind: str, split: str, root: str | Path | None, label_key: str, info: DatasetInfo):
    check_split(split)
    folder = find_cifar(kind, root)
    files = tuple(_LAYOUT[kind][split])
    for f in files:
        if not (folder / f).is_file():
            raise DatasetError(f"{kind} file {folder / f} not found; {_hint(kind)}")
    stamp = tuple(v for f in files for v in ((folder / f).stat().st_mtime_ns, (folder / f).stat().st_size))
    x, y = _load(folder.resolve(), files, label_key, kind, stamp)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise DatasetError(
            f"{kind} {split} labels span {int(y.min())}..{int(y.max())}, expected 0..{info.num_classes - 1}; "
            f"the files in {folder} are corrupt"
        )
    return TensorImageDataset(x, y, info, split)


def cifar10(split: str = "train", root: str | Path | None = None) -> TensorImageDataset:
    """CIFAR-10 ``split`` (50k train / 10k test) as 3×32×32 images."""
    check_split(split)
    folder = find_cifar("cifar10", root)
    return _build("cifar10", split, folder, "labels", _info("cifar10", folder))


def cifar100(
    split: str = "train", root: str | Path | None = None, label_type: str = "fine"
) -> TensorImageDataset:
    """CIFAR-100 ``split`` with its 100 ``fine`` or 20 ``coarse`` labels."""
    check_split(split)
    _check_label_type(label_type)
    folder = find_cifar("cifar100", root)
    info = _info("cifar100", folder, label_type)
    return _build("cifar100", split, folder, f"{label_type}_labels", info)


def _check_label_type(label_type: str) -> None:
    if label_type not in _LABEL_TYPES:
        raise ConfigError(f"unknown label_type {label_type!r}; choose one of: {', '.join(_LABEL_TYPES)}")


def _folder_or_none(kind: str, root: str | Path | None) -> Path | None:
    try:
        return find_cifar(kind, root)
    except DatasetError:
        return None  # info() works without the files; only class names come from them


def cifar10_info(root: str | Path | None = None) -> DatasetInfo:
    """Facts about CIFAR-10; reads at most the small meta file."""
    return _info("cifar10", _folder_or_none("cifar10", root))


def cifar100_info(root: str | Path | None = None, label_type: str = "fine") -> DatasetInfo:
    """Facts about CIFAR-100 (100 fine or 20 coarse classes); reads at most the small meta file."""
    _check_label_type(label_type)
    return _info("cifar100", _folder_or_none("cifar100", root), label_type)
