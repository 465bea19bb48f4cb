"""VGG-16 with BatchNorm in its CIFAR form (Simonyan & Zisserman 2015, config D; BN as in most CIFAR work).

Decisions, for 32x32 inputs and smaller:

* Classifier: a single ``Linear(512, num_classes)`` -- the common CIFAR form, instead of ImageNet's three
  4096-wide layers (about 14.7M params in total at 10 classes).
* Max-pools use ``ceil_mode=True``: identical to the usual pools on 32x32 (every map has an even size), and
  it lets the five pools run on 28x28 (Fashion-MNIST: 28-14-7-4-2-1) and 8x8 (digits: 8-4-2-1-1) inputs, where
  plain pools would shrink a map to 0x0.
* ``AdaptiveAvgPool2d(1)`` before flatten: a no-op on the 1x1 map of a 32x32 input, and it keeps the classifier
  at 512 inputs for larger images.
* Convs have no bias (BN follows each one), so the count is 4,224 lower than VGG variants that keep it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ._common import MODELS, init_weights

__all__ = ["VGG", "vgg16_bn"]

# Output channels of each 3x3 conv; "M" is a 2x2/2 max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG with ``features`` (conv3x3 + BN + ReLU blocks and max-pools), ``avgpool`` and ``classifier``."""

    def __init__(self, config: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                out = int(item)
                # No conv bias: BN subtracts the batch mean right after, which would cancel it.
                layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                width = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """``features``: the last feature map, shape (N, 512, H', W') (1x1 for 32x32 inputs)."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Global average pool, flatten and ``classifier``: logits of shape (N, num_classes)."""
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _vgg(config: tuple[int | str, ...], num_classes: int, in_channels: int) -> VGG:
    return VGG(config, num_classes, in_channels)


@MODELS.register()
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16 with BN, CIFAR form (13 convs, one linear layer); 14.7M params at 10 classes."""
    return _vgg(_VGG16, num_classes, in_channels)
