"""MobileNetV2 (Sandler et al. 2018): inverted residual blocks with linear bottlenecks and ReLU6.

``mobilenetv2`` is the ImageNet layout (total stride 32). ``mobilenetv2_cifar`` is the variant commonly trained
on 32x32 inputs: the stem and the first stride-2 stage (24 channels) use stride 1, so the total stride is 8 and a
32x32 image ends as a 4x4 map. Both have the same parameters; only the strides differ.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import ConfigError
from ._common import MODELS, ConvBNAct, init_weights

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2", "mobilenetv2_cifar"]

# (expansion t, output channels c, repeats n, stride s of the first repeat), Table 2 of the paper.
_IMAGENET_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _round_channels(value: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), bumped up if rounding lost more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when ``expand_ratio`` is 1) -> 3x3 depthwise -> 1x1 linear projection.

    The input is added back only when the block keeps both resolution and width (``use_residual``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = (
            ConvBNAct(in_channels, hidden, kernel_size=1, act=nn.ReLU6) if expand_ratio != 1 else None
        )
        self.dwconv = ConvBNAct(hidden, hidden, kernel_size=3, stride=stride, groups=hidden, act=nn.ReLU6)
        # No activation after the projection: the "linear bottleneck" of the paper.
        self.project = ConvBNAct(hidden, out_channels, kernel_size=1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.dwconv(out))
        # use_residual is fixed at construction, so fx records either the add or nothing.
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with ``features`` (stem, 17 inverted residuals, 1x1 conv to 1280) and ``classifier``.

    ``classifier`` is ``Sequential(Dropout(dropout), Linear(1280, num_classes))``; global average pooling
    (``avgpool``) sits between the two, so any input size works.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        stem_stride: int = 2,
        stage_strides: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be positive, got {width_mult}")
        strides = stage_strides or tuple(s for *_, s in _IMAGENET_STAGES)
        if len(strides) != len(_IMAGENET_STAGES):
            raise ConfigError(f"stage_strides needs {len(_IMAGENET_STAGES)} entries, got {len(strides)}")
        width = _round_channels(32 * width_mult)
        # The last conv never shrinks below 1280: the paper keeps it wide for width multipliers < 1.
        last_width = _round_channels(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [
            ConvBNAct(in_channels, width, kernel_size=3, stride=stem_stride, act=nn.ReLU6)
        ]
        for (t, c, n, _), s in zip(_IMAGENET_STAGES, strides):
            out_width = _round_channels(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(width, out_width, s if i == 0 else 1, t))
                width = out_width
        layers.append(ConvBNAct(width, last_width, kernel_size=1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_width, num_classes))
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """``features``: the last feature map, shape (N, 1280, H', W') at width 1."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Global average pool, flatten and ``classifier``: logits of shape (N, num_classes)."""
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _mobilenetv2(
    num_classes: int, in_channels: int, width_mult: float, dropout: float, cifar: bool
) -> MobileNetV2:
    if cifar:
        # Stride 1 in the stem and in the 24-channel stage: 32x32 -> 4x4 instead of 1x1.
        return MobileNetV2(num_classes, in_channels, width_mult, dropout, 1, (1, 1, 2, 2, 1, 2, 1))
    return MobileNetV2(num_classes, in_channels, width_mult, dropout)


@MODELS.register()
def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNetV2, ImageNet layout (stem stride 2, total stride 32); 3.50M params at 1000 classes."""
    return _mobilenetv2(num_classes, in_channels, width_mult, dropout, cifar=False)


@MODELS.register()
def mobilenetv2_cifar(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNetV2 for 32x32 inputs (stem and 24-channel stage at stride 1, total stride 8); 2.24M params."""
    return _mobilenetv2(num_classes, in_channels, width_mult, dropout, cifar=True)
