"""scikit-learn's bundled 8×8 handwritten digits (1797 images, no download needed)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from .base import DatasetInfo, TensorImageDataset, check_split

__all__ = ["DIGITS_INFO", "DIGITS_TEST_SIZE", "DIGITS_SPLIT_SEED", "digits", "digits_info"]

DIGITS_SPLIT_SEED = 0  # numpy default_rng seed of the fixed shuffle
DIGITS_TEST_SIZE = 360  # the last 360 of the shuffled 1797 images; the first 1437 are "train"

# Mean/std of all 1797 images scaled to [0, 1] (pixel values 0..16 divided by 16).
DIGITS_INFO = DatasetInfo(
    name="digits",
    num_classes=10,
    in_channels=1,
    image_size=(8, 8),
    mean=(0.3053,),
    std=(0.3760,),
    class_names=tuple(str(d) for d in range(10)),
    flip_augment=False,
)


@functools.lru_cache(maxsize=1)
def _load() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError(
            "the 'digits' dataset needs scikit-learn; install it with `pip install scikit-learn` "
            "(or `pip install -e .[dev]`)"
        ) from None
    bunch = load_digits()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(bunch.target))
    # 16 grey levels do not fit uint8/255 exactly, so keep exact float32 values in [0, 1].
    x = torch.from_numpy((bunch.data[order] / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target[order].astype(np.int64))
    return x, y


def digits(split: str = "train", root: str | Path | None = None) -> TensorImageDataset:
    """The digits ``split`` as 1×8×8 images: 1437 train / 360 test after a fixed-seed shuffle."""
    check_split(split)
    x, y = _load()
    cut = len(y) - DIGITS_TEST_SIZE
    part = slice(None, cut) if split == "train" else slice(cut, None)
    return TensorImageDataset(x[part], y[part], DIGITS_INFO, split)


def digits_info(root: str | Path | None = None) -> DatasetInfo:
    """Constant facts; imports nothing."""
    return DIGITS_INFO
