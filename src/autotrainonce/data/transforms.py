"""Image transforms in plain torch, for C×H×W float tensors.

Randomness comes from torch's global RNG, so ``torch.manual_seed`` makes a run reproducible and DataLoader
workers (which torch seeds per worker) draw different but repeatable augmentations. ``ato train`` wraps its
training set in :class:`~autotrainonce.data.sampler.SeededDataset`, which seeds that RNG from
``(seed, epoch, index)`` for every sample: the augmentation of an image then depends on nothing else (not on
the worker, the process or a resume).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import DatasetInfo

__all__ = [
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Normalize",
    "Resize",
    "PadTo",
    "RepeatChannels",
    "ToFloat",
    "build_transform",
    "crop_padding",
]

Size = int | Sequence[int]


def _pair(size: Size, what: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ConfigError(f"{what} must be a positive int or (H, W), got {size!r}")
    return pair  # type: ignore[return-value]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Iterable[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.transforms))})"


class ToFloat:
    """uint8 [0, 255] -> float32 [0, 1]; float input passes through as float32."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def __repr__(self) -> str:
        return "ToFloat()"


class RandomCrop:
    """Zero-pad each side by ``padding``, then crop a random ``size`` window."""

    def __init__(self, size: Size, padding: int = 0) -> None:
        self.size = _pair(size, "RandomCrop size")
        if padding < 0:
            raise ConfigError(f"RandomCrop padding must be >= 0, got {padding}")
        self.padding = padding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p))
        h, w = self.size
        room_h, room_w = x.shape[-2] - h, x.shape[-1] - w
        if room_h < 0 or room_w < 0:
            raise ConfigError(
                f"RandomCrop size {self.size} is larger than the padded image {tuple(x.shape[-2:])}"
            )
        top = int(torch.randint(0, room_h + 1, ()))
        left = int(torch.randint(0, room_w + 1, ()))
        return x[..., top : top + h, left : left + w]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"RandomHorizontalFlip p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if float(torch.rand(())) < self.p else x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or not len(mean):
            raise ConfigError(f"Normalize needs as many means as stds, got {tuple(mean)} and {tuple(std)}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"Normalize std must be positive, got {tuple(std)}")
        self._stats = (tuple(mean), tuple(std))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] != self.mean.shape[0]:
            raise ConfigError(
                f"Normalize has {self.mean.shape[0]} channel stats but the image has {x.shape[-3]}"
            )
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self._stats[0]}, std={self._stats[1]})"


class Resize:
    """Bilinear resize to ``size`` (antialiased, so shrinking does not alias)."""

    def __init__(self, size: Size) -> None:
        self.size = _pair(size, "Resize size")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class PadTo:
    """Zero-pad to ``size``, centring the image (an odd remainder goes to the bottom/right)."""

    def __init__(self, size: Size) -> None:
        self.size = _pair(size, "PadTo size")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        extra_h, extra_w = self.size[0] - x.shape[-2], self.size[1] - x.shape[-1]
        if extra_h < 0 or extra_w < 0:
            raise ConfigError(
                f"PadTo{self.size} cannot shrink an image of size {tuple(x.shape[-2:])}; use Resize"
            )
        top, left = extra_h // 2, extra_w // 2
        return F.pad(x, (left, extra_w - left, top, extra_h - top))

    def __repr__(self) -> str:
        return f"PadTo({self.size})"


class RepeatChannels:
    """Repeat a single channel ``n`` times (greyscale -> RGB); an image that already has ``n`` passes."""

    def __init__(self, n: int = 3) -> None:
        self.n = n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-3]
        if c == self.n:
            return x
        if c != 1:
            raise ConfigError(f"RepeatChannels({self.n}) needs a 1-channel image, got {c} channels")
        return x.expand(*x.shape[:-3], self.n, *x.shape[-2:]).clone()

    def __repr__(self) -> str:
        return f"RepeatChannels({self.n})"


_CROP_PADDING = {32: 4, 28: 2, 8: 1}
_FITS = ("resize", "pad")


def crop_padding(size: tuple[int, int]) -> int:
    """Padding of the standard random crop: 4 for 32 px, 2 for 28 px, 1 for 8 px, else ~1/8 of the side."""
    side = min(size)
    return _CROP_PADDING.get(side, max(1, side // 8))


def build_transform(
    info: DatasetInfo,
    train: bool,
    *,
    augment: bool = True,
    image_size: Size | None = None,
    in_channels: int | None = None,
    fit: str = "resize",
) -> Compose:
    """The standard pipeline for ``info``'s [0, 1] images.

    Order: resize (``fit="resize"``) or zero-pad (``fit="pad"``) to ``image_size``; repeat a single channel
    to ``in_channels``; when ``train and augment``, a padded random crop and (unless the dataset's labels are
    not mirror-safe, e.g. digits) a horizontal flip; finally Normalize with the dataset's mean/std.
    """
    if fit not in _FITS:
        raise ConfigError(f"unknown fit {fit!r}; choose one of: {', '.join(_FITS)}")
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    size = info.image_size
    if image_size is not None:
        target = _pair(image_size, "image_size")
        if target != size:
            steps.append(Resize(target) if fit == "resize" else PadTo(target))
            size = target
    mean, std = info.mean, info.std
    if in_channels is not None and in_channels != info.in_channels:
        if info.in_channels != 1:
            raise ConfigError(
                f"cannot turn {info.name}'s {info.in_channels}-channel images into {in_channels} channels; "
                "only 1 -> N (repeat) is supported"
            )
        steps.append(RepeatChannels(in_channels))
        mean, std = mean * in_channels, std * in_channels
    if train and augment:
        steps.append(RandomCrop(size, padding=crop_padding(size)))
        if info.flip_augment:
            steps.append(RandomHorizontalFlip())
    steps.append(Normalize(mean, std))
    return Compose(steps)
