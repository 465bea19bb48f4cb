"""The data of a pruning space: channel groups and their members.

A *channel group* is a set of channels that must be kept or removed together, e.g. the output channels of a conv,
the matching BatchNorm entries and the input slices of every layer that reads them; a residual add merges the
channels of all its operands into one group. A group has ``size`` logical channels; each *member* says where
those channels live in one tensor of the model (a parameter, a buffer) or in one activation (a gate point).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Member", "GatePoint", "ChannelGroup"]


@dataclass(frozen=True, eq=False)
class Member:
    """Where a group's channels live inside one parameter or buffer.

    ``index[k]`` is a position along ``dim`` of ``module.<name>`` and ``channel[k]`` the group's logical channel
    (0 .. size-1) stored there. Several positions may hold the same logical channel (grouped convs tie channels
    across conv groups; a flatten gives each channel H*W features of a Linear).
    """

    module: str  # dotted path of the owning module in the model ("" is the model itself)
    name: str  # attribute name on that module, e.g. "weight", "running_mean"
    kind: str  # "param" or "buffer"
    dim: int  # the dimension that is cut
    index: torch.Tensor  # LongTensor of positions along `dim`
    channel: torch.Tensor  # LongTensor, same length: logical channel of each position
    role: str = ""  # "out" (producer), "in" (consumer input slice), "channelwise" (BN, depthwise, SE scale...)

    def describe(self) -> str:
        where = f"{self.module}.{self.name}" if self.module else self.name
        return f"{where}[dim {self.dim}, {self.index.numel()} positions, {self.role or self.kind}]"


@dataclass(frozen=True, eq=False)
class GatePoint:
    """An input of a consumer module where a gate multiplies the group's channels.

    The gate scales positions ``index`` along ``dim`` of the module's first positional input by the group's
    mask at ``channel``. Gating every consumer's input is what makes a masked model compute exactly what the
    physically pruned one computes.
    """

    module: str
    dim: int
    index: torch.Tensor
    channel: torch.Tensor


@dataclass(eq=False)
class ChannelGroup:
    """A set of channels that are kept or removed together.

    Attributes:
        name: readable name, the producing module(s), e.g. ``"layer1.0.conv1"``.
        size: number of logical channels (the length of this group's mask).
        prunable: False when removing any of these channels could change what the network computes (network
            inputs/outputs, an op the tracer does not understand, ...); ``reason`` then says why.
        members: every parameter/buffer slice that holds these channels.
        gates: every consumer input that reads these channels.
    """

    name: str
    size: int
    prunable: bool = True
    reason: str = ""
    members: list[Member] = field(default_factory=list)
    gates: list[GatePoint] = field(default_factory=list)

    def param_members(self) -> list[Member]:
        """Members that are trainable parameters (what the proximal step shrinks)."""
        return [m for m in self.members if m.kind == "param"]

    def describe(self) -> str:
        """A multi-line, human-readable dump of the group."""
        head = f"group {self.name!r}: {self.size} channels, " + (
            "prunable" if self.prunable else f"not prunable ({self.reason})"
        )
        lines = [head] + ["  " + m.describe() for m in self.members]
        lines += [f"  gate at input of {g.module or '<model>'} (dim {g.dim})" for g in self.gates]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ChannelGroup(name={self.name!r}, size={self.size}, prunable={self.prunable})"
