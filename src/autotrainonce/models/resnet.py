"""ResNets in the ImageNet layout (He et al. 2016): ResNet-18/34 (BasicBlock) and ResNet-50 (Bottleneck, v1.5).

Every module is called exactly once in ``forward`` (each block owns its ReLUs), so an ``torch.fx`` graph maps
one-to-one onto ``named_modules()``; residuals are a plain ``+`` and no activation works in place.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ._common import MODELS, init_weights

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers and a shortcut; ``downsample`` (or None for identity) reshapes the shortcut."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # A static attribute check, resolved while tracing: fx sees no branch.
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, "ResNet v1.5"), 1x1 expand by 4, each with BN; plus a shortcut."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = _conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = downsample
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + shortcut)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3


def _make_stage(
    block: type[BasicBlock | Bottleneck], in_planes: int, planes: int, blocks: int, stride: int
) -> nn.Sequential:
    """``blocks`` blocks; the first one changes stride/width and gets a 1x1 conv + BN projection shortcut."""
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or in_planes != out_planes:
        downsample = nn.Sequential(_conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    stage = [block(in_planes, planes, stride, downsample)]
    stage += [block(out_planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*stage)


class ResNet(nn.Module):
    """ImageNet-layout ResNet: stem, four stages (64/128/256/512 base widths), global average pool, ``fc``.

    The stem is a 7x7/2 conv + BN + ReLU + 3x3/2 max-pool; ``cifar_stem=True`` swaps it for a 3x3/1 conv + BN +
    ReLU without max-pool (``maxpool`` is then None), the usual choice for 32x32 inputs. Stages after the first
    start with a stride-2 block whose shortcut is a 1x1 conv + BN projection.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_channels: int = 3,
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = None if cifar_stem else nn.MaxPool2d(3, 2, padding=1)
        # Widths are not stored on the module: pruning changes them, the layers themselves stay the truth.
        widths = [64, 64 * block.expansion, 128 * block.expansion, 256 * block.expansion]
        self.layer1 = _make_stage(block, widths[0], 64, layers[0], stride=1)
        self.layer2 = _make_stage(block, widths[1], 128, layers[1], stride=2)
        self.layer3 = _make_stage(block, widths[2], 256, layers[2], stride=2)
        self.layer4 = _make_stage(block, widths[3], 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)
        if zero_init_residual:
            # Each block then starts as the identity, which helps very deep nets early in training.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and the four stages: the last feature map, shape (N, 512 * expansion, H', W')."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Global average pool, flatten and ``fc``: logits of shape (N, num_classes)."""
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _resnet(
    block: type[BasicBlock | Bottleneck],
    layers: tuple[int, int, int, int],
    num_classes: int,
    in_channels: int,
    cifar_stem: bool,
    zero_init_residual: bool,
) -> ResNet:
    return ResNet(block, layers, num_classes, in_channels, cifar_stem, zero_init_residual)


@MODELS.register()
def resnet18(
    num_classes: int = 10, in_channels: int = 3, cifar_stem: bool = False, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18: BasicBlocks (2, 2, 2, 2); 11.69M params at 1000 classes."""
    return _resnet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, cifar_stem, zero_init_residual)


@MODELS.register()
def resnet34(
    num_classes: int = 10, in_channels: int = 3, cifar_stem: bool = False, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-34: BasicBlocks (3, 4, 6, 3); 21.80M params at 1000 classes."""
    return _resnet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, cifar_stem, zero_init_residual)


@MODELS.register()
def resnet50(
    num_classes: int = 10, in_channels: int = 3, cifar_stem: bool = False, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50 (v1.5): Bottlenecks (3, 4, 6, 3); 25.56M params at 1000 classes."""
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, cifar_stem, zero_init_residual)
