"""Smoke test of bench/ato_fmnist.py: the --quick run on digits end to end, and its table helpers.

No accuracy and no timing is asserted: the numbers of a one-epoch run on 8x8 digits mean nothing.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from bench_modules import load_bench_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """bench/ato_fmnist.py imported as a module (it is a script, not part of the package)."""
    return load_bench_script("ato_fmnist.py", "bench_ato_fmnist")


def _row(bench: ModuleType, method: str, target: float, seed: int, top1: float, epoch_s: float) -> dict:
    row = {c: math.nan for c in bench.COLUMNS}
    row.update(model="resnet20", method=method, target_pct=target, seed=seed, test_top1=top1, epoch_s=epoch_s,
               step_ms=epoch_s, run_s=10 * epoch_s, macs_removed_pct=target, macs_gap_pp=0.0,
               error="")  # fmt: skip
    return row


def test_ratios_and_spread_across_seeds(bench):
    rows = [
        _row(bench, "dense", 0.0, 0, 90.0, 10.0),
        _row(bench, "dense", 0.0, 1, 92.0, 20.0),
        _row(bench, "ato", 50.0, 0, 89.0, 11.0),
        _row(bench, "ato", 50.0, 1, 92.0, 24.0),
    ]
    bench.add_ratios(rows)
    assert [r["epoch_ratio"] for r in rows] == pytest.approx([1.0, 1.0, 1.1, 1.2])
    assert [r["top1_delta_pp"] for r in rows[2:]] == pytest.approx([-1.0, 0.0])
    summary = bench.summarize(rows, ["resnet20"])
    assert [(e["method"], e["target_pct"], e["seeds"]) for e in summary] == [
        ("dense", 0.0, [0, 1]),
        ("ato", 50.0, [0, 1]),
    ]
    table = bench.results_table(summary)
    assert "1.15 ± 0.07×" in table and "-0.50 ± 0.71" in table  # mean ± sample std of the per-seed values
    goals = "\n".join(bench.goals(summary, ["resnet20"]))
    assert "-0.50 pp" in goals and "met" in goals and "1.15×" in goals


@pytest.mark.slow
def test_quick_run_writes_one_row_per_cell(bench, tmp_path, capsys):
    out = tmp_path / "bench"
    code = bench.main(["--quick", "--epochs", "1", "--out", str(out), "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "| model | method |" in stdout and "Goals:" in stdout

    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    cells = sorted((r["method"], float(r["target_pct"])) for r in rows)
    assert cells == [("ato", 30.0), ("ato", 50.0), ("ato", 70.0), ("dense", 0.0)]
    assert all(r["model"] == "resnet20" and r["seed"] == "0" and not r["error"] for r in rows)
    for r in rows:
        assert (Path(r["run_dir"]) / "metrics.csv").exists()
        if r["method"] != "ato":
            continue
        assert int(r["compact_params"]) < int(r["dense_params"])
        assert int(r["compact_macs"]) < int(r["dense_macs"])
        assert float(r["max_abs_diff"]) <= 1e-4
        assert float(r["macs_removed_pct"]) > 0
        for col in ("epoch_ratio", "run_ratio", "lat1_ratio", "lat64_ratio", "test_top1"):
            assert math.isfinite(float(r[col])), col  # measured; the values themselves are not checked

    assert "| resnet20 | ato | 50% |" in (out / "results.md").read_text()
    result = json.loads((out / "results.json").read_text())
    assert result["complete"] is True and len(result["rows"]) == 4 and len(result["summary"]) == 4
    env = result["environment"]
    assert env["torch"] and env["cpu_model"] and env["cpu_count"] >= 1 and "--quick" in env["command"]
