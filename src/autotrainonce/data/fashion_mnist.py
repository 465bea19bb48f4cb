"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` package (or any folder)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..errors import DatasetError
from .base import DatasetInfo, TensorImageDataset, check_split, env_root
from .idx import read_idx

__all__ = ["DEBIAN_DIR", "FASHION_MNIST_INFO", "fashion_mnist", "fashion_mnist_info", "find_fashion_mnist"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_PREFIX = {"train": "train", "test": "t10k"}
_INSTALL = "install it with `sudo apt-get install dataset-fashion-mnist` or set ATO_DATA_ROOT to its folder"
_REINSTALL = "reinstall it with `sudo apt-get install --reinstall dataset-fashion-mnist`"

# Per-pixel mean/std of the 60k training images scaled to [0, 1]; constants so that info() reads no data.
FASHION_MNIST_INFO = DatasetInfo(
    name="fashion-mnist",
    num_classes=10,
    in_channels=1,
    image_size=(28, 28),
    mean=(0.2860,),
    std=(0.3530,),
    class_names=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
)  # fmt: skip


def _file_names(split: str) -> tuple[str, str]:
    prefix = _PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _lookup(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files of ``split``.

    Looks in ``root``, else ``$ATO_DATA_ROOT``, else the Debian folder; a given folder may hold the files
    or a ``fashion-mnist/`` subfolder holding them.
    """
    check_split(split)
    base = Path(root).expanduser() if root is not None else (env_root() or DEBIAN_DIR)
    names = _file_names(split)
    for folder in (base, base / "fashion-mnist"):
        found = [_lookup(folder, n) for n in names]
        if all(found):
            return found[0], found[1]  # type: ignore[return-value]
    # Name the first file missing from the folder the user most likely meant.
    folder = base / "fashion-mnist" if (base / "fashion-mnist").is_dir() else base
    missing = next(n for n in names if _lookup(folder, n) is None)
    origin = " (the folder named by ATO_DATA_ROOT)" if root is None and env_root() is not None else ""
    raise DatasetError(f"Fashion-MNIST file {folder / missing}.gz not found{origin}; {_INSTALL}")


@functools.lru_cache(maxsize=4)
def _load(images: Path, labels: Path, _stamp: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    # _stamp (mtimes and sizes) is part of the cache key so a replaced file is re-read.
    x = read_idx(images, hint=_REINSTALL)
    y = read_idx(labels, hint=_REINSTALL)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype.itemsize != 1:
        raise DatasetError(f"{images} is corrupt (shape {x.shape}, expected N×28×28 bytes); {_REINSTALL}")
    if y.ndim != 1 or y.dtype.itemsize != 1:
        raise DatasetError(f"{labels} is corrupt (shape {y.shape}, expected N bytes); {_REINSTALL}")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{images} holds {x.shape[0]} images but {labels} {y.shape[0]} labels; {_REINSTALL}"
        )
    if y.size and int(y.max()) > 9:
        raise DatasetError(f"{labels} is corrupt (label {int(y.max())} > 9); {_REINSTALL}")
    return torch.from_numpy(x.astype("uint8", copy=False)).unsqueeze(1), torch.from_numpy(y.astype("int64"))


def fashion_mnist(split: str = "train", root: str | Path | None = None) -> TensorImageDataset:
    """Fashion-MNIST ``split`` as 1×28×28 images; files are parsed once per process and cached."""
    images, labels = find_fashion_mnist(split, root)
    stamp = tuple(v for p in (images, labels) for v in (p.stat().st_mtime_ns, p.stat().st_size))
    x, y = _load(images.resolve(), labels.resolve(), stamp)
    return TensorImageDataset(x, y, FASHION_MNIST_INFO, split)


def fashion_mnist_info(root: str | Path | None = None) -> DatasetInfo:
    """Constant facts; reads no file."""
    return FASHION_MNIST_INFO
