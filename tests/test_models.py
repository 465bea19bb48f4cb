"""The model zoo: names, shapes, published sizes, fx tracing, small inputs and errors."""

from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from autotrainonce import models
from autotrainonce.errors import ConfigError, UnknownNameError

ALL = [
    "mobilenetv2",
    "mobilenetv2_cifar",
    "resnet110",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet50",
    "resnet56",
    "vgg16_bn",
]
IMAGENET = {"resnet18", "resnet34", "resnet50", "mobilenetv2"}
CIFAR_STYLE = [n for n in ALL if n not in IMAGENET]


def _input_size(name: str) -> int:
    # 64x64 keeps the ImageNet layouts cheap while still leaving a 2x2 map after stride 32.
    return 64 if name in IMAGENET else 32


def _build(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return models.create(name, **kw)


def test_list_models() -> None:
    assert models.list_models() == ALL
    assert models.list_models("resnet*") == [
        "resnet110",
        "resnet18",
        "resnet20",
        "resnet32",
        "resnet34",
        "resnet50",
        "resnet56",
    ]
    assert models.list_models("nothing*") == []
    assert "ResNet56" in models.MODELS


@pytest.mark.parametrize("name", ALL)
def test_output_shape_and_features_head(name: str) -> None:
    model = _build(name, num_classes=7).eval()
    s = _input_size(name)
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        assert torch.equal(model.forward_head(feats), out)
    assert out.shape == (2, 7)
    assert feats.dim() == 4 and feats.shape[0] == 2


@pytest.mark.parametrize(
    ("name", "num_classes", "expected", "rel"),
    [
        ("resnet20", 10, 0.27e6, 0.02),
        ("resnet32", 10, 0.46e6, 0.02),
        ("resnet56", 10, 0.85e6, 0.01),
        ("resnet110", 10, 1.7e6, 0.02),
        ("resnet18", 1000, 11.69e6, 0.005),
        ("resnet34", 1000, 21.80e6, 0.005),
        ("resnet50", 1000, 25.56e6, 0.005),
        ("mobilenetv2", 1000, 3.50e6, 0.01),
        ("mobilenetv2_cifar", 10, 2.24e6, 0.01),
        ("vgg16_bn", 10, 14.7e6, 0.01),
    ],
)
def test_published_param_counts(name: str, num_classes: int, expected: float, rel: float) -> None:
    n = models.count_params(models.create(name, num_classes=num_classes))
    assert n == pytest.approx(expected, rel=rel)


def test_exact_param_counts() -> None:
    # The exact figures of the reference implementations (ResNet-18/50, MobileNetV2 at 1000 classes).
    assert models.count_params(models.create("resnet18", num_classes=1000)) == 11_689_512
    assert models.count_params(models.create("resnet50", num_classes=1000)) == 25_557_032
    assert models.count_params(models.create("mobilenetv2", num_classes=1000)) == 3_504_872
    assert models.count_params(models.create("resnet56")) == 853_018


def _macs(model: nn.Module, size: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    return counter.get_total_flops() // 2


def test_resnet56_macs() -> None:
    macs = _macs(models.create("resnet56"), 32)
    assert macs == pytest.approx(125.75e6, rel=0.005)
    # Shortcut B adds exactly the two 1x1 projections: 16->32 at 16x16 and 32->64 at 8x8.
    macs_b = _macs(models.create("resnet56", shortcut="B"), 32)
    assert macs_b - macs == 16 * 32 * 16 * 16 + 32 * 64 * 8 * 8


@pytest.mark.parametrize("name", ALL)
def test_fx_trace_matches(name: str) -> None:
    model = _build(name).eval()
    traced = torch.fx.symbolic_trace(model)
    s = _input_size(name)
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    # The graph calls every torch.nn layer: none hides behind Python control flow. fx traces through our own
    # modules, so a PadShortcut shows up as a slice and an F.pad call instead.
    called = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    layers = {n for n, m in model.named_modules() if type(m).__module__.startswith("torch.nn.modules")}
    layers -= {n for n, m in model.named_modules() if isinstance(m, nn.Sequential)}
    assert sorted(called) == sorted(layers)  # each layer exactly once: hooks see one call per forward
    pads = [n for n in traced.graph.nodes if n.target is torch.nn.functional.pad]
    assert len(pads) == sum(isinstance(m, models.PadShortcut) for m in model.modules())


@pytest.mark.parametrize("name", [*CIFAR_STYLE, "resnet18"])
@pytest.mark.parametrize("size", [28, 8])
def test_grayscale_small_inputs(name: str, size: int) -> None:
    kw = {"cifar_stem": True} if name == "resnet18" else {}
    model = _build(name, num_classes=10, in_channels=1, **kw)
    model.train()  # batch statistics over 2 samples must also work on the smallest maps
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_cifar_resnet_layout() -> None:
    model = models.create("resnet20")
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert isinstance(model.layer2[0].downsample, models.PadShortcut)
    assert model.layer1[0].downsample is None
    padded = model.layer2[0].downsample(torch.ones(1, 16, 8, 8))
    assert padded.shape == (1, 32, 4, 4)
    assert padded[:, 8:24].eq(1).all() and padded[:, :8].eq(0).all() and padded[:, 24:].eq(0).all()
    b = models.create("resnet20", shortcut="b")
    assert isinstance(b.layer2[0].downsample, nn.Sequential)
    assert models.count_params(b) > models.count_params(model)


def test_imagenet_resnet_layout() -> None:
    model = models.create("resnet50")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)  # v1.5
    assert model.fc.in_features == 2048
    cifar = models.create("resnet18", cifar_stem=True)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and cifar.maxpool is None
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenetv2_variants() -> None:
    imagenet, cifar = models.create("mobilenetv2"), models.create("mobilenetv2_cifar")
    assert imagenet.features[0].conv.stride == (2, 2) and cifar.features[0].conv.stride == (1, 1)
    with torch.no_grad():
        assert imagenet.eval().forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 1
        assert cifar.eval().forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4
    assert isinstance(cifar.classifier[0], nn.Dropout) and cifar.classifier[1].in_features == 1280
    residuals = [m.use_residual for m in cifar.modules() if isinstance(m, models.InvertedResidual)]
    assert len(residuals) == 17 and sum(residuals) == 10
    slim = models.create("mobilenetv2_cifar", width_mult=0.5)
    assert slim.features[0].conv.out_channels == 16 and slim.classifier[1].in_features == 1280
    assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg16_bn_layout() -> None:
    model = models.create("vgg16_bn")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512


def test_weight_init_and_determinism() -> None:
    a, b = _build("resnet20"), _build("resnet20")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert a.bn1.weight.eq(1).all() and a.bn1.bias.eq(0).all()
    assert a.fc.bias.eq(0).all() and a.fc.weight.std().item() == pytest.approx(0.01, rel=0.3)
    # Kaiming fan_out: std = sqrt(2 / (out_channels * k * k)).
    w = _build("resnet56").layer3[1].conv1.weight
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


def test_zero_init_residual() -> None:
    model = models.create("resnet50", zero_init_residual=True)
    assert model.layer1[0].bn3.weight.eq(0).all() and model.layer1[0].bn1.weight.eq(1).all()
    cifar = models.create("resnet20", zero_init_residual=True)
    assert cifar.layer3[2].bn2.weight.eq(0).all()
    assert models.create("resnet18").layer1[0].bn2.weight.eq(1).all()


def test_count_params() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert models.count_params(model) == 3 * 4 + 4 + 4 * 2 + 2
    model[0].requires_grad_(False)
    assert models.count_params(model, trainable_only=True) == 4 * 2 + 2


def test_unknown_name() -> None:
    with pytest.raises(UnknownNameError) as info:
        models.create("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message and "resnet56" in message and "vgg16_bn" in message
    assert isinstance(info.value, KeyError)


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="shortcut"):
        models.create("resnet20", shortcut="C")
    with pytest.raises(ConfigError, match="widht_mult"):
        models.create("mobilenetv2", widht_mult=0.5)
    with pytest.raises(ConfigError, match="num_classes"):
        models.create("resnet20", num_classes=0)
    with pytest.raises(ConfigError, match="in_channels"):
        models.create("vgg16_bn", in_channels=0)
    # None means "the default", as in Registry.create.
    assert models.create("resnet20", num_classes=None, shortcut=None).fc.out_features == 10
