"""The ``ato`` command line, called in-process through ``cli.main``."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import torch
import yaml

from autotrainonce import cli, data, export, models, pruners
from autotrainonce.errors import DatasetError
from autotrainonce.measure import count_params
from autotrainonce.training import load_checkpoint, read_metrics


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


def test_info_lists_channel_groups(capsys):
    code, out, _ = run(capsys, "info", "--model", "resnet20", "--input", "1x28x28")
    assert code == 0
    head, _, groups = out.partition("Channel groups")
    assert "MACs:" in head and "Parameters:" in head  # the counts come first
    assert re.search(r"#\s+group\s+size\s+prunable\s+MACs %", groups)
    assert re.search(r"^\s+1\s+layer1\.0\.conv1\s+16\s+yes\s+[\d.]+", groups, re.M)
    assert "11 channel groups, 9 prunable" in groups
    code, out, _ = run(capsys, "info", "--model", "resnet20", "--input", "1x28x28", "--no-groups")
    assert code == 0 and "MACs:" in out and "prunable" not in out


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


def test_unknown_prune_method_lists_the_registered_ones(capsys, tmp_path):
    code, _, err = run(
        capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--prune", "l2", "--remove-flops", "0.5"
    )
    _assert_one_line_error(code, err, "'prune.method' must be one of none, ato, l1, magnitude, got 'l2'")


class _KeepAllPruner(pruners.Pruner):
    """A registered method that keeps everything; the tests give it a name and a constructor."""

    def step(self, optimizer, batch=None):
        self.global_step += 1
        return False

    def export(self):
        return copy.deepcopy(self.model)

    def state_dict(self):
        return {}

    def load_state_dict(self, state, optimizer=None):
        pass


def test_no_holdout_gives_the_pruner_every_training_batch(capsys, tmp_path, monkeypatch):
    """data.holdout_fraction=0 (the default): nothing is held out; the pruner's step gets each training batch."""
    seen: dict[str, list] = {"holdout": [], "batches": []}

    class BatchPruner(_KeepAllPruner):
        name = "batchy"
        uses_holdout = True

        def __init__(self, model, example_inputs, target, holdout, *, total_steps):
            seen["holdout"].append(holdout)
            self.model, self.cut_report = model, {}

        def step(self, optimizer, batch=None):
            seen["batches"].append(None if batch is None else (tuple(batch[0].shape), tuple(batch[1].shape)))
            return super().step(optimizer, batch)

    monkeypatch.setitem(pruners.PRUNERS._builders, "batchy", BatchPruner)
    monkeypatch.setattr(export, "onnx_available", lambda: False)
    code, _, err = run(capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--prune", "batchy", "--remove-flops",
                       "0.4")  # fmt: skip (holdout_fraction 0 is the default)
    assert code == 0, err
    assert seen["holdout"] == [None]
    assert seen["batches"] == [((32, 1, 8, 8), (32,))] * 6  # 2 epochs x 3 steps, every one with its batch


def test_prune_hook_gets_holdout_and_exports(capsys, tmp_path, monkeypatch):
    seen = {}

    class FakePruner(_KeepAllPruner):
        """A registered method that keeps everything (the run must still report and export)."""

        name = "fake"
        uses_holdout = True

        def __init__(self, model, example_inputs, target, holdout, *, total_steps):
            seen.update(target=target, shape=tuple(example_inputs.shape), total=total_steps,
                        holdout=len(holdout.dataset))  # fmt: skip
            self.model, self.cut_report = model, {}

    monkeypatch.setitem(pruners.PRUNERS._builders, "fake", FakePruner)
    monkeypatch.setattr(export, "onnx_available", lambda: False)  # ONNX has its own tests; keep this fast
    code, out, err = run(
        capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--name", "p", "--prune", "fake",
        "--remove-flops", "0.4", "--set", "data.holdout_fraction=0.05",
    )
    assert code == 0, err
    assert seen["target"].remove == 0.4 and seen["shape"] == (1, 1, 8, 8) and seen["total"] == 6
    assert seen["holdout"] == round(0.05 * 128)
    # The before/after table ends the output: the fake pruner's "compact" model is the dense one.
    table = out[out.index("Results: before / after the cut") :]
    for row in ("test top-1", "MACs", "parameters", "CPU latency, batch 1", "CPU latency, batch 64"):
        assert re.search(rf"^{row}\s+\S+.*\s+\S+", table, re.M), row
    assert re.search(r"^max \|masked - compact\|\s+n/a", table, re.M)  # no export_report from the fake
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert results["compact"]["macs"] == results["dense"]["macs"] and results["change"]["test_top1_pt"] == 0
    assert {"latency_b1_ms", "latency_b64_ms"} <= set(results["compact"])
    assert set(results["artifacts"]) == {"pt", "safetensors", "json"}


def test_train_ato_end_to_end_writes_compact_artifacts(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "onnx_available", lambda: False)
    code, out, err = run(
        capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--name", "a", "--prune", "ato",
        "--remove-flops", "0.5",
    )
    assert code == 0, err
    run_dir = tmp_path / "a"
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.45 < 1 - results["change"]["macs_ratio"] < 0.55  # the target is met
    assert results["compact"]["params"] < results["dense"]["params"]
    assert results["equivalence"]["max_abs_diff"] <= 1e-4
    assert out.rstrip().splitlines()[-1].startswith("max |masked - compact|")  # the table comes last
    for name in ("compact.pt", "compact.safetensors", "compact.json", "mask.json"):
        assert (run_dir / name).is_file(), name
    assert str(run_dir / "compact.pt") in out
    rebuilt = export.load_compact(run_dir)
    assert count_params(rebuilt) == results["compact"]["params"]


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
    run_dir, dense_dir = tmp_path / "demo", tmp_path / "demo-dense"
    # the last table compares the compact model with the same network trained without pruning (run 1)
    table = out[out.rindex("Results: dense training vs pruned while training") :]
    header = table.splitlines()[2]
    assert "dense, no pruning" in header and "compact" in header
    dense = json.loads((dense_dir / "results.json").read_text())
    pruned = json.loads((run_dir / "results.json").read_text())
    assert f"{dense['dense']['test_top1']:.2f}%" in table.splitlines()[3]  # the reference's accuracy, not n/a
    assert f"{pruned['compact']['test_top1']:.2f}%" in table.splitlines()[3]
    for row in ("CPU latency, batch 64", "training time", "max |masked - compact|"):
        assert row in table, row
    assert "no fine-tuning" in out.rstrip().splitlines()[-1]
    assert (run_dir / "last.pt").exists() and (run_dir / "compact.pt").exists()
    cfg = torch.load(run_dir / "last.pt", weights_only=True)["config"]
    assert cfg["run"]["epochs"] == cli.DEMO_CONFIG["run"]["epochs"] and cfg["prune"]["method"] == "ato"
    assert torch.load(dense_dir / "last.pt", weights_only=True)["config"]["prune"]["method"] == "none"


def test_train_ato_surgery_freeze_reports_no_dense_accuracy(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "onnx_available", lambda: False)
    code, out, err = run(
        capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--name", "f", "--prune", "ato",
        "--remove-flops", "0.5", "--set", "prune.options.hyper_step=3", "--surgery", "freeze",
    )
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "f" / "config.yaml").read_text())
    assert saved["prune"]["options"]["surgery"] == "freeze"
    assert saved["prune"]["options"]["hyper_step"] == 3  # --surgery merges into the other options
    results = json.loads((tmp_path / "f" / "results.json").read_text())
    assert results["equivalence"]["max_abs_diff"] <= 1e-4  # measured at the cut
    assert results["dense"]["test_top1"] is None  # the dense network no longer exists at the end
    assert results["change"]["test_top1_pt"] is None
    assert 0.45 < 1 - results["change"]["macs_ratio"] < 0.55
    assert results["dense"]["latency_b1_ms"] > 0  # timed on the dense architecture
    assert "n/a (cut during training)" in out


@pytest.mark.parametrize("method", ["l1", "magnitude"])
def test_train_with_a_library_baseline_method(capsys, tmp_path, monkeypatch, method):
    monkeypatch.setattr(export, "onnx_available", lambda: False)
    code, out, err = run(
        capsys, *DIGITS_RUN, "--out-dir", str(tmp_path), "--name", method, "--prune", method,
        "--remove-flops", "0.5",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((tmp_path / method / "results.json").read_text())
    removed = 1 - results["compact"]["macs"] / results["dense"]["macs"]
    assert 0.5 <= removed <= 0.53
    mask = json.loads((tmp_path / method / "mask.json").read_text())
    assert mask["method"] == method and mask["cut"]
    assert (tmp_path / method / "widths.png").is_file()


def test_train_ato_cut_at_the_freeze_trains_the_compact_model_to_the_end(capsys, tmp_path, monkeypatch):
    """`ato train` cuts in place at the freeze and the compact model keeps training: the checkpoints of the last
    two epochs (both after the cut) hold compact weights that differ; `--surgery end` decides the same mask."""
    monkeypatch.setattr(export, "onnx_available", lambda: False)
    args = ("train", "--model", "resnet20", "--data", "digits", "--epochs", "4", "--batch-size", "32",
            "--train-subset", "256", "--workers", "0", "--device", "cpu", "--out-dir", str(tmp_path),
            "--prune", "ato", "--remove-flops", "0.5", "--set", "prune.options.hyper_step=2")  # fmt: skip
    masks = {}
    for surgery in ("freeze", "end"):
        code, _, err = run(capsys, *args, "--name", surgery, "--surgery", surgery)
        assert code == 0, err
        masks[surgery] = json.loads((tmp_path / surgery / "mask.json").read_text())["groups"]
    assert masks["freeze"] == masks["end"]
    last = torch.load(tmp_path / "freeze" / "last.pt", weights_only=True)
    prev = torch.load(tmp_path / "freeze" / "prev.pt", weights_only=True)
    assert last["callbacks"]["ato"]["cut"] and prev["callbacks"]["ato"]["cut"]
    assert last["epoch"] > prev["epoch"]
    weights = [k for k, v in last["model"].items() if v.is_floating_point() and k.endswith("weight")]
    assert all(last["model"][k].shape == prev["model"][k].shape for k in weights)
    assert any(not torch.equal(last["model"][k], prev["model"][k]) for k in weights)
    dense = sum(p.numel() for p in models.create("resnet20", num_classes=10, in_channels=1).parameters())
    assert sum(v.numel() for k, v in last["model"].items() if k.endswith(("weight", "bias"))) < dense
