"""The dataset registry: :func:`create`, :func:`info` and :func:`list_datasets`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import ConfigError
from ..registry import Registry
from . import cifar, digits, fashion_mnist, imagefolder, synthetic
from .base import DatasetInfo, check_split
from .transforms import build_transform

__all__ = ["DATASETS", "create", "info", "list_datasets", "register_dataset"]

DATASETS: Registry[Dataset] = Registry("dataset")
_INFO: dict[str, Callable[..., DatasetInfo]] = {}
_TRANSFORM_NAMES = ("default", "train", "eval")


def register_dataset(name: str, build: Callable[..., Dataset], describe: Callable[..., DatasetInfo]) -> None:
    """Register ``build(split, root, **options)`` and the cheap ``describe(root, **options)`` under ``name``."""
    DATASETS.register(name)(build)
    _INFO[name.lower()] = describe


register_dataset("fashion-mnist", fashion_mnist.fashion_mnist, fashion_mnist.fashion_mnist_info)
register_dataset("digits", digits.digits, digits.digits_info)
register_dataset("cifar10", cifar.cifar10, cifar.cifar10_info)
register_dataset("cifar100", cifar.cifar100, cifar.cifar100_info)
register_dataset("imagefolder", imagefolder.imagefolder, imagefolder.imagefolder_info)
register_dataset("synthetic", synthetic.synthetic, synthetic.synthetic_info)


def _options(fn: Callable[..., Any]) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("split", "root")]


def _check_options(name: str, kw: dict[str, Any]) -> None:
    # A misspelt option should name the valid ones, not surface as a TypeError from deep inside.
    allowed = _options(DATASETS.get(name))
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        choices = ", ".join(allowed) or "none"
        raise ConfigError(f"dataset {name!r} has no option {', '.join(unknown)}; its options are: {choices}")


def list_datasets() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return DATASETS.names()


def create(
    name: str,
    split: str = "train",
    *,
    root: str | Path | None = None,
    transform: Callable[[Any], Any] | str | None = None,
    **kw: Any,
) -> Dataset:
    """Build dataset ``name``'s ``split`` ("train" or "test"); items are ``(float C×H×W image, int label)``.

    ``transform``: None keeps raw [0, 1] images; a callable is applied to each image; "default" picks the
    standard train pipeline (augment + normalize) for "train" and the eval one (normalize) for "test";
    "train"/"eval" force one of them. ``kw`` are dataset options, e.g. ``label_type="coarse"`` for cifar100.
    """
    builder = DATASETS.get(name)
    check_split(split)
    _check_options(name, kw)
    ds = builder(split=split, root=root, **kw)
    if isinstance(transform, str):
        if transform not in _TRANSFORM_NAMES:
            raise ConfigError(
                f"unknown transform {transform!r}; choose one of: {', '.join(_TRANSFORM_NAMES)}"
            )
        train = split == "train" if transform == "default" else transform == "train"
        transform = build_transform(ds.info, train)
    elif transform is not None and not callable(transform):
        raise ConfigError(
            f"transform must be None, a callable or one of {_TRANSFORM_NAMES}, got {transform!r}"
        )
    ds.transform = transform
    return ds


def info(name: str, root: str | Path | None = None, **kw: Any) -> DatasetInfo:
    """Static facts about dataset ``name`` without loading its data where avoidable.

    Accepts the same options as :func:`create`; those that do not change the facts are ignored.
    """
    DATASETS.get(name)  # unknown names fail here, listing the choices
    _check_options(name, kw)
    describe = _INFO[name.lower()]
    accepted = set(_options(describe))
    return describe(root=root, **{k: v for k, v in kw.items() if k in accepted})
