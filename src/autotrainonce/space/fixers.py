"""Attribute fixers: bring a module's attributes in line with its tensors after surgery sliced them.

A fixer has the signature ``fix(module, space, path, masks)`` and is registered with its module class through
:func:`autotrainonce.space.register_op` (``fix_attributes=``). It runs after every member tensor of the module
was cut, so most fixers just read the new tensor shapes; norms without a weight read the kept input width
from the space. The built-in fixers are public so that a subclass of a torch layer can reuse them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from .pruning_space import PruningSpace

__all__ = ["fix_channel_norm", "fix_conv", "fix_group_norm", "fix_linear", "fix_prelu", "kept_inputs"]


def kept_inputs(space: PruningSpace, path: str, masks: list, default: int) -> int:
    """How many input channels of module ``path`` the masks keep (``default`` when the space did not track them)."""
    pd = space.activations.get((path, "in"))
    return int(pd.kept(masks, soft=False)) if pd is not None else default


def fix_conv(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    """Conv/ConvTranspose 1-3d: ``in_channels``, ``out_channels`` (and ``groups`` of a depthwise conv)."""
    assert isinstance(m, nn.modules.conv._ConvNd)
    w = m.weight
    if m.transposed:
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        return
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise: groups follow the channels
        mult = m.out_channels // m.in_channels
        m.out_channels = w.shape[0]
        m.in_channels = m.groups = m.out_channels // mult
    else:
        m.out_channels = w.shape[0]
        m.in_channels = w.shape[1] * m.groups


def fix_linear(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    """Linear: ``in_features``, ``out_features``."""
    m.out_features, m.in_features = m.weight.shape


def fix_channel_norm(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    """BatchNorm/InstanceNorm: ``num_features`` (from the space: an InstanceNorm may have no tensors)."""
    m.num_features = kept_inputs(space, path, masks, m.num_features)


def fix_group_norm(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    """GroupNorm: ``num_channels`` and ``num_groups`` (whole norm groups are removed)."""
    per_group = m.num_channels // m.num_groups
    m.num_channels = kept_inputs(space, path, masks, m.num_channels)
    m.num_groups = m.num_channels // per_group


def fix_prelu(m: nn.Module, space: PruningSpace, path: str, masks: list) -> None:
    """PReLU: ``num_parameters``."""
    m.num_parameters = m.weight.numel()
