"""Smoke test of bench/soak.py: two short ATO jobs pass every check, and a failing check makes it exit 1."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from bench_modules import load_bench_script

SMALL = "resnet20,mobilenetv2_cifar"  # the cheapest zoo models: keeps the smoke test to a few seconds


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    """bench/soak.py imported as a module (it is a script, not part of the package)."""
    return load_bench_script("soak.py", "bench_soak")


def test_two_jobs_pass(soak, capsys, tmp_path):
    out_json = tmp_path / "soak.json"
    code = soak.main(["--jobs", "2", "--seed", "3", "--steps", "8", "--models", SMALL, "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 jobs in" in out and "2 ok, 0 failed" in out and "Failures" not in out
    jobs = json.loads(out_json.read_text())
    assert len(jobs) == 2 and all(not j["failures"] for j in jobs)
    for job in jobs:
        assert job["max_diff"] is not None and job["max_diff"] <= soak.EQUIV_TOL
        assert abs(job["removed"] - job["remove"]) <= 0.03
    assert {j["surgery"] for j in jobs} <= {"end", "freeze"}


def test_a_failed_check_is_reported_and_exits_1(soak, capsys):
    code = soak.main(["--jobs", "1", "--seed", "3", "--steps", "8", "--models", "resnet20",
                      "--tolerance", "-1"])  # fmt: skip  # no reduction is within a negative tolerance
    out = capsys.readouterr().out
    assert code == 1
    assert "0 ok, 1 failed" in out and "Failures" in out and "tolerance -1" in out


def test_jobs_are_reproducible(soak):
    names = soak.models.list_models()
    assert soak.draw_job(5, 7, 16, names) == soak.draw_job(5, 7, 16, names)
    assert soak.draw_job(5, 7, 16, names) != soak.draw_job(6, 7, 16, names)
