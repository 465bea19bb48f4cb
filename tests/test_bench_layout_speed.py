"""Smoke test of bench/layout_speed.py: it runs and prints one row per model, thread count and width.

No timing is asserted (bench/ never asserts timings); the compact variant must really be smaller.
"""

from __future__ import annotations

import torch

from bench_modules import load_bench_script


def test_layout_speed_prints_a_row_per_variant(capsys):
    bench = load_bench_script("layout_speed.py", "bench_layout_speed")
    assert bench.main(["--models", "resnet20", "--threads", "1", "--batch", "2", "--size", "8", "--rounds", "1",
                       "--steps", "1"]) == 0  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| resnet20 |")]
    assert [r.split("|")[3].strip() for r in rows] == ["dense", "half"]


def test_the_half_width_variants_are_cut_and_laid_out_as_named():
    bench = load_bench_script("layout_speed.py", "bench_layout_speed")
    nets = bench._variants("resnet20", 8)
    dense, half = nets[("dense", "channels-last")], nets[("half", "channels-last")]
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in dense.parameters())
    w = half.layer1[0].conv1.weight
    assert w.shape[0] == 8 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert nets[("half", "row-major")].layer1[0].conv1.weight.is_contiguous()
