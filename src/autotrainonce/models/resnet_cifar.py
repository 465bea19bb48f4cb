"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/56/110.

A 3x3 conv stem with 16 channels, three stages of ``n = (depth - 2) / 6`` BasicBlocks with 16/32/64 channels
(the first block of stages 2 and 3 has stride 2), global average pool and a linear layer.

Shortcut option "A" (the paper's, the default) adds no parameters: where the shape changes it subsamples the
input spatially and zero-pads the new channels (:class:`PadShortcut`). Option "B" uses a 1x1 conv + BN projection.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ._common import MODELS, init_weights
from .resnet import BasicBlock

__all__ = ["CifarResNet", "PadShortcut", "resnet20", "resnet32", "resnet56", "resnet110"]


class PadShortcut(nn.Module):
    """Shortcut "A": keep every ``stride``-th pixel, then zero-pad channels ``in_planes`` -> ``out_planes``.

    The padding is split evenly in front of and behind the input channels, so the input's channels land in the
    middle of the output (positions ``pad_front .. pad_front + in_planes - 1``). Slicing by constant steps and
    ``F.pad`` trace with ``torch.fx`` as ordinary nodes.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"PadShortcut cannot shrink channels ({in_planes} -> {out_planes})")
        self.stride = stride
        self.pad_front = (out_planes - in_planes) // 2
        self.pad_back = out_planes - in_planes - self.pad_front

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


def _shortcut(kind: str, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    if kind == "A":
        return PadShortcut(in_planes, out_planes, stride)
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with ``blocks_per_stage`` BasicBlocks in each of three stages (16/32/64 ch).

    Attributes follow the usual names: ``conv1``, ``bn1``, ``relu``, ``layer1..3``, ``avgpool``, ``fc``.
    Adaptive pooling makes any input of at least 1x1 work (28x28 Fashion-MNIST, 8x8 digits).
    """

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        kind = shortcut.upper()
        if kind not in ("A", "B"):
            raise ConfigError(
                f"unknown ResNet shortcut {shortcut!r}; choose 'A' (zero padding) or 'B' (1x1 conv)"
            )
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(kind, 16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(kind, 16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(kind, 32, 64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    @staticmethod
    def _make_stage(kind: str, in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        stage = [BasicBlock(in_planes, planes, stride, _shortcut(kind, in_planes, planes, stride))]
        stage += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and the three stages: the last feature map, shape (N, 64, H, W) (8x8 for 32x32 inputs)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Global average pool, flatten and ``fc``: logits of shape (N, num_classes)."""
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cifar_resnet(
    depth: int, num_classes: int, in_channels: int, shortcut: str, zero_init_residual: bool
) -> CifarResNet:
    # depth = 6n + 2: the stem, 3 stages x n blocks x 2 convs, and fc.
    return CifarResNet((depth - 2) // 6, num_classes, in_channels, shortcut, zero_init_residual)


@MODELS.register()
def resnet20(
    num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """CIFAR ResNet-20 (n=3); 0.27M params with shortcut A."""
    return _cifar_resnet(20, num_classes, in_channels, shortcut, zero_init_residual)


@MODELS.register()
def resnet32(
    num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """CIFAR ResNet-32 (n=5); 0.46M params with shortcut A."""
    return _cifar_resnet(32, num_classes, in_channels, shortcut, zero_init_residual)


@MODELS.register()
def resnet56(
    num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """CIFAR ResNet-56 (n=9); 0.85M params with shortcut A."""
    return _cifar_resnet(56, num_classes, in_channels, shortcut, zero_init_residual)


@MODELS.register()
def resnet110(
    num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", zero_init_residual: bool = False
) -> CifarResNet:
    """CIFAR ResNet-110 (n=18); 1.7M params with shortcut A."""
    return _cifar_resnet(110, num_classes, in_channels, shortcut, zero_init_residual)
