"""Training curves: a PNG from metrics.csv, with ATO's freeze and cut marked."""

from __future__ import annotations

import csv

import pytest

from autotrainonce.training.metrics import read_metrics
from autotrainonce.viz import curves_figure, plot_curves


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _rows(frozen, cut):
    return [
        {"epoch": e, "train_loss": 2.0 / e, "test_loss": 2.1 / e, "train_acc": 50 + e, "test_top1": 49 + e,
         "ato/frozen": f, "ato/cut": c}
        for e, f, c in zip((1, 2, 3, 4), frozen, cut)
    ]


def test_png_written_and_events_marked(tmp_path):
    _write(tmp_path / "metrics.csv", _rows((0, 0, 1, 1), (0, 0, 1, 1)))
    out = plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = curves_figure(read_metrics(tmp_path / "metrics.csv"))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "mask frozen (epoch 3)" in labels and "network cut (epoch 3)" in labels


def test_no_marks_for_a_dense_run(tmp_path):
    _write(tmp_path / "metrics.csv", _rows((0, 0, 0, 0), (0, 0, 0, 0)))
    fig = curves_figure(read_metrics(tmp_path / "metrics.csv"))
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert not any("frozen" in lb or "cut" in lb for lb in labels)


def test_empty_metrics_is_an_error(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n")
    with pytest.raises(ValueError, match="no rows"):
        plot_curves(tmp_path / "metrics.csv", tmp_path / "c.png")
