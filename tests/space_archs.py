"""Small test architectures for the pruning space, each exercising one structural pattern.

Every entry of :data:`ARCHS` builds ``(model, example_input)``. Widths and inputs are tiny so that a full
discover/mask/prune/compare round trip takes milliseconds. Models use only ``torch.nn`` classes and classes
defined in this file, so a pickled compact model loads with nothing but torch and this module.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "ARCHS",
    "UNKNOWN_OP_ARCHS",
    "ZOO_INPUT",
    "build",
    "build_zoo",
    "calibrate_bn",
    "macs",
    "n_params",
    "random_masks",
    "state_snapshot",
    "assert_state_equal",
    "hook_count",
    "fast_cpu",
    "outputs",
    "train_mode_copy",
]


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class DenseBlockNet(nn.Module):
    """DenseNet-style: every layer reads the concat of all earlier feature maps."""

    def __init__(self, growth: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.stem = _cbr(3, 6)
        self.layers = nn.ModuleList(_cbr(6 + i * growth, growth) for i in range(layers))
        self.transition = _cbr(6 + layers * growth, 8, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        x = self.transition(torch.cat(feats, dim=1))
        return self.fc(torch.flatten(self.pool(x), 1))


class InceptionNet(nn.Module):
    """Inception-style: four parallel branches concatenated along channels, then a residual-free head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.b1 = _cbr(8, 4, k=1)
        self.b3 = nn.Sequential(_cbr(8, 3, k=1), _cbr(3, 5))
        self.b5 = nn.Sequential(_cbr(8, 2, k=1), _cbr(2, 3, k=5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cbr(8, 4, k=1))
        self.head = _cbr(16, 8, k=1)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)
        return self.fc(self.pool(self.head(x)).flatten(1))


class ResNeXtBlockNet(nn.Module):
    """ResNeXt bottleneck: 1x1 reduce, 3x3 grouped conv (cardinality 4), 1x1 expand, identity shortcut."""

    def __init__(self, width: int = 16, inner: int = 8, cardinality: int = 4) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.reduce = _cbr(width, inner, k=1)
        self.grouped = _cbr(inner, inner, groups=cardinality)
        self.expand = nn.Sequential(nn.Conv2d(inner, width, 1, bias=False), nn.BatchNorm2d(width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = F.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(self.pool(x).flatten(1))


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE: global pool, reduce, ReLU, expand, hardsigmoid, broadcast multiply."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class MobileNetV3BlockNet(nn.Module):
    """MobileNetV3 block: expand, hardswish, depthwise, SE, project, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.se = SqueezeExcite(16, 4)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Conv2d(8, 12, 1), nn.Hardswish())
        self.fc = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = F.hardswish(self.dw(self.expand(x)))
        x = x + self.project(self.se(y))
        return self.fc(self.head(x).mean((2, 3)))


class TinyUNet(nn.Module):
    """Two-level UNet: down path, bottleneck, ConvTranspose2d up path with skip concat, 1x1 output conv."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = _cbr(3, 6)
        self.enc2 = _cbr(6, 8)
        self.down = nn.MaxPool2d(2)
        self.mid = _cbr(8, 10)
        self.up2 = nn.ConvTranspose2d(10, 8, 2, stride=2)
        self.dec2 = _cbr(16, 8)
        self.up1 = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.dec1 = _cbr(12, 6)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.down(e1))
        m = self.mid(self.down(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([e1, self.up1(d2)], 1))
        return self.out(d1)


class LayerNormMLP(nn.Module):
    """MLP with LayerNorm on the input features and on the second hidden layer; BatchNorm1d on the third."""

    def __init__(self) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(12)
        self.fc1 = nn.Linear(12, 16)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(16, 10)
        self.norm_hidden = nn.LayerNorm(10)
        self.fc3 = nn.Linear(10, 14)
        self.bn3 = nn.BatchNorm1d(14)
        self.drop = nn.Dropout(0.1)
        self.fc4 = nn.Linear(14, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.fc1(self.norm_in(x)))
        x = self.norm_hidden(self.fc2(x))
        return self.fc4(self.drop(torch.tanh(self.bn3(self.fc3(x)))))


class Conv1dResNet(nn.Module):
    """1-d residual network over sequences (N, C, L) with BatchNorm1d, a subtracting residual and a 1x1
    projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU())
        self.c1 = nn.Sequential(nn.Conv1d(8, 6, 3, padding=1, bias=False), nn.BatchNorm1d(6), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv1d(6, 8, 3, padding=1, bias=False), nn.BatchNorm1d(8))
        self.c3 = nn.Sequential(nn.Conv1d(8, 10, 3, 2, padding=1, bias=False), nn.BatchNorm1d(10), nn.ReLU())
        self.c4 = nn.Sequential(nn.Conv1d(10, 12, 3, padding=1, bias=False), nn.BatchNorm1d(12))
        self.short = nn.Sequential(nn.Conv1d(8, 12, 1, 2, bias=False), nn.BatchNorm1d(12))
        self.fc = nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = F.relu(x - self.c2(self.c1(x)))
        x = F.relu(self.short(x) + self.c4(self.c3(x)))
        return self.fc(F.adaptive_avg_pool1d(x, 1).squeeze(-1))


class VGGFlatten(nn.Module):
    """VGG-style: conv stack, no global pool, flatten C x H x W straight into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _cbr(3, 8), nn.MaxPool2d(2), _cbr(8, 12), nn.MaxPool2d(2), _cbr(12, 6), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(nn.Linear(6 * 2 * 2, 20), nn.ReLU(), nn.Dropout(), nn.Linear(20, 5))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).view(x.size(0), -1))


class MHABlock(nn.Module):
    """Pre-norm transformer block with nn.MultiheadAttention and a GELU MLP, on token inputs (N, L, E)."""

    def __init__(self, dim: int = 16, heads: int = 4, hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class PlainAttentionBlock(nn.Module):
    """Single-head attention written by hand: softmax(q @ k^T / sqrt(d)) @ v, LayerNorm, MLP."""

    def __init__(self, dim: int = 12, qk: int = 8, hidden: int = 20) -> None:
        super().__init__()
        self.embed = nn.Linear(5, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, qk)
        self.k = nn.Linear(dim, qk)
        self.v = nn.Linear(dim, 10)
        self.proj = nn.Linear(10, dim)
        self.scale = qk**-0.5
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        h = self.norm1(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(-2, -1) * self.scale, dim=-1)
        x = x + self.proj(att @ self.v(h))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x[:, 0])


class GroupNormNet(nn.Module):
    """Convs with GroupNorm (4 channels per norm group) and a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.n1 = nn.GroupNorm(2, 8)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.n2 = nn.GroupNorm(3, 12)
        self.c3 = nn.Conv2d(12, 8, 1)
        self.n3 = nn.GroupNorm(4, 8, affine=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.silu(self.n1(self.c1(x)))
        y = F.silu(self.n2(self.c2(x)))
        x = x + self.n3(self.c3(y))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class GLUNet(nn.Module):
    """Gated blocks: ``a, b = conv(x).chunk(2, 1); a * sigmoid(b)`` and a ``split`` by half the width."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.c3 = nn.Conv2d(6, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.c1(x).chunk(2, dim=1)
        x = a * torch.sigmoid(b)
        y = self.c2(x)
        a, b = torch.split(y, y.size(1) // 2, dim=1)
        x = a * torch.sigmoid(b)
        x = F.relu(self.c3(x))
        return self.fc(x.mean(dim=(2, 3)))


class DepthwiseMultiplierNet(nn.Module):
    """Depthwise conv with channel multiplier 2 (groups = in_channels, out = 2 * in)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = _cbr(3, 6)
        self.dw = nn.Sequential(nn.Conv2d(6, 12, 3, padding=1, groups=6, bias=True), nn.BatchNorm2d(12), nn.ReLU6())
        self.pw = _cbr(12, 8, k=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pw(self.dw(self.c1(x))).mean((2, 3)))


class CumsumNet(nn.Module):
    """An op the space has no rule for (cumsum along channels) in the middle of a conv stack."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = _cbr(3, 6)
        self.block = CumsumBlock()
        self.c3 = _cbr(6, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.c3(self.block(self.c1(x))).mean((2, 3)))


class CumsumBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _cbr(6, 6)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cumsum(self.conv(x), dim=1)


class SquareFunction(torch.autograd.Function):
    """A custom autograd function the tracer cannot look into."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 2 * x * g


class CustomFunctionNet(nn.Module):
    """A custom torch.autograd.Function applied between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = _cbr(3, 6)
        self.c2 = _cbr(6, 8)
        self.c3 = _cbr(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.c2(SquareFunction.apply(self.c1(x)))
        return self.fc(self.c3(x).mean((2, 3)))


class ConvNeXtBlockNet(nn.Module):
    """ConvNeXt block: depthwise 7x7, channels-last LayerNorm, Linear MLP, learned layer scale, residual."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim))
        self.head = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean([-2, -1]))


class EdgeOpsNet(nn.Module):
    """Less common channel-wise ops: InstanceNorm, per-channel PReLU, resizing, cropping, where, layer scale
    as a buffer, transpose to channels-last Linear and back, and a dict of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(6, affine=True)
        self.act = nn.PReLU(6)
        self.up = nn.Upsample(scale_factor=2)
        self.c2 = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 5).view(1, 5, 1, 1))
        self.mix = nn.Linear(5, 7)
        self.c3 = nn.Conv2d(7, 4, 1)
        self.aux = nn.Linear(4, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.act(self.inorm(self.c1(x)))
        x = F.interpolate(self.up(x), scale_factor=0.5)[:, :, 1:-1, 1:-1]
        x = self.c2(x) * self.scale
        x = torch.where(x > 0, x, 0.1 * x)
        x = self.mix(x.transpose(1, 3)).transpose(1, 3)
        x = F.relu(self.c3(x)).flatten(2).amax(-1)
        return {"main": self.head(x), "aux": self.aux(x)}


class Conv3dNet(nn.Module):
    """Volumetric convs with BatchNorm3d, a 1-d transposed conv over depth, pooled into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv3d(2, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv3d(6, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm3d(8), nn.ELU())
        self.t1 = nn.ConvTranspose1d(8, 5, 2, stride=2)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.c2(self.c1(x)).mean((3, 4))  # (N, C, D)
        return self.fc(F.adaptive_max_pool1d(self.t1(x), 1).squeeze(2))


def _img(n: int = 16) -> Callable[[], Tensor]:
    return lambda: torch.randn(2, 3, n, n)


# name -> (constructor, example input factory)
ARCHS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor]]] = {
    "densenet": (DenseBlockNet, _img()),
    "inception": (InceptionNet, _img()),
    "resnext": (ResNeXtBlockNet, _img()),
    "mobilenetv3_se": (MobileNetV3BlockNet, _img()),
    "unet": (TinyUNet, _img()),
    "layernorm_mlp": (LayerNormMLP, lambda: torch.randn(4, 12)),
    "conv1d_resnet": (Conv1dResNet, lambda: torch.randn(2, 2, 24)),
    "vgg_flatten": (VGGFlatten, _img()),
    "mha_block": (MHABlock, lambda: torch.randn(2, 5, 6)),
    "plain_attention": (PlainAttentionBlock, lambda: torch.randn(2, 7, 5)),
    "groupnorm": (GroupNormNet, _img()),
    "glu": (GLUNet, _img()),
    "depthwise_mult2": (DepthwiseMultiplierNet, _img()),
    "convnext": (ConvNeXtBlockNet, _img()),
    "edge_ops": (EdgeOpsNet, _img()),
    "conv3d": (Conv3dNet, lambda: torch.randn(2, 2, 6, 6, 6)),
}

# name -> (constructor, input factory, op label the warning must name, module path it must name)
UNKNOWN_OP_ARCHS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor], str, str]] = {
    "cumsum": (CumsumNet, _img(), "cumsum", "block"),
    "custom_function": (CustomFunctionNet, _img(), "SquareFunction", "<model>"),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    """The model ``name`` from ARCHS or UNKNOWN_OP_ARCHS with seeded weights and a seeded input."""
    torch.manual_seed(seed)
    entry = ARCHS.get(name) or UNKNOWN_OP_ARCHS[name][:2]
    ctor, make_input = entry[0], entry[1]
    model = ctor()
    # non-trivial BN statistics so eval-mode comparisons exercise running_mean/var slicing
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval(), make_input()


# -- helpers shared by the space tests -------------------------------------------------------------------------
# Smallest inputs that keep every zoo model's last feature map at least 1x1.
ZOO_INPUT = {"resnet18": 32, "resnet34": 32, "resnet50": 32, "mobilenetv2": 32}


def calibrate_bn(model: nn.Module, x: Tensor) -> nn.Module:
    """Set BatchNorm running statistics from one train-mode pass on ``x``, so eval activations stay O(1).

    Freshly built deep nets (ResNet-110) reach outputs near 1e8 with the default running stats, where float32
    leaves no room for a 1e-4 comparison.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass sets the statistics exactly
    model.train()
    # a batch of 16 keeps every channel's variance well away from zero even where the map is 1x1
    batch = torch.randn(16, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(batch)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


def build_zoo(name: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    """A zoo model (10 classes) with calibrated BN and a batch of 2 small inputs."""
    from autotrainonce import models

    torch.manual_seed(seed)
    model = models.create(name)
    size = ZOO_INPUT.get(name, 16)
    x = torch.randn(2, 3, size, size)
    return calibrate_bn(model, x), x


@contextlib.contextmanager
def fast_cpu() -> Iterator[None]:
    """One intra-op thread while a test runs: the tensors are tiny, and with xdist workers (or other jobs)
    sharing the cores, OpenMP threads spin-waiting on each other make small convs 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def macs(model: nn.Module, *inputs: Any) -> int:
    """Forward MACs as torch.utils.flop_counter counts them (FLOPs // 2), in eval mode without gradients."""
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    model.train(was)
    return counter.get_total_flops() // 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_masks(space: Any, seed: int, keep: float = 0.5) -> list[Tensor | None]:
    """One bool mask per prunable group (about ``keep`` of the channels), None elsewhere.

    At least one channel of every member tensor survives: a layer cannot shrink to zero width, and a group
    tied through chunk/split may hold channels that a given layer does not produce.
    """
    g = torch.Generator().manual_seed(seed)
    masks: list[Tensor | None] = []
    for group in space.groups:
        if not group.prunable:
            masks.append(None)
            continue
        m = torch.rand(group.size, generator=g) < keep
        for member in group.members:
            if not bool(m[member.channel].any()):
                m[member.channel[int(torch.randint(member.channel.numel(), (1,), generator=g))]] = True
        masks.append(m)
    return masks


def state_snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def assert_state_equal(model: nn.Module, snapshot: dict[str, Tensor]) -> None:
    """Bitwise: same keys, shapes, dtypes and values."""
    now = model.state_dict()
    assert now.keys() == snapshot.keys()
    for k, v in snapshot.items():
        assert now[k].shape == v.shape and now[k].dtype == v.dtype, k
        assert torch.equal(now[k], v), f"{k} changed"


def hook_count(model: nn.Module) -> int:
    """Forward and forward-pre hooks left on any submodule."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def outputs(model: nn.Module, inputs: Sequence[Any]) -> list[Tensor]:
    out = model(*inputs)
    if isinstance(out, dict):
        return [out[k] for k in sorted(out)]
    return list(out) if isinstance(out, (tuple, list)) else [out]


def train_mode_copy(model: nn.Module) -> nn.Module:
    """A deep copy in train mode with dropout off (its random masks differ in shape once pruned)."""
    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    return model
