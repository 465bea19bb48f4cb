"""Images stored as ``root/<split>/<class_name>/<file>``, decoded lazily with Pillow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetError
from .base import DatasetInfo, Transform, check_split

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "imagefolder", "imagefolder_info", "find_classes"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
# "test" falls back to "val" because many image folders ship a validation split instead.
_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}


def _size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"image_size must be a positive int or (H, W), got {size!r}")
    return pair  # type: ignore[return-value]


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")


def _root(root: str | Path | None) -> Path:
    if root is None:
        raise ConfigError(
            "imagefolder needs --data-root (root=) naming a folder holding train/ and test/ (or val/)"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"image folder {path} not found; point --data-root (root=) at a folder holding train/ and test/ "
            "(or val/), one sub-folder per class"
        )
    return path


def _split_dir(root: Path, split: str) -> Path | None:
    return next((root / d for d in _SPLIT_DIRS[split] if (root / d).is_dir()), None)


def find_classes(root: Path) -> tuple[str, ...]:
    """Sorted class-folder names over all splits, so every split maps a class to the same index."""
    names = {
        c.name for s in ("train", "test") if (d := _split_dir(root, s)) for c in d.iterdir() if c.is_dir()
    }
    if not names:
        raise DatasetError(
            f"no class folders in {root}/train or {root}/test; expected root/<split>/<class>/*.png"
        )
    return tuple(sorted(names))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


class ImageFolder(Dataset):
    """Lazily decoded images; ``image_size`` resizes each one (bilinear, antialiased) as it is loaded."""

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        channels: int = 3,
        image_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
    ) -> None:
        _check_channels(channels)
        folder = _split_dir(root, split)
        if folder is None:
            raise DatasetError(f"image folder {root / _SPLIT_DIRS[split][0]} not found")
        classes = find_classes(root)
        self.samples: list[tuple[Path, int]] = [
            (f, i) for i, c in enumerate(classes) if (folder / c).is_dir()
            for f in sorted((folder / c).iterdir()) if _is_image(f)
        ]  # fmt: skip
        if not self.samples:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        self.root, self.split, self.channels = root, split, channels
        self.size = _size_pair(image_size)
        self.transform = transform
        self.info = _make_info(classes, channels, self.size or _peek_size(self.samples[0][0]), mean, std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        img = decode_image(path, self.channels)
        if self.size is not None and tuple(img.shape[1:]) != self.size:
            img = F.interpolate(
                img[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    @property
    def labels(self) -> torch.Tensor:
        """All labels as an int64 tensor (no decoding)."""
        return torch.tensor([lbl for _, lbl in self.samples], dtype=torch.int64)


def decode_image(path: Path, channels: int) -> torch.Tensor:
    """Decode ``path`` to a float C×H×W tensor in [0, 1] with ``channels`` (1 or 3) channels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(
            f"cannot decode image {path} ({exc}); the file is corrupt, remove or replace it"
        ) from None
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float().div_(255.0)


def _peek_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # opening reads the header only
            w, h = im.size
    except OSError as exc:
        raise DatasetError(
            f"cannot read image {path} ({exc}); the file is corrupt, remove or replace it"
        ) from None
    return h, w


def _make_info(classes, channels, size, mean, std) -> DatasetInfo:
    # Without known statistics, 0.5/0.5 maps [0, 1] to [-1, 1], a safe default for any image set.
    mean_t = tuple(float(m) for m in mean) if mean is not None else (0.5,) * channels
    std_t = tuple(float(s) for s in std) if std is not None else (0.5,) * channels
    if len(mean_t) != channels or len(std_t) != channels:
        raise ConfigError(f"mean and std need {channels} values each, got {mean_t} and {std_t}")
    return DatasetInfo("imagefolder", len(classes), channels, size, mean_t, std_t, classes)


def imagefolder(
    split: str = "train",
    root: str | Path | None = None,
    channels: int = 3,
    image_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageFolder:
    """Images under ``root/<split>/<class>/``; class index = position of the folder name in sorted order."""
    check_split(split)
    return ImageFolder(_root(root), split, channels=channels, image_size=image_size, mean=mean, std=std)


def imagefolder_info(
    root: str | Path | None = None,
    channels: int = 3,
    image_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DatasetInfo:
    """Facts from the folder names and the first image's header (no image is decoded)."""
    _check_channels(channels)
    path = _root(root)
    classes = find_classes(path)
    size = _size_pair(image_size)
    if size is None:
        first = next(
            (f for s in ("train", "test") if (d := _split_dir(path, s)) for c in classes if (d / c).is_dir()
             for f in sorted((d / c).iterdir()) if _is_image(f)),
            None,
        )  # fmt: skip
        if first is None:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
        size = _peek_size(first)
    return _make_info(classes, channels, size, mean, std)
