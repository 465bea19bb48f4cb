"""Random but learnable images for smoke tests: a fixed pattern per class plus per-image noise."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import DatasetInfo, TensorImageDataset, check_split

__all__ = ["synthetic", "synthetic_info"]

_NOISE_STD = 0.15  # small next to the ~0.3 spread between class patterns, so a tiny CNN learns it in an epoch
_DEFAULT_SAMPLES = {"train": 512, "test": 128}


def _check(num_classes: int, image_size: int, in_channels: int, num_samples: int | None) -> None:
    for key, value, low in (("num_classes", num_classes, 2), ("image_size", image_size, 4),
                            ("in_channels", in_channels, 1)):  # fmt: skip
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"synthetic {key} must be an int >= {low}, got {value!r}")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ConfigError(f"synthetic num_samples must be a positive int, got {num_samples!r}")


def synthetic_info(
    root: str | Path | None = None, num_classes: int = 10, image_size: int = 32, in_channels: int = 3
) -> DatasetInfo:
    """Facts for the given shape options; mean/std are the nominal 0.5 / 0.25 of the generator."""
    _check(num_classes, image_size, in_channels, None)
    return DatasetInfo(
        name="synthetic",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=(image_size, image_size),
        mean=(0.5,) * in_channels,
        std=(0.25,) * in_channels,
        class_names=tuple(f"class_{i}" for i in range(num_classes)),
    )


def synthetic(
    split: str = "train",
    root: str | Path | None = None,
    num_samples: int | None = None,
    num_classes: int = 10,
    image_size: int = 32,
    in_channels: int = 3,
    seed: int = 0,
) -> TensorImageDataset:
    """``num_samples`` images (default 512 train / 128 test), balanced over ``num_classes``.

    The class patterns depend on ``seed`` only, so train and test share them; the noise and label order
    differ per split. Same arguments, same tensors.
    """
    check_split(split)
    _check(num_classes, image_size, in_channels, num_samples)
    n = num_samples if num_samples is not None else _DEFAULT_SAMPLES[split]
    gen = torch.Generator().manual_seed(int(seed))
    # Smooth prototypes: a coarse 4×4 random grid upsampled, so patterns survive crops and pooling.
    coarse = torch.rand(num_classes, in_channels, 4, 4, generator=gen) * 0.6 + 0.2
    protos = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    gen.manual_seed(int(seed) * 2 + (1 if split == "train" else 2))
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    noise = torch.randn(n, in_channels, image_size, image_size, generator=gen) * _NOISE_STD
    images = (protos[labels] + noise).clamp_(0.0, 1.0)
    # Store as uint8 like the real datasets: 4× less memory, same access path.
    x = images.mul_(255.0).round_().to(torch.uint8)
    return TensorImageDataset(x, labels, synthetic_info(None, num_classes, image_size, in_channels), split)
