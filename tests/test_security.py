"""Security basics: no code runs from a file a user hands us, and names cannot steer paths elsewhere.

What is checked (docs/troubleshooting.md, "Security"): every ``torch.load`` is weights-only; only the CIFAR
loader unpickles, through an allow-list; YAML is read with ``safe_load``; ``load_compact`` reads JSON and
safetensors only; run names and ``compact.json`` cannot point outside their folder. Each attack writes a
marker file if it succeeds, so "refused" is tested by the marker staying absent.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autotrainonce import cli, data, export, models
from autotrainonce.config import config_from_dict, load_config
from autotrainonce.data.safe_pickle import safe_load
from autotrainonce.errors import CheckpointError, ConfigError, DatasetError
from autotrainonce.training import load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "autotrainonce"


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """Every call in ``tree`` as (dotted callee, node), e.g. ("torch.load", ...)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            parts.append(f.id if isinstance(f, ast.Name) else "<expr>")  # x().eval() is a method, not eval
            out.append((".".join(reversed(parts)), node))
    return out


def _sources() -> dict[str, ast.AST]:
    return {str(p.relative_to(SRC)): ast.parse(p.read_text(), str(p)) for p in sorted(SRC.rglob("*.py"))}


# ----------------------------------------------------------------------------------------------- static audit


def test_every_torch_load_is_weights_only():
    found = []
    for name, tree in _sources().items():
        for callee, node in _calls(tree):
            if callee == "torch.load":
                flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{name}:{node.lineno}"
                found.append(name)
    assert "training/checkpoint.py" in found  # the audit looks at the right code


def test_no_unsafe_deserialisers_or_shell_in_the_package():
    banned = {
        "pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
        "eval", "exec", "os.system", "marshal.loads", "shelve.open",
    }  # fmt: skip
    for name, tree in _sources().items():
        for callee, node in _calls(tree):
            assert callee not in banned, f"{name}:{node.lineno} calls {callee}"
            if callee.startswith("subprocess."):
                shell = next((k.value for k in node.keywords if k.arg == "shell"), None)
                assert not (isinstance(shell, ast.Constant) and shell.value), f"{name}:{node.lineno}"
            if callee.endswith((".extractall", ".extract")):
                pytest.fail(f"{name}:{node.lineno}: archive extraction must check member paths (add a test)")
    # the one unpickler is the allow-listing one of the data package
    unpicklers = [n for n, t in _sources().items() for c, _ in _calls(t) if c.endswith("Unpickler")]
    assert unpicklers == [] or set(unpicklers) == {"data/safe_pickle.py"}, unpicklers


# ----------------------------------------------------------------------------------------------- pickles


class _Payload:
    """Unpickling this writes ``marker``: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_checkpoint_is_refused_everywhere(tmp_path, capsys):
    marker = tmp_path / "pwned"
    zipped, raw = tmp_path / "zip.pt", tmp_path / "raw.pt"
    torch.save({"format_version": 1, "model": {}, "x": _Payload(marker)}, zipped)  # torch's zip format
    raw.write_bytes(pickle.dumps({"format_version": 1, "model": _Payload(marker)}, protocol=2))  # bare pickle
    for path in (zipped, raw):
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        assert cli.main(["eval", "--checkpoint", str(path)]) == 2
        argv = ["train", "--data", "digits", "--resume", str(path), "--out-dir", str(tmp_path / "runs"),
                "--epochs", "1", "--max-steps-per-epoch", "1", "--workers", "0",
                "--train-subset", "32"]  # fmt: skip
        assert cli.main(argv) == 2
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    assert not marker.exists()


def test_cifar_loader_refuses_malicious_pickles(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(pickle.dumps(good, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Payload(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load it"):
        data.create("cifar10", "test", root=tmp_path)
    code = cli.main(["train", "--model", "resnet20", "--data", "cifar10", "--data-root", str(tmp_path),
                     "--out-dir", str(tmp_path / "runs"), "--workers", "0"])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 2 and "refusing to load it" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        (getattr, (object, "__subclasses__")),  # the usual first step of a gadget chain
        (eval, ("1+1",)),
        (np.load, ("x.npy",)),  # numpy is allowed only for array reconstruction
        (__import__("os").getcwd, ()),
    ],
    ids=["getattr", "eval", "numpy.load", "os.getcwd"],
)
def test_restricted_unpickler_allows_only_array_pieces(tmp_path, payload):
    class Reduce:
        def __reduce__(self):
            return payload

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": Reduce()}, protocol=2))
    with pytest.raises(DatasetError, match="refusing"):
        safe_load(path)


def test_restricted_unpickler_refuses_non_text_codecs(tmp_path):
    import codecs

    class Encoded:
        def __reduce__(self):  # _codecs.encode is allowed for latin1 text only; zlib would be a decompressor
            return (codecs.encode, ("x", "zlib_codec"))

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(Encoded(), protocol=2))
    with pytest.raises(DatasetError):
        safe_load(path)


# ----------------------------------------------------------------------------------------------- YAML


def test_yaml_config_cannot_construct_python_objects(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = f"optim: !!python/object/apply:os.system ['touch {marker}']\n"
    path = tmp_path / "evil.yaml"
    path.write_text(evil)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert cli.main(["train", "--config", str(path)]) == 2
    tagged = f"optim.lr=!!python/object/apply:os.system ['touch {marker}']"
    assert cli.main(["train", "--data", "digits", "--set", tagged]) == 2
    _, err = capsys.readouterr()
    assert "Traceback" not in err and err.count("error: ") == 2
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["..", "../outside", "a/../../outside", "/tmp/abs", "a\\..\\..\\b", ""])
def test_run_name_cannot_leave_out_dir(tmp_path, capsys, name):
    with pytest.raises(ConfigError, match="run.name"):
        config_from_dict({"run": {"name": name}})
    code = cli.main(["train", "--data", "digits", "--out-dir", str(tmp_path / "runs"), "--name", name])
    _, err = capsys.readouterr()
    assert code == 2 and "run.name" in err
    assert not (tmp_path / "outside").exists()


def test_nested_run_names_stay_allowed():
    assert config_from_dict({"run": {"name": "sweep/lr0.1"}}).run.name == "sweep/lr0.1"


def _compact_dir(tmp_path: Path) -> Path:
    model = models.create("resnet20", num_classes=10, in_channels=1)
    zoo = {"name": "resnet20", "num_classes": 10, "in_channels": 1}
    export.save_compact(model, torch.zeros(1, 1, 8, 8), tmp_path / "run", onnx=False, zoo=zoo)
    return tmp_path / "run"


def test_load_compact_never_unpickles(tmp_path, monkeypatch):
    run = _compact_dir(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("load_compact must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model = export.load_compact(run)
    assert isinstance(model, nn.Module)
    assert "pickle" in export.__doc__ and "trust" in export.__doc__  # compact.pt's risk is documented
    assert "Nothing is unpickled" in (export.load_compact.__doc__ or "")


def test_compact_json_cannot_point_outside_its_folder(tmp_path):
    run = _compact_dir(tmp_path)
    desc = json.loads((run / "compact.json").read_text())
    for weights in ("../compact.safetensors", "/etc/passwd", "sub/../../x.safetensors", ".."):
        (run / "compact.json").write_text(json.dumps({**desc, "weights": weights}))
        with pytest.raises(CheckpointError, match="must be a file name next to it"):
            export.load_compact(run)


def test_compact_json_builds_only_torch_nn_layers(tmp_path):
    run = _compact_dir(tmp_path)
    desc = json.loads((run / "compact.json").read_text())
    for spec in ({"type": "Module", "args": {}}, {"type": "__class__", "args": {}},
                 {"type": "Sequential", "args": {}}, {"type": "Conv2d"}):  # fmt: skip
        (run / "compact.json").write_text(json.dumps({**desc, "modules": {"conv1": spec}}))
        with pytest.raises(CheckpointError, match="cannot rebuild"):
            export.load_compact(run)


def test_gzip_bomb_idx_is_refused_without_expanding_it(tmp_path):
    """A small .gz whose header claims far more data than it could hold is refused before decompressing."""
    import gzip
    import struct

    from autotrainonce.data.idx import read_idx

    n = 200_000_000  # 200 MB of zeros compress to ~200 kB
    header = struct.pack(">HBB", 0, 8, 2) + struct.pack(">2I", n // 1000, 1000)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(header)
        chunk = bytes(10_000_000)
        for _ in range(n // len(chunk)):
            f.write(chunk)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(DatasetError, match=r"header claims 200000000 bytes, more than .* compressed\); replace"):
        read_idx(bomb)
    # a genuine gzip file still reads, and trailing extra data is still refused
    good = np.arange(6000, dtype=np.uint8).reshape(6, 1000)
    raw = struct.pack(">HBB", 0, 8, 2) + struct.pack(">2I", 6, 1000) + good.tobytes()
    (tmp_path / "ok.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(tmp_path / "ok.gz"), good)
    (tmp_path / "extra.gz").write_bytes(gzip.compress(raw + b"xx"))
    with pytest.raises(DatasetError, match="6001 data bytes"):
        read_idx(tmp_path / "extra.gz")
