"""Pieces shared by every model family: the registry, weight init, parameter counting, a conv block."""

from __future__ import annotations

import torch.nn as nn

from ..registry import Registry

__all__ = ["MODELS", "ConvBNAct", "count_params", "init_weights"]

#: Every model of the zoo, by lower-case name. Entry functions take ``num_classes`` and ``in_channels``.
MODELS: Registry[nn.Module] = Registry("model")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared tensors counted once), optionally only those requiring grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def init_weights(model: nn.Module) -> None:
    """Initialise ``model`` in place the same way for every family of the zoo.

    Convs: Kaiming normal (fan_out, relu), bias 0. BatchNorm: weight 1, bias 0.
    Linear: normal(0, 0.01), bias 0 -- small logits at the start, as in the MobileNetV2/VGG references.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvBNAct(nn.Sequential):
    """``Conv2d`` (no bias, "same" padding) -> ``BatchNorm2d`` -> optional activation.

    Children are named ``conv``, ``bn`` and ``act`` so module paths read well (``features.3.dwconv.bn``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        if act is not None:
            # Never in place: pruning code hooks BN outputs, which an in-place activation would overwrite.
            self.act = act()
