"""The model zoo: plain ``nn.Module`` networks without any pruning logic, built by name.

>>> from autotrainonce import models
>>> net = models.create("resnet56", num_classes=10)
>>> models.list_models("resnet*")[:2]
['resnet110', 'resnet18']

Every model is ``torch.fx``-traceable, has ``forward_features(x)`` (the last feature map) and ``forward_head(x)``
(pool, flatten, classifier), with ``forward(x) == forward_head(forward_features(x))``, and accepts any
``in_channels`` and ``num_classes``. See docs/models.md for the table of models. :func:`build` also takes a model of
your own as ``"module:attr"`` (see :mod:`autotrainonce.models.custom`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from ..errors import ConfigError, UnknownNameError
from ._common import MODELS, ConvBNAct, count_params, init_weights
from .custom import EXAMPLE, build_custom, is_custom_name, short_name

# Importing the family modules registers their models in MODELS.
from .mobilenetv2 import InvertedResidual, MobileNetV2
from .resnet import BasicBlock, Bottleneck, ResNet
from .resnet_cifar import CifarResNet, PadShortcut
from .vgg import VGG

__all__ = [
    "MODELS",
    "build",
    "create",
    "is_custom_name",
    "short_name",
    "list_models",
    "count_params",
    "init_weights",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ConvBNAct",
    "InvertedResidual",
    "MobileNetV2",
    "PadShortcut",
    "ResNet",
    "VGG",
]


def create(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` (case-insensitive) with freshly initialised weights.

    ``kwargs`` are the model's own options (e.g. ``shortcut="B"``, ``cifar_stem=True``, ``width_mult=0.5``);
    options set to None keep their defaults. Raises UnknownNameError for an unknown name and ConfigError for
    invalid sizes or an option the model does not have.
    """
    builder = MODELS.get(name)
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if in_channels is not None and in_channels < 1:
        raise ConfigError(f"in_channels must be at least 1, got {in_channels}")
    # Check the options up front so a typo reads as a config error, not as a TypeError from deep inside.
    params = inspect.signature(builder).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        options = ", ".join(p for p in params if p not in ("num_classes", "in_channels")) or "none"
        raise ConfigError(f"model {name!r} has no option {', '.join(unknown)}; its options are: {options}")
    return MODELS.create(name, num_classes=num_classes, in_channels=in_channels, **kwargs)


def build(name: str, num_classes: int | None = 10, in_channels: int | None = 3, **kwargs: Any) -> nn.Module:
    """Build a zoo model (:func:`create`) or, for ``"module:attr"``, a model of your own (``build_custom``).

    This is what ``ato train``, ``ato eval`` and ``ato info`` call. A name that is neither raises
    UnknownNameError listing the zoo and showing the ``module:attr`` form.
    """
    if is_custom_name(name):
        if num_classes is not None and num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        if in_channels is not None and in_channels < 1:
            raise ConfigError(f"in_channels must be at least 1, got {in_channels}")
        return build_custom(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name not in MODELS:
        module, _, attr = name.rpartition(".")
        # "mypkg.nets.MyNet" is the most likely slip: Python's dotted path instead of module:attr.
        hint = f" (did you mean '{module}:{attr}'?)" if module and attr else ""
        raise UnknownNameError(
            f"unknown model {name!r}{hint}; choose one of: {', '.join(MODELS.names())}; or name a model of "
            f"your own as module:attr, e.g. {EXAMPLE} (imported from the current folder or PYTHONPATH)"
        )
    return create(name, num_classes=num_classes, in_channels=in_channels, **kwargs)  # type: ignore[arg-type]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted."""
    return MODELS.names(pattern)
