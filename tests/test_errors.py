"""The error matrix: every kind of bad input gets a clear error, in the library and at the CLI.

One test per row of docs/troubleshooting.md. Library calls must raise the documented exception type; the CLI
must exit with status 2, print one ``error:`` line (no traceback) that says what is wrong and what to do.
"""

from __future__ import annotations

import errno
import gzip
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autotrainonce import cli, discover, export, models
from autotrainonce.ato import AutoTrainOnce, Flops, Params
from autotrainonce.config import config_from_dict, load_config, merge_overrides
from autotrainonce.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DiskFullError,
    ExampleInputError,
    TargetError,
    TraceError,
    TrainingDivergedError,
    UserError,
)
from autotrainonce.training import atomic_save, load_checkpoint
from autotrainonce.training.optim import ClassificationLoss

# ----------------------------------------------------------------------------------------------- test models


class Tiny(nn.Module):
    """Two conv-BN-ReLU layers and a classifier: small enough for a CLI run in a second."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.c2, self.b2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class LinearOnly(nn.Module):
    """Flatten + one linear layer: its only channels are the network's input and output (none prunable)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, side: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Fixed3x16(nn.Module):
    """An MLP hard-wired to 3x16x16 inputs, whatever it is asked for."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3 * 16 * 16, 16), nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class Square(torch.autograd.Function):
    """A custom autograd Function: the tracer keeps it as one opaque node without a rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 2 * x * g


class OpaqueOpTwice(nn.Module):
    """The opaque op is applied twice, yet discovery must warn about it only once."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = Square.apply(F.relu(self.b1(self.c1(x))))
        x = Square.apply(x)
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(F.relu(self.c3(x)).mean((2, 3)))


@pytest.fixture
def zoo(monkeypatch):
    """Register the test models under errtest_* for the duration of a test."""
    for name, builder in {
        "errtest_tiny": Tiny, "errtest_linear": LinearOnly, "errtest_fixed": Fixed3x16,
        "errtest_opaque": OpaqueOpTwice,
    }.items():  # fmt: skip
        monkeypatch.setitem(models.MODELS._builders, name, builder)


# ----------------------------------------------------------------------------------------------- CLI helpers


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> str:
    """Exit 2, a single ``error:`` line, no traceback, and every needle (what is wrong / what to do) in it."""
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and 'File "' not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def digits_run(out: Path, *extra: str, model: str = "errtest_tiny", name: str = "r") -> list[str]:
    """Argument list of a tiny CLI training run on digits (2 steps per epoch)."""
    return ["train", "--model", model, "--data", "digits", "--epochs", "1", "--batch-size", "16",
            "--train-subset", "64", "--max-steps-per-epoch", "2", "--workers", "0", "--device", "cpu",
            "--out-dir", str(out), "--name", name, *extra]  # fmt: skip


@pytest.fixture
def trained(zoo, tmp_path, capsys) -> Path:
    """The last.pt of a finished one-epoch run of errtest_tiny on digits."""
    code, _, err = run_cli(capsys, *digits_run(tmp_path / "runs"))
    assert code == 0, err
    return tmp_path / "runs" / "r" / "last.pt"


# ============================================================================ row 1: target outside (0, 1)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, float("nan"), float("inf"), True, "0.5"])
def test_row_target_outside_open_interval(bad):
    for kind in (Flops, Params):
        with pytest.raises(TargetError, match=r"strictly between 0 and 1"):
            kind(remove=bad)


def test_row_target_outside_open_interval_cli(capsys, tmp_path):
    for flag in ("--remove-flops", "--remove-params"):
        code, _, err = run_cli(capsys, *digits_run(tmp_path, "--prune", "ato", flag, "1.5"))
        assert_user_error(code, err, "prune.remove_", "must be in (0, 1)", "1.5")


# ================================================================================ row 2: unreachable target


def test_row_unreachable_target():
    model = Tiny(in_channels=1)
    with pytest.raises(TargetError, match=r"cannot reach .*ask for less than remove=0\.\d+"):
        AutoTrainOnce(model, torch.zeros(1, 1, 8, 8), Flops(remove=0.999), total_steps=10)
    with pytest.raises(TargetError, match="ask for less than"):
        AutoTrainOnce(model, torch.zeros(1, 1, 8, 8), Params(remove=0.999), total_steps=10)


def test_row_unreachable_target_cli(zoo, capsys, tmp_path):
    code, _, err = run_cli(capsys, *digits_run(tmp_path, "--prune", "ato", "--remove-flops", "0.999"))
    assert_user_error(code, err, "cannot reach Flops(remove=0.999)", "ask for less than remove=")


# ================================================================================ row 3: nothing prunable


def test_row_no_prunable_channels():
    model = LinearOnly(in_channels=1)
    space = discover(model, torch.zeros(1, 1, 8, 8))
    assert not any(g.prunable for g in space.groups)
    with pytest.raises(TargetError, match="no prunable channel groups.*nothing can be removed"):
        AutoTrainOnce(model, torch.zeros(1, 1, 8, 8), Flops(remove=0.3), total_steps=10)


def test_row_no_prunable_channels_cli(zoo, capsys, tmp_path):
    code, _, err = run_cli(
        capsys, *digits_run(tmp_path, "--prune", "ato", "--remove-flops", "0.3", model="errtest_linear")
    )
    assert_user_error(
        code, err, "no prunable channel groups", "network output", "without pruning", "ato info"
    )


# ================================================================================ row 4: example input


@pytest.mark.parametrize(
    ("make_input", "needle"),
    [
        (lambda: torch.zeros(1, 1, 32, 32), "expected input[1, 1, 32, 32] to have 3 channels"),  # shape
        (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.long), "integer inputs?"),  # dtype
        (lambda: torch.zeros(3, 32, 32), "missing batch dimension?"),  # no batch dim
        (lambda: (torch.zeros(1, 3, 32, 32), torch.zeros(1)), "takes 1 input(s) but example_inputs holds 2"),
        (lambda: "3x32x32", "must be a tensor or a tuple"),
    ],
    ids=["shape", "dtype", "no-batch-dim", "too-many", "not-a-tensor"],
)
def test_row_example_input_wrong_shape_or_dtype(make_input, needle):
    model = models.create("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(ExampleInputError) as info:
        discover(model, make_input())
    assert needle in str(info.value)
    # a user error (the CLI exits 2) and still a TraceError for code written against the old behaviour
    assert isinstance(info.value, UserError) and isinstance(info.value, TraceError)
    with pytest.raises(ExampleInputError):  # the pruner discovers the space the same way
        AutoTrainOnce(model, make_input(), Flops(remove=0.3), total_steps=10)


def test_row_example_input_untraceable_model_with_wrong_input():
    """The fallback for untraceable models runs the model too: a bad input is named, not a RuntimeError."""

    class Branchy(Tiny):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.b1(self.c1(x)))
            if x.sum() > 0:  # data-dependent: fx cannot trace it
                x = F.relu(self.b2(self.c2(x)))
            return self.fc(x.mean((2, 3)))

    with pytest.raises(ExampleInputError, match="cannot run on example_inputs"):
        discover(Branchy(in_channels=3), torch.zeros(1, 1, 8, 8))


def test_row_example_input_mismatch_cli_info(zoo, capsys):
    code, _, err = run_cli(capsys, "info", "--model", "errtest_fixed", "--input", "3x32x32")
    assert_user_error(code, err, "cannot run on a 3x32x32 input", "--input CxHxW")
    code, out, _ = run_cli(capsys, "info", "--model", "errtest_fixed", "--input", "3x16x16")
    assert code == 0 and "MACs:" in out


def test_row_example_input_mismatch_cli_train(zoo, capsys, tmp_path):
    code, _, err = run_cli(capsys, *digits_run(tmp_path, model="errtest_fixed"))
    assert_user_error(code, err, "cannot run on")


# ================================================================================ row 5: unsupported op


def _ours(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "not supported by the pruning space" in str(w.message)]


def test_row_unsupported_op_warns_once_and_keeps_channels():
    torch.manual_seed(0)
    model, x, y = OpaqueOpTwice(), torch.randn(8, 1, 8, 8), torch.arange(8) % 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space = discover(model, x[:1])
    assert len(_ours(caught)) == 1  # the op is used twice, the warning comes once
    message = _ours(caught)[0]
    assert "Square" in message and "kept (not prunable)" in message and "register_op_rule" in message
    assert any(not g.prunable and "unsupported op" in g.reason for g in space.groups)
    assert any(g.prunable for g in space.groups)  # the rest of the network is still prunable

    # the whole ATO life cycle (discovery, controller and proximal steps, freeze, cut, export): one warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = AutoTrainOnce(model, x[:1], Flops(remove=0.2), holdout=[(x, y)], total_steps=12,
                               controller_start=1, hyper_step=1, proximal_start=3, lambda_switch=6,
                               freeze_at=8, mask_interval=2)  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        dense = sum(p.numel() for p in model.parameters())
        for _ in range(12):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            pruner.step(opt)
        compact = pruner.export()
    assert len(_ours(caught)) == 1, _ours(caught)
    assert compact is model  # cut in place at the freeze
    assert sum(p.numel() for p in compact.parameters()) < dense


def test_row_unsupported_op_warns_once_per_discovery():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        discover(OpaqueOpTwice(), torch.zeros(1, 1, 8, 8))
    assert len(_ours(caught)) == 1


def test_row_untraceable_model_warns_once():
    class Branchy(Tiny):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.b1(self.c1(x)))
            if x.sum() > 0:
                x = F.relu(self.b2(self.c2(x)))
            return self.fc(x.mean((2, 3)))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space = discover(Branchy(), torch.randn(1, 3, 8, 8))
    fallback = [w for w in caught if "Falling back" in str(w.message)]
    assert len(fallback) == 1 and "could not trace" in str(fallback[0].message)
    assert space.flops() > 0


def test_row_unsupported_op_cli_info_warns_once(zoo, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # show every warning raised, so a duplicate would be counted
        code, out, err = run_cli(capsys, "info", "--model", "errtest_opaque", "--input", "1x8x8")
    assert code == 0, err
    shown = [ln for ln in out.splitlines() if "not supported by the pruning space" in ln]
    assert len(shown) == 1 and shown[0].startswith("warning: autotrainonce: op Square.apply"), out
    assert "discover.py" not in out  # one plain line, not Python's file/line/source display
    assert "unsupported op" in out  # the groups table gives the reason


# ================================================================================ row 6: dataset missing


@pytest.mark.parametrize(
    ("dataset", "needles"),
    [
        ("fashion-mnist", ("not found", "apt-get install dataset-fashion-mnist", "ATO_DATA_ROOT")),
        ("cifar10", ("not found", "cifar-10-python.tar.gz", "--data-root")),
        ("cifar100", ("not found", "cifar-100-python.tar.gz", "--data-root")),
        ("imagefolder", ("not found", "--data-root", "train/")),
    ],
)
def test_row_dataset_path_missing(zoo, capsys, tmp_path, monkeypatch, dataset, needles):
    monkeypatch.delenv("ATO_DATA_ROOT", raising=False)
    missing = tmp_path / "no-such-folder"
    from autotrainonce import data

    with pytest.raises(DatasetError):
        data.create(dataset, "train", root=missing)
    code, _, err = run_cli(
        capsys, "train", "--model", "errtest_tiny", "--data", dataset, "--data-root", missing,
        "--out-dir", tmp_path / "runs", "--workers", "0",
    )  # fmt: skip
    assert_user_error(code, err, str(missing), *needles)


# ================================================================================ row 7: dataset corrupt


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_fmnist(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    broken = folder / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated download / disk error
    return broken


def _write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8), b"labels": list(range(8))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    broken = folder / "data_batch_3"
    broken.write_bytes(broken.read_bytes()[:1000])
    return broken


def _write_imagefolder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    broken = root / "train" / "b" / "3.png"
    broken.write_bytes(broken.read_bytes()[:40])  # the header survives, the pixels do not
    return broken


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10", "imagefolder"])
def test_row_dataset_corrupt(zoo, capsys, tmp_path, monkeypatch, dataset):
    root = tmp_path / "data"
    if dataset == "fashion-mnist":
        broken, needles = _write_fmnist(root), ("corrupt", "--reinstall dataset-fashion-mnist")
        monkeypatch.setenv("ATO_DATA_ROOT", str(root))  # the documented way to point at the IDX files
        flags: tuple[str, ...] = ()
    elif dataset == "cifar10":
        broken, needles = _write_cifar10(root), ("corrupt", "cifar-10-python.tar.gz")
        flags = ("--data-root", str(root))
    else:
        broken, needles = _write_imagefolder(root), ("corrupt", "remove or replace it", "DataLoader worker")
        flags = ("--data-root", str(root), "--workers", "2")  # the image is decoded in a worker process
    if "--workers" not in flags:
        flags = (*flags, "--workers", "0")
    code, _, err = run_cli(
        capsys, "train", "--model", "errtest_tiny", "--data", dataset, *flags, "--epochs", "1",
        "--batch-size", "4", "--out-dir", tmp_path / "runs",
    )  # fmt: skip
    assert_user_error(code, err, str(broken), *needles)


# ================================================================================ row 8: foreign checkpoint


def test_row_checkpoint_of_another_model(trained, capsys, tmp_path):
    # resume: another model name, then the same name with other widths
    code, _, err = run_cli(capsys, *digits_run(tmp_path / "o", "--resume", trained, model="errtest_linear"))
    assert_user_error(code, err, str(trained), "errtest_tiny", "not 'errtest_linear'")
    code, _, err = run_cli(
        capsys, *digits_run(tmp_path / "o", "--resume", trained, "--set", "model.kwargs.width=4")
    )
    assert_user_error(code, err, "does not match the model", "shape mismatch", "another model")
    # eval: the stored config says errtest_tiny, the weights are of a wider one
    ckpt = load_checkpoint(trained)
    ckpt["model"] = Tiny(num_classes=10, in_channels=1, width=16).state_dict()
    foreign = tmp_path / "foreign.pt"
    torch.save(ckpt, foreign)
    with pytest.raises(CheckpointError, match="does not match"):
        from autotrainonce.training import load_model_state

        load_model_state(Tiny(in_channels=1), ckpt["model"])
    code, _, err = run_cli(capsys, "eval", "--checkpoint", foreign)
    assert_user_error(code, err, "does not match the model", "another model")


# ================================================================================ row 9: corrupt checkpoint


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "compact.pt"])
def test_row_checkpoint_corrupt_or_truncated(trained, capsys, tmp_path, damage):
    bad = tmp_path / "bad.pt"
    raw = trained.read_bytes()
    if damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\x00not a checkpoint" * 64)
    elif damage == "empty":
        bad.write_bytes(b"")
    else:  # a pickled model (what compact.pt is): refused by the weights-only loader, never executed
        torch.save(Tiny(), bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        load_checkpoint(bad)
    pickled = damage == "compact.pt"
    needles = ("pickled Python objects", "load_compact") if pickled else ("corrupt or truncated",)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", bad)
    assert_user_error(code, err, str(bad), *needles)
    code, _, err = run_cli(capsys, *digits_run(tmp_path / "o", "--resume", bad))
    assert_user_error(code, err, str(bad))
    if pickled:  # names what the file holds and what to pass instead; no colour codes from torch
        assert "is not an autotrainonce checkpoint" in err and "written by `ato train`" in err
        assert "\x1b[" not in err


# ================================================================================ row 10: bad config


def test_row_config_unknown_key_or_wrong_type_yaml(capsys, tmp_path):
    cases = {
        "optim:\n  lrr: 0.1\n": ("unknown config key 'lrr'", "did you mean 'lr'?"),
        "trainer:\n  epochs: 3\n": ("unknown config section 'trainer'", "valid sections"),
        "run:\n  epochs: ten\n": ("'run.epochs' expects int", "'ten'"),
        "optim:\n  lr: .inf\n": ("'optim.lr' expects float", "inf and nan are not allowed"),
        "model:\n  kwargs: {1: 2}\n": ("'model.kwargs' expects dict[str, Any]",),
        "data: [1, 2]\n": ("section 'data' must be a mapping",),
        "optim: {lr: 0.1\n": ("not valid YAML",),
    }
    for i, (text, needles) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError):
            load_config(path)
        code, _, err = run_cli(capsys, "train", "--config", path, "--data", "digits")
        assert_user_error(code, err, *needles)


def test_row_config_unknown_key_or_wrong_type_set(capsys):
    cases = {
        "run.epochz=2": ("unknown config key 'epochz'", "did you mean 'epochs'?"),
        "optim.lr=fast": ("'optim.lr' expects float", "'fast'"),
        "run.epochs=1.5": ("'run.epochs' expects int",),
        "optim.lr=.nan": ("inf and nan are not allowed",),
        "schedule.warmup_epochs=.inf": ("inf and nan are not allowed",),
        "data.options={1: 2}": ("'data.options' expects dict[str, Any]",),
        "prune.options={0: true}": ("'prune.options' expects dict[str, Any]",),
        "run.name=../../outside": ("'run.name'", "no '..'"),
        "lr=0.1": ("needs its section", "optim.lr"),
        "optim.lr": ("expected SECTION.KEY=VALUE",),
    }
    for item, needles in cases.items():
        code, _, err = run_cli(capsys, "train", "--data", "digits", "--set", item)
        assert_user_error(code, err, *needles)
    with pytest.raises(ConfigError):
        merge_overrides(config_from_dict({}), {"optim.lr": float("inf")})
    # the pruner's own options are typed too (they used to fail as a TypeError inside the algorithm)
    prune_cases = {
        "prune.options.temperature=abc": ("'prune.options.temperature' expects float", "'abc'"),
        "prune.options.min_channels=1.5": ("'prune.options.min_channels' expects int",),
        "prune.options.freez_at=0.5": ("unknown config key 'freez_at'", "did you mean 'freeze_at'?"),
    }
    for item, needles in prune_cases.items():
        code, _, err = run_cli(capsys, "train", "--data", "digits", "--prune", "ato", "--remove-flops", "0.3",
                               "--set", item)  # fmt: skip
        assert_user_error(code, err, *needles)
    with pytest.raises(ConfigError, match="prune.options.hyper_step"):
        config_from_dict({"prune": {"method": "ato", "options": {"hyper_step": "often"}}})
    cfg = config_from_dict({"prune": {"method": "ato", "options": {"controller_lr": "5e-4", "freeze_at": 40}}})
    assert cfg.prune.options == {"controller_lr": 5e-4, "freeze_at": 40}  # YAML's "5e-4" string is a float
    cfg = config_from_dict({"prune": {"method": "ato", "options": {"split_fixed": False}}})
    assert cfg.prune.options == {"split_fixed": False}  # the discovery option every method takes
    for written in (0, "false", "no"):  # as a bench method string (`ato-freeze[split_fixed=0]`) writes it
        cfg = config_from_dict({"prune": {"method": "ato", "options": {"split_fixed": written}}})
        assert cfg.prune.options == {"split_fixed": False}
    with pytest.raises(ConfigError, match="prune.options.split_fixed"):
        config_from_dict({"prune": {"method": "ato", "options": {"split_fixed": "sometimes"}}})


# ================================================================================ row 11: NaN / Inf loss


def test_row_nan_loss_stops_and_keeps_last_good_checkpoint(zoo, capsys, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ClassificationLoss.__call__

    def poisoned(self, logits, targets):
        calls["n"] += 1
        loss = real(self, logits, targets)
        return loss * float("nan") if calls["n"] == 3 else loss  # epoch 2, step 1

    monkeypatch.setattr(ClassificationLoss, "__call__", poisoned)
    code, _, err = run_cli(capsys, *digits_run(tmp_path, "--epochs", "2"))
    line = assert_user_error(code, err, "training diverged", "loss became nan", "epoch 2/2", "step 1",
                             "last good checkpoint", "lower learning rate")  # fmt: skip
    last = tmp_path / "r" / "last.pt"
    assert str(last) in line
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 2  # the end of epoch 1, before the bad step
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert issubclass(TrainingDivergedError, UserError)


# ================================================================================ row 12: disk full


def _full_disk_save(monkeypatch, fail_on: int = 1) -> dict[str, int]:
    """Make torch.save write a few bytes and then fail with ENOSPC on call number ``fail_on``."""
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < fail_on:
            return real(obj, f, *args, **kwargs)
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half a checkpoint")
        else:
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    return calls


def test_row_disk_full_while_saving_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"format_version": 1, "model": {"w": torch.arange(3.0)}}, path)
    before = path.read_bytes()
    _full_disk_save(monkeypatch)
    with pytest.raises(DiskFullError) as info:
        atomic_save({"format_version": 1, "model": {"w": torch.zeros(100)}}, path)
    message = str(info.value)
    assert str(path) in message and "free some disk space" in message.lower() and "--out-dir" in message
    assert isinstance(info.value, OSError) and isinstance(info.value, UserError)
    assert path.read_bytes() == before  # "latest" is still the previous, complete file
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_row_disk_full_cli(zoo, capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    snapshot: dict[str, bytes] = {}
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            return real(obj, f, *args, **kwargs)
        snapshot["last.pt"] = (run_dir / "last.pt").read_bytes()  # what "latest" held before this save
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    code, _, err = run_cli(capsys, *digits_run(tmp_path, "--epochs", "2"))
    monkeypatch.setattr(torch, "save", real)
    assert_user_error(code, err, str(run_dir / "last.pt"), "no space left", "Free some disk space",
                      "--out-dir", "--resume auto")  # fmt: skip
    assert (run_dir / "last.pt").read_bytes() == snapshot["last.pt"]
    assert load_checkpoint(run_dir / "last.pt")["global_step"] == 2
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_row_disk_full_while_exporting(tmp_path, monkeypatch):
    import safetensors.torch

    model = Tiny()
    paths = export.save_compact(model, torch.zeros(1, 3, 8, 8), tmp_path, onnx=False)
    before = {k: p.read_bytes() for k, p in paths.items()}

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                           'message: "No space left on device" })')  # fmt: skip

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(DiskFullError, match="compact.safetensors"):
        export.save_compact(Tiny(width=4), torch.zeros(1, 3, 8, 8), tmp_path, onnx=False)
    assert paths["safetensors"].read_bytes() == before["safetensors"]  # untouched, not half-written
    assert paths["json"].read_bytes() == before["json"]  # not reached
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files
    pt_before = (tmp_path / "compact.pt").read_bytes()
    _full_disk_save(monkeypatch)
    with pytest.raises(DiskFullError, match="compact.pt"):
        export.save_compact(Tiny(width=4), torch.zeros(1, 3, 8, 8), tmp_path, onnx=False)
    assert (tmp_path / "compact.pt").read_bytes() == pt_before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_ato_options_from_the_python_api_are_type_checked():
    from autotrainonce.ato.config import AtoConfig

    with pytest.raises(ConfigError, match="temperature='abc' has the wrong type: expected float"):
        AtoConfig.from_options({"temperature": "abc"})
    with pytest.raises(ConfigError, match="expected int or float or None; inf and nan are not allowed"):
        AtoConfig.from_options({"freeze_at": float("inf")})
    with pytest.raises(ConfigError, match="zero_at_freeze=1 has the wrong type: expected bool"):
        AtoConfig.from_options({"zero_at_freeze": 1})
    assert AtoConfig.from_options({"freeze_at": 300, "temperature": 1}).freeze_at == 300


def test_row_disk_full_outside_checkpoints_cli(zoo, capsys, tmp_path, monkeypatch):
    """A full disk while writing metrics.csv is a one-line error with exit 2 that says how to continue."""
    from autotrainonce.training import metrics

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics.MetricsLogger, "_write", full)
    code, _, err = run_cli(capsys, *digits_run(tmp_path, "--epochs", "1"))
    assert_user_error(code, err, "disk is full", "--out-dir", "--resume auto")


# ----------------------------------------------------------------------------------------------- the model given to ATO


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))


def test_ato_without_total_steps_says_how_to_give_it():
    with pytest.raises(ConfigError, match=r"total_steps=.*epochs \* len\(train_loader\)"):
        AutoTrainOnce(_tiny(), torch.zeros(1, 1, 8, 8), Flops(0.3))
    with pytest.raises(TypeError):  # no longer positional: a loader there must not be taken for it
        AutoTrainOnce(_tiny(), torch.zeros(1, 1, 8, 8), Flops(0.3), None, 100)
    p = AutoTrainOnce(_tiny(), torch.zeros(1, 1, 8, 8), Flops(0.3), epochs=3, steps_per_epoch=7)
    assert p.schedule.total_steps == 21
    assert AutoTrainOnce(_tiny(), torch.zeros(1, 1, 8, 8), Flops(0.3), total_steps=np.int64(50)).schedule.total_steps == 50


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: "resnet20", r"needs a torch.nn.Module instance, got str 'resnet20'.*models.create\('resnet20'"),
        (lambda: nn.Conv2d, r"got the class Conv2d; call it"),
        (lambda: nn.DataParallel(_tiny()), r"already wrapped in DataParallel.*wrapped.module"),
        (lambda: _tiny().to("meta"), r"meta device.*to_empty"),
    ],
    ids=["string", "class", "dataparallel", "meta"],
)
def test_models_that_cannot_be_pruned_are_refused_clearly(make, match):
    model = make()
    with pytest.raises(ConfigError, match=match):
        AutoTrainOnce(model, torch.zeros(1, 1, 8, 8), Flops(0.3), total_steps=10)
    with pytest.raises(ConfigError, match=match.replace("AutoTrainOnce", "discover")):
        discover(model, torch.zeros(1, 1, 8, 8))


def test_ddp_wrapped_model_is_refused(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(_tiny())
        snapshot = {k: v.clone() for k, v in ddp.module.state_dict().items()}
        with pytest.raises(ConfigError, match=r"already wrapped in DistributedDataParallel.*wrapped.module"):
            AutoTrainOnce(ddp, torch.zeros(1, 1, 8, 8), Flops(0.3), total_steps=10)
        assert all(torch.equal(v, snapshot[k]) for k, v in ddp.module.state_dict().items())
    finally:
        dist.destroy_process_group()


def test_parametrized_weights_are_refused_for_ato():
    from torch.nn.utils.parametrizations import weight_norm

    model = _tiny()
    model[0] = weight_norm(model[0])
    with pytest.raises(ConfigError, match="parametrizations.*remove_parametrizations"):
        AutoTrainOnce(model, torch.zeros(1, 1, 8, 8), Flops(0.3), total_steps=10)
