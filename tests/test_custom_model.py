"""Models of your own as ``--model module:attr``: info, train, eval, the docs example and every error case.

The user's module is written into tmp_path, which is the current folder of the test: ``ato`` must import it
from there without PYTHONPATH. Each test gets its own copy of ``sys.path`` and forgets the module afterwards,
so one test's file never answers for another's.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from autotrainonce import cli, export, models
from autotrainonce.config import config_from_dict
from autotrainonce.errors import ConfigError, UnknownNameError
from autotrainonce.measure import count_macs, count_params
from autotrainonce.training import load_checkpoint

PKG = "ato_usernets"  # a name no installed package has

NETS = '''
import torch
from torch import nn


class MyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    @classmethod
    def small(cls, num_classes: int = 10) -> "MyNet":
        return cls(num_classes=num_classes, width=2)


def make_net(width: int = 4) -> nn.Module:
    """A factory without num_classes / in_channels: a 3-channel, 10-class model."""
    return MyNet(width=width)


def not_a_model(**kwargs):
    return {"weights": 1}


class Plain:
    pass
'''

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


@pytest.fixture
def userdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path as the current folder, holding the package ato_usernets (nets.py and a module that fails)."""
    pkg = tmp_path / PKG
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(NETS)
    (pkg / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    (pkg / "needs_dep.py").write_text("import ato_no_such_dependency  # noqa\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # ato appends the current folder; undone afterwards
    yield tmp_path
    for name in [n for n in sys.modules if n == PKG or n.startswith(PKG + ".") or n == "mynets"]:
        del sys.modules[name]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> str:
    """Exit 2, one ``error:`` line, no traceback, every needle in it."""
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and 'File "' not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


TINY = ("--data", "digits", "--epochs", "1", "--batch-size", "16", "--train-subset", "64",
        "--max-steps-per-epoch", "2", "--workers", "0", "--device", "cpu")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- info


def test_info_class_with_kwargs(userdir, capsys):
    code, out, err = run(capsys, "info", "--model", f"{PKG}.nets:MyNet", "--input", "3x16x16",
                         "--set", "model.kwargs.width=6", "--num-classes", "5")  # fmt: skip
    assert code == 0, err
    assert re.search(rf"^Model:\s+{PKG}\.nets:MyNet$", out, re.M)
    net = models.build(f"{PKG}.nets:MyNet", num_classes=5, in_channels=3, width=6)
    macs = count_macs(net, torch.zeros(1, 3, 16, 16))
    assert re.search(rf"^MACs:.*\({macs:,}\)$", out, re.M), out
    assert re.search(rf"^Parameters:.*\({count_params(net):,}\)$", out, re.M)
    assert "Channel groups" in out and "conv" in out


def test_info_factory_function(userdir, capsys):
    code, out, err = run(capsys, "info", "--model", f"{PKG}.nets:make_net", "--no-groups")
    assert code == 0, err
    # Neither num_classes nor in_channels is passed to a factory without those parameters.
    assert f"({count_params(models.build(f'{PKG}.nets:make_net')):,})" in out and "MACs:" in out
    code, out, err = run(capsys, "info", "--model", f"{PKG}.nets:MyNet.small", "--no-groups")  # a classmethod
    assert code == 0, err
    assert f"({count_params(models.build(f'{PKG}.nets:MyNet', width=2)):,})" in out


def test_zoo_options_through_info_set(capsys):
    code, out, err = run(capsys, "info", "--model", "resnet20", "--set", "model.kwargs.shortcut=B", "--no-groups")
    assert code == 0, err
    assert f"({count_params(models.create('resnet20', shortcut='B')):,})" in out


# ------------------------------------------------------------------------------------------- train and eval


def test_train_from_yaml_then_eval(userdir, capsys, monkeypatch):
    config = userdir / "my.yaml"
    config.write_text(f"model:\n  name: {PKG}.nets:MyNet\n  kwargs:\n    width: 6\n")
    code, out, err = run(capsys, "train", "--config", config, *TINY, "--out-dir", "runs")
    assert code == 0, err
    run_dir = userdir / "runs" / "MyNet-digits"  # the attribute names the folder: no ':' in it
    assert "Results" in out and (run_dir / "last.pt").is_file()
    saved = load_checkpoint(run_dir / "last.pt")["config"]["model"]
    assert saved["name"] == f"{PKG}.nets:MyNet" and saved["kwargs"] == {"width": 6}
    assert saved["in_channels"] == 1  # digits: passed to the constructor, which takes it

    code, out, err = run(capsys, "eval", "--checkpoint", run_dir / "last.pt")
    assert code == 0, err
    assert re.search(r"test top-1\s+[\d.]+%", out) and f"{PKG}.nets:MyNet" in out

    # A checkpoint from elsewhere names a library function with a payload: refused, nothing runs.
    marker = userdir / "pwned"
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    ckpt["config"]["model"].update(
        name="yaml:unsafe_load", kwargs={"stream": f"!!python/object/apply:os.system ['touch {marker}']"}
    )
    torch.save(ckpt, userdir / "evil.pt")
    code, _, err = run(capsys, "eval", "--checkpoint", userdir / "evil.pt")
    assert_user_error(code, err, "'yaml:unsafe_load'", "installed package 'yaml'", "wrap it")
    assert not marker.exists()

    # From another folder the module is not importable: the message says which and what to do.
    for name in (f"{PKG}.nets", PKG):
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != userdir.resolve()]
    elsewhere = userdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, "eval", "--checkpoint", run_dir / "last.pt")
    assert_user_error(code, err, f"cannot import module '{PKG}.nets'", "PYTHONPATH", str(elsewhere))
    code, _, err = run(capsys, "--verbose", "eval", "--checkpoint", run_dir / "last.pt")
    assert code == 2 and "Traceback" in err  # --verbose keeps the traceback


def test_train_error_is_one_line(userdir, capsys):
    code, _, err = run(capsys, "train", "--model", f"{PKG}.nets:MyNet", "--set", "model.kwargs.width=0", *TINY,
                       "--out-dir", "runs")  # fmt: skip
    assert_user_error(code, err, "raised ValueError: width must be positive, got 0", "width=0", "in_channels=1")


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "extra", "needles"),
    [
        # module not importable: its name, the folder to run in or put on PYTHONPATH
        (f"{PKG}.missing:Net", (), (f"cannot import module '{PKG}.missing'", f"{PKG}/missing.py", "PYTHONPATH")),
        ("ato_no_such_pkg:Net", (), ("cannot import module 'ato_no_such_pkg'", "PYTHONPATH")),
        # found, but importing it fails: that error, not "cannot import"
        (f"{PKG}.broken:Net", (), ("importing module", "RuntimeError: boom at import", "fix the module")),
        (f"{PKG}.needs_dep:Net", (), ("importing module", "ato_no_such_dependency", "install what it needs")),
        # attribute missing: a suggestion and the names it has
        (f"{PKG}.nets:MyNett", (), ("has no attribute 'MyNett'", f"did you mean {PKG}.nets:MyNet", "make_net")),
        # constructor raising: its message and the arguments passed
        (f"{PKG}.nets:MyNet", ("--set", "model.kwargs.width=0"),
         ("MyNet(num_classes=10, in_channels=3, width=0) raised ValueError", "width must be positive")),
        (f"{PKG}.nets:MyNet", ("--set", "model.kwargs.widht=3"),
         ("has no parameter widht", "its parameters are: num_classes, in_channels, width")),
        # not an nn.Module
        (f"{PKG}.nets:not_a_model", (), ("returned a dict, not a torch.nn.Module",)),
        (f"{PKG}.nets:Plain", (), ("class Plain, which does not derive from torch.nn.Module",)),
        (f"{PKG}.nets:torch", (), ("is a module, not a class or a function",)),
        # neither a zoo name nor module:attr
        ("mynet", (), ("unknown model 'mynet'", "resnet20", "vgg16_bn", "module:attr")),
        (f"{PKG}.nets.MyNet", (), (f"did you mean '{PKG}.nets:MyNet'?", "resnet56")),
        ("my-pkg:Net", (), ("not of the form module:attr",)),
        # what a checkpoint must not be able to call
        ("os:system", (), ("standard library",)),
        ("yaml:safe_load", (), ("installed package 'yaml'", "wrap it in a function of your own")),
        ("autotrainonce.models:create", (), ("package 'autotrainonce'",)),
    ],
)  # fmt: skip
def test_errors_are_one_line(userdir, capsys, name, extra, needles):
    code, _, err = run(capsys, "info", "--model", name, *extra)
    line = assert_user_error(code, err, *needles)
    if ":" in name:
        assert line.startswith(f"error: model {name!r}"), line


def test_info_set_takes_model_options_only(capsys):
    code, _, err = run(capsys, "info", "--model", "resnet20", "--set", "optim.lr=0.1")
    assert_user_error(code, err, "model.kwargs.KEY=VALUE", "optim.lr")


def test_library_exceptions(userdir):
    with pytest.raises(ConfigError, match="cannot import module"):
        models.build(f"{PKG}.missing:Net")
    with pytest.raises(UnknownNameError, match="module:attr"):
        models.build("resnet9000")
    with pytest.raises(ConfigError, match="num_classes must be at least 1"):
        models.build(f"{PKG}.nets:MyNet", num_classes=0)
    net = models.build(f"{PKG}.nets:MyNet", num_classes=3, in_channels=2, width=None)  # None keeps the default
    assert (net.conv.in_channels, net.conv.out_channels, net.fc.out_features) == (2, 8, 3)
    assert models.short_name(f"{PKG}.nets:MyNet") == "MyNet" and models.short_name("resnet20") == "resnet20"


# --------------------------------------------------------------------------------------- the docs' example


def _docs_example() -> tuple[str, list[list[str]], dict]:
    """docs/cli.md's "Your own model" section: the module, its ato commands, and the config snippet."""
    text = DOCS.read_text().partition("## Your own model")[2]
    module = re.search(r"```python\n(# mynets\.py\n.*?)```", text, re.S).group(1)
    commands = [shlex.split(line)[1:] for line in re.findall(r"^ato .*$", text, re.M)]
    snippet = yaml.safe_load(re.search(r"`(model: \{.*?\})`", text).group(1))
    return module, commands, snippet


def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    module, commands, snippet = _docs_example()
    assert [c[0] for c in commands] == ["info", "train", "eval", "train"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(export, "onnx_available", lambda: False)  # ONNX has its own tests; keep this fast
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    (tmp_path / "mynets.py").write_text(module)
    try:
        assert config_from_dict(snippet).model.kwargs == {"width": 16}
        short = ("--epochs", "1", "--train-subset", "64", "--batch-size", "16", "--max-steps-per-epoch", "2",
                 "--workers", "0", "--device", "cpu")  # later flags win: the documented runs, shortened
        for argv in commands:
            code, out, err = run(capsys, *argv, *(short if argv[0] == "train" else ()))
            assert code == 0, (argv, err)
            if argv[0] == "info":
                assert "MACs:" in out and "Channel groups" in out
        run_dir = tmp_path / "runs" / "SmallNet-digits-ato"
        cls = sys.modules["mynets"].SmallNet
        compact = export.load_compact(run_dir, model=cls(num_classes=10, in_channels=1, width=16))
        reference = torch.load(run_dir / "compact.pt", weights_only=False)
        x = torch.randn(2, 1, 8, 8)
        torch.testing.assert_close(compact(x), reference(x))
    finally:
        sys.modules.pop("mynets", None)


def test_ato_script_imports_from_the_current_folder(tmp_path):
    """The installed ``ato`` script (unlike ``python -m``) has no current folder on sys.path by itself."""
    script = Path(sys.executable).with_name("ato")
    if not script.is_file():
        pytest.skip("no ato script next to this Python")
    (tmp_path / "mynets.py").write_text(_docs_example()[0])
    proc = subprocess.run([str(script), "info", "--model", "mynets:SmallNet", "--input", "1x8x8", "--no-groups"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "MACs:" in proc.stdout
