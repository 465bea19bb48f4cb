"""The ``ato`` command line, called in-process through ``cli.main``."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import types

import pytest
import torch

from autotrainonce import cli, data
from autotrainonce.errors import DatasetError
from autotrainonce.training import Callback, load_checkpoint, read_metrics


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_resnet56(capsys):
    code, out, _ = run(capsys, "info", "--model", "resnet56", "--input", "3x32x32")
    assert code == 0
    macs = float(re.search(r"MACs:\s+([\d.]+)M", out).group(1))
    params = int(re.search(r"Parameters:.*\(([\d,]+)\)", out).group(1).replace(",", ""))
    assert abs(macs - 125.75) / 125.75 < 0.005
    assert abs(params - 0.85e6) / 0.85e6 < 0.01


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_unknown_model(capsys):
    code, _, err = run(capsys, "info", "--model", "resnet57")
    _assert_one_line_error(code, err, "unknown model 'resnet57'", "resnet56")


@pytest.mark.parametrize("shape", ["3x32", "axbxc", "3x0x32", ""])
def test_bad_input_shape(capsys, shape):
    code, _, err = run(capsys, "info", "--model", "resnet20", "--input", shape)
    _assert_one_line_error(code, err, "bad --input")


def test_unknown_dataset(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--model", "resnet20", "--data", "mnist2", "--out-dir", str(tmp_path))
    _assert_one_line_error(code, err, "unknown dataset 'mnist2'")


def test_missing_data_dir(capsys, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ATO_DATA_ROOT", str(empty))
    code, _, err = run(
        capsys, "train", "--model", "resnet20", "--data", "fashion-mnist", "--out-dir", str(tmp_path)
    )
    _assert_one_line_error(code, err, "not found")


def test_bad_config_key(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    code, _, err = run(capsys, "train", "--config", str(path))
    _assert_one_line_error(code, err, "'lrr'", "'optim'")


def test_bad_flag_value_and_unknown_flag(capsys):
    code, _, err = run(capsys, "train", "--epochs", "many")
    _assert_one_line_error(code, err, "--epochs")
    code, _, err = run(capsys, "train", "--colour", "red")
    _assert_one_line_error(code, err, "--colour")
    code, _, err = run(capsys, "train", "--data", "digits", "--optimizer", "adam")
    _assert_one_line_error(code, err, "optim.name")


def test_verbose_shows_traceback(capsys):
    code, _, err = run(capsys, "--verbose", "info", "--model", "nope")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_override_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.05\n  weight_decay: 1.0e-4\nrun:\n  epochs: 7\n")
    parser = cli.build_parser()
    cfg = cli._train_config(parser.parse_args(["train", "--config", str(path), "--set", "optim.lr=0.07"]))
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.run.epochs) == (0.07, 1e-4, 7)
    args = parser.parse_args(
        ["train", "--config", str(path), "--set", "optim.lr=0.07", "--lr", "0.02", "--epochs", "2"]
    )
    cfg = cli._train_config(args)
    assert (cfg.optim.lr, cfg.run.epochs) == (0.02, 2)


DIGITS_RUN = ("train", "--model", "resnet20", "--data", "digits", "--epochs", "2", "--batch-size", "32",
              "--train-subset", "128", "--max-steps-per-epoch", "3", "--workers", "0", "--device", "cpu")  # fmt: skip


def test_train_digits_end_to_end_then_eval(capsys, tmp_path):
    code, out, err = run(capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--name", "d")
    assert code == 0, err
    run_dir = tmp_path / "d"
    assert "Before training" in out and "Results" in out and "test top-1" in out
    assert {"metrics.csv", "last.pt", "curves.png", "config.yaml"} <= {p.name for p in run_dir.iterdir()}
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.csv")] == ["1", "2"]
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["model_name"] == "resnet20" and ckpt["config"]["data"]["name"] == "digits"
    assert ckpt["config"]["model"]["num_classes"] == 10  # resolved from the data

    code, out, err = run(capsys, "eval", "--checkpoint", str(run_dir / "last.pt"))
    assert code == 0, err
    assert re.search(r"test top-1\s+[\d.]+%", out)

    # Resuming a finished run trains nothing more and keeps the metrics.
    code, out, err = run(capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--name", "d", "--resume", "auto")
    assert code == 0, err
    assert "resumed from" in out
    assert len(read_metrics(run_dir / "metrics.csv")) == 2


def test_eval_corrupt_checkpoint(capsys, tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"garbage")
    code, _, err = run(capsys, "eval", "--checkpoint", str(path))
    _assert_one_line_error(code, err, "corrupt")


def test_prune_ato_unavailable(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "autotrainonce.ato", types.ModuleType("autotrainonce.ato"))
    code, _, err = run(
        capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--prune", "ato", "--remove-flops", "0.5"
    )
    _assert_one_line_error(code, err, "pruning method 'ato' is not available in this build")


def test_prune_hook_gets_holdout_and_exports(capsys, tmp_path, monkeypatch):
    seen = {}

    class FakePruner(Callback):
        def __init__(self, model):
            self.model = model

        def export(self):
            return copy.deepcopy(self.model)

    def make_callback(config, model, example_inputs, holdout_loader, total_steps):
        seen.update(config=config, shape=tuple(example_inputs.shape), total=total_steps,
                    holdout=len(holdout_loader.dataset))  # fmt: skip
        return FakePruner(model)

    fake = types.ModuleType("autotrainonce.ato")
    fake.make_callback = make_callback
    monkeypatch.setitem(sys.modules, "autotrainonce.ato", fake)
    code, out, err = run(
        capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--prune", "ato", "--remove-flops", "0.4"
    )
    assert code == 0, err
    assert seen["config"].remove_flops == 0.4 and seen["shape"] == (1, 1, 8, 8) and seen["total"] == 6
    assert seen["holdout"] == round(0.05 * 128)
    assert "pruned test top-1" in out and "pruned MACs" in out


def test_module_entry_point_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "autotrainonce.cli", "info", "--model", "nope"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("error: unknown model 'nope'")
        and len(proc.stderr.strip().splitlines()) == 1
    )


@pytest.mark.slow
def test_demo_short(capsys, tmp_path):
    try:
        data.create("fashion-mnist", "test")
    except DatasetError:
        pytest.skip("Fashion-MNIST is not installed")
    code, out, err = run(
        capsys, "demo", "--out-dir", str(tmp_path), "--max-steps-per-epoch", "5", "--device", "cpu"
    )
    assert code == 0, err
    assert "MACs" in out and "test top-1" in out and (tmp_path / "demo" / "last.pt").exists()
    assert torch.load(tmp_path / "demo" / "last.pt", weights_only=True)["config"]["run"]["epochs"] == 1
