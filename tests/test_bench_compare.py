"""Tests of bench/compare.py: the --quick side-by-side run on digits for every method, and its helpers.

No accuracy and no timing is asserted: the numbers of a two-epoch run on 8x8 digits mean nothing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import autotrainonce as ato
from autotrainonce.ato import AtoConfig, Schedule
from autotrainonce.config import Config
from bench_modules import load_bench_script


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    """bench/compare.py imported as a module (it is a script; it puts bench/ on sys.path for its helpers)."""
    return load_bench_script("compare.py", "bench_compare")


@pytest.fixture(scope="module")
def cells(compare: ModuleType) -> ModuleType:
    return sys.modules["_compare_cells"]


@pytest.fixture(scope="module")
def peers(compare: ModuleType) -> ModuleType:
    return sys.modules["_peers"]


@pytest.fixture(scope="module")
def report(compare: ModuleType) -> ModuleType:
    return sys.modules["_compare_report"]


@pytest.fixture(scope="module")
def quick(compare: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--quick`` run of every method (digits, resnet20, 2 epochs, 50% of MACs), shared by the tests."""
    out = tmp_path_factory.mktemp("compare") / "quick"
    threads = torch.get_num_threads()
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            code = compare.main(["--quick", "--out", str(out), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    result = json.loads((out / "results.json").read_text())
    return {"code": code, "out": out, "stdout": stdout.getvalue(), "result": result}


# ------------------------------------------------------------------------------------------------ quick run
@pytest.mark.slow
def test_quick_run_writes_every_output(quick, cells):
    out: Path = quick["out"]
    assert quick["code"] == 0, quick["stdout"]
    assert "| model | method |" in quick["stdout"]
    for name in ("results.md", "results.csv", "results.json", "accuracy_vs_macs.png", "kept_channels.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("accuracy_vs_macs.png", "kept_channels.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == sorted(cells.METHODS)  # one row per method (one target, seed)
    result = quick["result"]
    assert result["complete"] is True and len(result["summary"]) == len(cells.METHODS)
    md = (out / "results.md").read_text()
    assert "fine-tuning needed" in md and "| resnet20 | dense |" in md
    assert "At the cut:" in md and "draw ≠ frozen" in md and "Kept widths at 50% MACs removed:" in md
    # the instrument columns are in the CSV and hold numbers where they apply
    for col in ("cut_change_l2", "freeze_hamming_frac", "freeze_kept_near_zero", "freeze_kept_zero",
                "precut_epoch_s", "precut_ratio"):
        assert col in rows[0], col
    for r in rows:  # 2 epochs: the first ends before the window's end (0.51), but after ATO's freeze (0.25)
        if r["method"] in ("ato", "ato-freeze"):
            assert r["precut_epochs"] == "0" and r["precut_ratio"] in ("", "nan"), r["method"]
        else:
            assert r["precut_epochs"] == "1" and float(r["precut_epoch_s"]) > 0, r["method"]
        assert r["timing"] == "sequential"
    assert "pre-cut epoch ×" in md
    for r in rows:
        if r["method"] in ("ato", "ato-freeze"):
            assert 0.0 <= float(r["freeze_hamming_frac"]) <= 1.0 and float(r["freeze_kept_near_zero"]) >= 0
            assert math.isfinite(float(r["cut_change_l2"]))
        elif r["method"] in ("l1-oneshot", "magnitude"):
            assert float(r["cut_change_l2"]) >= 0 and r["freeze_hamming_frac"] == ""  # no freeze report
    assert result["environment"]["torch"] and "--quick" in result["environment"]["command"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dense", "ato", "ato-freeze", "torch-pruning", "oto-hesso", "l1-oneshot", "magnitude"])
def test_quick_run_gives_a_valid_compact_model(quick, peers, cells, method):
    missing = peers.missing_peer(method)
    if missing:
        pytest.skip(missing)  # names the package, e.g. "torch-pruning==1.6.1 is not installed ..."
    rows = [r for r in quick["result"]["rows"] if r["method"] == method]
    assert len(rows) == 1
    row = rows[0]
    assert not row["error"], row["error"]
    assert math.isfinite(row["test_top1"])
    if method == "dense":
        assert row["compact_macs"] == row["dense_macs"]
    else:
        assert row["target_pct"] == 50.0
        assert row["macs_removed_pct"] > 0 and row["compact_macs"] < row["dense_macs"]
        assert row["compact_params"] < row["dense_params"]
        assert row["finetune"] in ("yes", "no")
        assert math.isfinite(row["cut_change"])
        assert isinstance(row["cut_change_l2"], float) and 0 <= row["cut_change_l2"] < math.inf
    if method in ("ato", "ato-freeze"):  # the freeze report of the pruner, as numbers
        report = row["freeze_report"]
        assert report["step"] > 0 and report["channels"] > report["dropped"] > 0
        assert row["freeze_hamming"] == report["hamming"] == report["shrunk_kept"] + report["cut_unshrunk"]
        assert 0 <= row["freeze_hamming_frac"] <= 1 and 0 <= row["freeze_kept_near_zero_frac"] <= 1
        assert 0 <= row["freeze_kept_zero"] <= row["freeze_kept_near_zero"] <= report["channels"] - report["dropped"]
        assert all(isinstance(row[f"freeze_{k}"], (int, float)) for k in cells.FREEZE_KEYS)
    elif method != "dense":
        assert not any(k.startswith("freeze_") for k in row)  # only ATO has a freeze
        for col in ("epoch_ratio", "run_ratio", "lat1_ratio", "lat64_ratio"):
            assert row[col] is not None and math.isfinite(row[col]), col  # measured, values not checked
    compact = torch.load(row["compact_path"], weights_only=False).eval()
    probe = torch.load(Path(row["run_dir"]) / "probe.pt")
    with torch.no_grad():
        logits = compact(probe)
    assert logits.shape == (probe.shape[0], 10) and bool(torch.isfinite(logits).all())
    assert all(0 < w <= 1 for w in row["widths"].values()) and row["widths"]


def test_missing_peer_gives_an_error_row(cells, peers, monkeypatch, tmp_path):
    monkeypatch.setitem(peers.PEERS, "torch-pruning", ("no_such_module_xyz", "torch-pruning==1.6.1"))
    spec = cells.CellSpec("resnet20", "torch-pruning", 0.5, 0, Config(), str(tmp_path))
    row = cells.safe_run_cell(spec)
    assert row["method"] == "torch-pruning" and row["target_pct"] == 50.0
    assert "torch-pruning==1.6.1 is not installed" in row["error"]


# ------------------------------------------------------------------------------------------------ helpers
def test_search_setting_lands_on_a_step_function_goal(peers):
    calls = []

    def measure(x: float) -> float:  # non-decreasing, in steps of 0.05 (like whole channels)
        calls.append(x)
        return math.floor(x * 20) / 20 * 0.8

    x, value = peers.search_setting(measure, 0.4, 0.0, 1.0, iters=12)
    assert value == pytest.approx(0.4) and measure(x) == pytest.approx(0.4)
    assert len(calls) <= 13  # stops once within tolerance
    x, value = peers.search_setting(lambda s: s * 0.5, 0.9, 0.0, 1.0, iters=8)  # unreachable: closest end
    assert value == pytest.approx(0.5, abs=0.01) and x > 0.99


def test_relative_change(peers):
    a = torch.tensor([[1.0, -2.0]])
    assert peers.relative_change(a, a) == 0.0
    assert peers.relative_change(a, a + torch.tensor([[0.0, 0.5]])) == pytest.approx(0.25)


def test_window_steps(cells):
    assert cells.window_steps((0.2, 0.5), 100, 4) == [20, 30, 40, 50]
    assert cells.window_steps((0.2, 0.5), 100, 1) == [50]
    assert cells.window_steps((0.0, 0.0), 10, 3) == [1]


def test_kept_widths(cells):
    dense = ato.models.create("resnet20", num_classes=10, in_channels=1)
    space = ato.discover(dense, torch.randn(1, 1, 8, 8))
    gi = next(i for i in space.prunable_indices if space.groups[i].name == "layer1.0.conv1")
    masks = space.full_masks()
    masks[gi] = torch.arange(16) < 4
    widths = cells.kept_widths(dense, space.prune(dense, masks))
    assert widths["layer1.0.conv1"] == 0.25 and widths["layer1.0.conv2"] == 1.0 and widths["conv1"] == 1.0


def _row(method: str, target: float, seed: int, top1: float, epoch_s: float, **extra: Any) -> dict[str, Any]:
    row = {"model": "resnet20", "method": method, "target_pct": target, "seed": seed, "test_top1": top1,
           "epoch_s": epoch_s, "step_ms": epoch_s, "run_s": 10 * epoch_s, "macs_removed_pct": target,
           "params_removed_pct": target, "lat1_ms": 1.0, "lat1_ratio": 1.0, "lat64_ms": 2.0, "lat64_ratio": 1.0,
           "finetune": "—" if method == "dense" else "no", "widths": {"a": 1.0, "b": 0.5}, "error": ""}  # fmt: skip
    row.update(extra)
    return row


def test_ratios_summary_and_table(report):
    rows = [
        _row("torch-pruning", 50.0, 1, 89.0, 24.0, finetune="yes"),
        _row("dense", 0.0, 0, 90.0, 10.0),
        _row("dense", 0.0, 1, 92.0, 20.0),
        _row("torch-pruning", 50.0, 0, 88.0, 11.0, finetune="yes"),
        _row("oto-hesso", 50.0, 0, math.nan, math.nan, error="RuntimeError: graph could not be traced"),
    ]
    rows = report.order_rows(rows, ["resnet20"])
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("dense", 0), ("dense", 1), ("torch-pruning", 0), ("torch-pruning", 1), ("oto-hesso", 0)
    ]  # fmt: skip
    report.add_ratios(rows)
    assert [r["epoch_ratio"] for r in rows[:4]] == pytest.approx([1.0, 1.0, 1.1, 1.2])
    assert [r["top1_delta_pp"] for r in rows[2:4]] == pytest.approx([-2.0, -3.0])
    summary = report.summarize(rows, ["resnet20"])
    assert [(e["method"], e["seeds"], e["failed_seeds"]) for e in summary] == [
        ("dense", [0, 1], []), ("torch-pruning", [0, 1], []), ("oto-hesso", [], [0])
    ]  # fmt: skip
    assert summary[1]["finetune"] == "yes" and summary[1]["widths"] == {"a": 1.0, "b": 0.5}
    table = report.results_table(summary)
    assert "1.15 ± 0.07×" in table and "-2.50 ± 0.71" in table  # mean ± sample std of the per-seed values
    assert "| resnet20 | oto-hesso | 50% |" in table and "RuntimeError: graph could not be traced" in table
    assert "failed: 0" in table
    per_run = report.per_run_table(rows)
    assert per_run.count("\n") == len(rows) + 1


def test_precut_ratio_divides_by_the_same_epochs_of_the_dense_run(report):
    """A method cutting after epoch 1 is compared with the dense run's epoch 1, not its own pre-window mean."""
    dense = _row("dense", 0.0, 0, 90.0, 10.0, epoch_times=[10.0, 14.0, 12.0, 12.0], precut_epochs=2,
                 precut_epoch_s=12.0)  # fmt: skip
    ato = _row("ato-freeze", 50.0, 0, 89.0, 8.0, epoch_times=[11.0, 7.0, 7.0, 7.0], precut_epochs=1,
               precut_epoch_s=11.0)  # fmt: skip
    old = _row("torch-pruning", 50.0, 0, 88.0, 9.0, precut_epochs=2, precut_epoch_s=9.0)  # no epoch times
    rows = [dense, ato, old]
    report.add_ratios(rows)
    assert ato["precut_ratio"] == pytest.approx(1.1)  # 11 / 10, not 11 / 12
    assert old["precut_ratio"] == pytest.approx(0.75)  # rows without epoch times: the mean over the mean


def test_cut_and_widths_tables(report):
    freeze = {"freeze_hamming": 4.0, "freeze_hamming_frac": 0.1, "freeze_shrunk_kept": 3.0, "freeze_cut_unshrunk": 1.0,
              "freeze_kept_near_zero": 2.0, "freeze_kept_zero": 1.0, "freeze_init_order": 0.5,
              "freeze_l1_order": -0.25}  # fmt: skip
    rows = [_row("dense", 0.0, 0, 90.0, 10.0),
            _row("ato", 50.0, 0, 88.0, 10.0, cut_change=0.5, cut_change_l2=0.25, widths={"a": 0.5, "b": 0.25}, **freeze),
            _row("ato", 50.0, 1, 88.0, 10.0, cut_change=0.7, cut_change_l2=0.35, widths={"a": 0.7, "b": 0.25},
                 **(freeze | {"freeze_hamming_frac": 0.3, "freeze_init_order": 0.7})),
            _row("l1-oneshot", 50.0, 0, 87.0, 10.0, cut_change=0.2, cut_change_l2=1e-2, prunable_layers=["a"])]  # fmt: skip
    summary = report.summarize(rows, ["resnet20"])
    cut = report.cut_table(summary).splitlines()
    assert len(cut) == 4 and "dense" not in "".join(cut)  # header, rule, ato, l1
    assert cut[2].startswith("| resnet20 | ato | 50% | 3.0e-01 ± 7.1e-02 | 6.0e-01 ± 1.4e-01 | 20.0 ± 14.1% (4.0 ± 0.0) |")
    assert "| 3.0 ± 0.0 | 1.0 ± 0.0 | 2.0 ± 0.0 (1.0 ± 0.0) | +0.60 / -0.25 |" in cut[2]  # order: seeds' mean
    assert cut[3] == "| resnet20 | l1-oneshot | 50% | 1.0e-02 | 2.0e-01 | — | — | — | — | — | 0 |"
    widths = report.widths_table(summary, ["resnet20"], 50.0).splitlines()
    # prunable layers only (l1's list), the seeds' mean per method
    assert widths[0] == "| model | layer (kept fraction at 50%) | ato | l1-oneshot |"
    assert widths[2:] == ["| resnet20 | a | 0.60 | 1.00 |"]
    assert "no completed" in report.widths_table(summary, ["resnet20"], 30.0)


def test_plots_are_written(report, tmp_path):
    rows = [_row("dense", 0.0, 0, 90.0, 10.0), _row("ato", 30.0, 0, 89.0, 10.0), _row("ato", 50.0, 0, 88.0, 10.0),
            _row("l1-oneshot", 50.0, 0, 87.0, 10.0, prunable_layers=["b"])]  # fmt: skip
    summary = report.summarize(rows, ["resnet20"])
    report.plot_accuracy(summary, ["resnet20"], tmp_path / "acc.png")
    report.plot_widths(summary, ["resnet20"], report.plot_target([30.0, 50.0]), tmp_path / "widths.png")
    assert (tmp_path / "acc.png").stat().st_size > 0 and (tmp_path / "widths.png").stat().st_size > 0
    assert report.plot_target([30.0, 70.0]) == 30.0 and report.plot_target([]) is None


def _tiny_resnet() -> tuple[torch.nn.Module, torch.Tensor, list[str]]:
    model = ato.models.create("resnet20", num_classes=10, in_channels=1)
    x = torch.randn(1, 1, 8, 8)
    space = ato.discover(model, x)
    keep = sorted({m.module for g in space.groups if not g.prunable for m in g.members if m.role == "out"})
    return model, x, keep


def test_torch_pruning_ratio_maps_monotonically_to_macs(peers):
    if peers.missing_peer("torch-pruning"):
        pytest.skip(peers.missing_peer("torch-pruning"))
    model, x, keep = _tiny_resnet()
    dense = ato.measure.count_macs(model, x)
    cb = peers.TorchPruningCallback(0.5, [1], x, keep, dense, torch.randn(4, 1, 8, 8))
    low, high = cb._removed_after(model, 0.3), cb._removed_after(model, 0.6)
    assert 0 < low < high < 1
    ratio, removed = peers.search_setting(lambda r: cb._removed_after(model, r), 0.5, 0.0, 0.95)
    assert abs(removed - 0.5) < 0.05
    assert ato.measure.count_macs(model, x) == dense  # the searches worked on copies


@pytest.mark.parametrize("channels_last", [True, False])
def test_torch_pruning_cut_keeps_the_models_memory_layout(peers, channels_last):
    # a channels-last run (``--set run.channels_last=true``) must time Torch-Pruning's compact network in the
    # same layout as every other method's, not a mix of row-major slices and channels-last tensors
    if peers.missing_peer("torch-pruning"):
        pytest.skip(peers.missing_peer("torch-pruning"))
    model, x, keep = _tiny_resnet()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cb = peers.TorchPruningCallback(0.5, [1], x, keep, ato.measure.count_macs(model, x), torch.randn(4, 1, 8, 8))
    cb._prune(model, 0.5)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1]
    assert ato.measure.count_macs(model, x) < cb.dense_macs
    want = torch.channels_last if channels_last else torch.contiguous_format
    assert all(w.is_contiguous(memory_format=want) for w in convs)


def test_oto_group_sparsity_maps_monotonically_to_macs(peers, tmp_path):
    if peers.missing_peer("oto-hesso"):
        pytest.skip(peers.missing_peer("oto-hesso"))
    model, x, keep = _tiny_resnet()
    params = [f"{n}.{p}" for n in keep for p, _ in model.get_submodule(n).named_parameters()]
    dense = ato.measure.count_macs(model, x)
    cb = peers.OtoHessoCallback(0.5, 1, 4, 1, x, params, dense, torch.randn(4, 1, 8, 8), str(tmp_path))
    batch = (torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    low, high = cb._trial(model, 0.3, batch), cb._trial(model, 0.7, batch)
    assert 0 < low < high < 1
    assert ato.measure.count_macs(model, x) == dense  # the trials worked on copies


# ------------------------------------------------------------------------------------------------ variants, merge
def test_method_options_parse(cells):
    assert cells.split_method("ato-freeze") == ("ato-freeze", {})
    assert cells.split_method("ato-freeze[variant=paper;hyper_step=2]") == (
        "ato-freeze", {"variant": "paper", "hyper_step": 2}
    )
    assert cells.parse_methods("dense, ato-freeze[variant=decide;decide_at=0.3],l1-oneshot") == [
        "dense", "ato-freeze[variant=decide;decide_at=0.3]", "l1-oneshot"
    ]
    with pytest.raises(ValueError, match="takes no options"):
        cells.split_method("torch-pruning[steps=3]")
    with pytest.raises(ValueError, match="key=value"):
        cells.split_method("ato[variant]")
    spec = cells.CellSpec("resnet20", "ato-freeze[variant=decide]", 0.5, 1, Config(), "/tmp")
    assert spec.base == "ato-freeze" and spec.options == {"variant": "decide"}
    assert "[" not in spec.name and "=" not in spec.name and spec.name.startswith("resnet20-s1-ato-freeze")
    options = cells.cell_config(spec).prune.options
    assert options["variant"] == "decide" and options["surgery"] == "freeze"
    # the space option, as the docs write it: the int 0 of a method string passes the config check as False
    spec = cells.CellSpec("resnet20", "ato-freeze[split_fixed=0]", 0.5, 1, Config(), "/tmp")
    assert cells.cell_config(spec).prune.options["split_fixed"] is False


def test_bad_method_options_are_a_usage_error(compare, capsys):
    with pytest.raises(SystemExit) as exc:
        compare.parse_args(["--quick", "--methods", "dense,oto-hesso[x=1]"])
    assert exc.value.code == 2 and "takes no options" in capsys.readouterr().err


@pytest.mark.slow
def test_variant_cells_and_merge(compare, quick, tmp_path):
    """A method with its own options runs as its own row; --merge joins it to another invocation's table."""
    second = tmp_path / "variant"
    with contextlib.redirect_stdout(io.StringIO()):
        code = compare.main(["--quick", "--methods", "dense,ato-freeze[variant=decide]", "--out", str(second),
                             "--quiet"])  # fmt: skip
    assert code == 0
    rows = json.loads((second / "results.json").read_text())["rows"]
    variant = [r for r in rows if r["method"] == "ato-freeze[variant=decide]"]
    assert len(variant) == 1 and not variant[0]["error"] and "variant=decide" in variant[0]["setting"]
    assert variant[0]["freeze_hamming"] == 0  # the decide variant cuts the mask it shrank
    merged = tmp_path / "merged"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = compare.main(["--merge", f"{quick['out']},{second}", "--out", str(merged)])
    assert code == 0, stdout.getvalue()
    result = json.loads((merged / "results.json").read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods.count("dense") == 1  # the same seed's dense run of both invocations, kept once
    assert "ato-freeze" in methods and "ato-freeze[variant=decide]" in methods
    assert len(result["rows"]) == len(quick["result"]["rows"]) + 1
    md = (merged / "results.md").read_text()
    assert "| resnet20 | ato-freeze[variant=decide] |" in md and "merged_from" in md
    # each row keeps the time ratio of its own invocation
    orig = {r["method"]: r for r in quick["result"]["rows"]}
    for r in result["rows"]:
        if r["method"] in orig and r["method"] != "dense":
            assert r["run_ratio"] == orig[r["method"]]["run_ratio"]


def test_merge_refuses_other_recipes_and_overlaps(compare, tmp_path, capsys):
    def fake(folder: str, epochs: int, top1: float) -> Path:
        path = tmp_path / folder
        path.mkdir()
        row = {"model": "resnet20", "method": "l1-oneshot", "target_pct": 50.0, "seed": 0, "test_top1": top1}
        args = {k: None for k in compare.RECIPE_KEYS} | {"epochs": epochs, "model_list": ["resnet20"],
                                                          "target_list": [0.5], "jobs": 1}  # fmt: skip
        (path / "results.json").write_text(json.dumps({"complete": True, "args": args, "rows": [row],
                                                       "environment": {}}))  # fmt: skip
        return path

    a, b, c = fake("a", 4, 80.0), fake("b", 12, 80.0), fake("c", 4, 81.0)
    assert compare.main(["--merge", f"{a},{b}", "--out", str(tmp_path / "m1")]) == 2
    assert "another recipe" in capsys.readouterr().err
    assert compare.main(["--merge", f"{a},{c}", "--out", str(tmp_path / "m2")]) == 2
    assert "in both" in capsys.readouterr().err
    assert compare.main(["--merge", f"{a},{tmp_path / 'nothing'}", "--out", str(tmp_path / "m3")]) == 2
    assert "cannot read" in capsys.readouterr().err
    # DIR[methods] takes only those rows: the overlap with c is left out, a named method must exist
    assert compare.main(["--merge", f"{a},{c}[dense]", "--out", str(tmp_path / "m4")]) == 2
    assert "has no rows of dense" in capsys.readouterr().err
    assert compare.main(["--merge", f"{a},{c}[l1-oneshot]", "--out", str(tmp_path / "m5")]) == 2  # still overlaps
    capsys.readouterr()


def test_merge_takes_only_the_named_methods_of_a_folder(compare, quick, tmp_path):
    """DIR[m1;m2] keeps those methods' rows of DIR, labels with their own [options] included."""
    assert compare.parse_methods("dense;ato-freeze[variant=paper;hyper_step=2]", sep=";") == [
        "dense", "ato-freeze[variant=paper;hyper_step=2]"
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        code = compare.main(["--merge", f"{quick['out']}[dense;l1-oneshot]", "--out", str(tmp_path / "m")])
    assert code == 0
    rows = json.loads((tmp_path / "m" / "results.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["dense", "l1-oneshot"]


def test_merge_takes_delta_top1_from_another_invocations_dense_run(compare, quick, tmp_path):
    """An invocation without dense cells gets its Δ top-1 from the dense run of the same seed elsewhere."""
    res = json.loads((quick["out"] / "results.json").read_text())
    dense = [r for r in res["rows"] if r["method"] == "dense"]
    pruned = [r for r in res["rows"] if r["method"] == "l1-oneshot"]
    for name, rows in (("dense", dense), ("pruned", pruned)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({**res, "rows": rows}))
    pruned[0]["top1_delta_pp"] = None  # as an invocation without a dense run leaves it
    (tmp_path / "pruned" / "results.json").write_text(json.dumps({**res, "rows": pruned}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert compare.main(["--merge", f"{tmp_path / 'dense'},{tmp_path / 'pruned'}", "--out",
                             str(tmp_path / "m")]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "m" / "results.json").read_text())["rows"]
    l1 = next(r for r in rows if r["method"] == "l1-oneshot")
    assert l1["top1_delta_pp"] == pytest.approx(l1["test_top1"] - dense[0]["test_top1"])


# ------------------------------------------------------------------------------------------------ --interleave
def test_turnstile_gives_turns_round_robin_and_skips_who_left(compare):  # compare: bench/ on sys.path
    import multiprocessing
    import threading

    from _turns import Turnstile

    ts = Turnstile(multiprocessing.get_context("spawn"), 3)
    order: list[int] = []

    def player(i: int, steps: int) -> None:
        for _ in range(steps):
            ts.wait(i)
            order.append(i)
            ts.pass_turn(i)
        ts.leave(i)

    threads = [threading.Thread(target=player, args=(i, n)) for i, n in ((0, 3), (1, 1), (2, 3))]
    for t in reversed(threads):  # started in any order: the turns still go 0, 1, 2, ...
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert order == [0, 1, 2, 0, 2, 0, 2]  # 1 left after one step and is skipped from then on


@pytest.mark.slow
def test_interleaved_run_times_each_cell_by_its_own_turns_and_keeps_the_accuracies(compare, quick, tmp_path):
    out = tmp_path / "interleaved"
    with contextlib.redirect_stdout(io.StringIO()):
        code = compare.main(["--quick", "--methods", "dense,l1-oneshot", "--interleave", "--out", str(out),
                             "--quiet"])  # fmt: skip
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "l1-oneshot"} and not any(r["error"] for r in rows.values())
    sequential = {r["method"]: r for r in quick["result"]["rows"]}
    for method, r in rows.items():
        assert r["timing"] == "interleaved" and r["run_s"] > 0 and len(r["epoch_times"]) == 2
        # each cell runs in its own process, seeded as in a sequential run: the same training, the same result
        assert r["test_top1"] == sequential[method]["test_top1"], method
        assert sum(r["epoch_times"]) <= r["run_s"]  # the run counts the set-up and export turns too
    assert "interleaved timing" in (out / "results.md").read_text()
    with pytest.raises(SystemExit):
        compare.parse_args(["--quick", "--interleave", "--jobs", "2"])


# ------------------------------------------------------------------------------------------------ documented commands
def _documented_compare_commands() -> list[tuple[str, list[str]]]:
    """Every ``bench/compare.py`` command line in the ```bash blocks of README.md, bench/README.md and docs/
    (except those run with ``PYTHONPATH=`` pointing at an older checkout: they take that tree's flags)."""
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", root / "bench" / "README.md", *sorted((root / "docs").glob("*.md"))]
    found = []
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", "").splitlines():  # bash joins a backslash-newline, quoted or not
                if "compare.py" not in line or line.lstrip().startswith(("#", "PYTHONPATH=")):
                    continue
                words = shlex.split(line, comments=True)
                at = next(i for i, w in enumerate(words) if w.endswith("compare.py"))
                found.append((f"{page.relative_to(root)}: {line.strip()[:90]}", words[at + 1 :]))
    return found


def test_documented_compare_commands_are_found():
    commands = _documented_compare_commands()
    assert len(commands) >= 20  # docs/benchmarks.md alone names ~30; a broken extraction finds none
    assert any("--merge" in argv for _, argv in commands)


@pytest.mark.parametrize("where, argv", _documented_compare_commands(), ids=lambda v: "" if isinstance(v, list) else v)
def test_documented_compare_commands_still_parse(compare, cells, where, argv):
    """A benchmark command the docs print must still run as printed: its flags parse, every method exists and
    every method option is one the method accepts (checked without training: ATO's options build a schedule
    for the run's length, l1/magnitude build their pruner on a tiny net)."""
    args = compare.parse_args(argv)
    if args.merge is not None:
        return
    steps = args.epochs * math.ceil((args.train_subset or 60_000) / args.batch_size)
    from autotrainonce.pruners.callback import SPACE_OPTIONS  # make_callback takes these before the method

    for spec in compare.cell_specs(args, Config()):
        cfg = cells.cell_config(spec)
        if spec.base in ("ato", "ato-freeze"):
            ato_cfg = AtoConfig.from_options({k: v for k, v in cfg.prune.options.items() if k not in SPACE_OPTIONS})
            Schedule.build(ato_cfg.schedule(), steps)
        elif spec.base in ("l1-oneshot", "magnitude") and spec.options:
            net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
            name = "l1" if spec.base == "l1-oneshot" else "magnitude"
            options = {k: v for k, v in spec.options.items() if k not in SPACE_OPTIONS}
            ato.pruners.create(name, net, torch.randn(1, 1, 6, 6), ato.pruners.Flops(remove=spec.target),
                               total_steps=steps, **options)  # fmt: skip
