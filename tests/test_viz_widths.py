"""viz/widths.py: the widths chart keeps its title inside the figure and leaves matplotlib's backend alone."""

from __future__ import annotations

import matplotlib
import pytest
from PIL import Image

from autotrainonce.viz import plot_widths


def _summary(n: int) -> dict:
    groups = [{"name": f"layer{i}.conv1", "size": 16, "kept": 8 + i % 8} for i in range(n)]
    return {"groups": groups, "flops_removed": 0.5012, "params_removed": 0.4712,
            "target": {"kind": "flops", "remove": 0.5}}  # fmt: skip


@pytest.mark.parametrize("n", [3, 9, 40])
def test_title_fits_in_the_figure(tmp_path, n, monkeypatch):
    from matplotlib.figure import Figure

    seen = {}
    real = Figure.savefig

    def savefig(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        real(self, *a, **k)
        renderer = self.canvas.get_renderer()
        seen["title"] = self.axes[0].title.get_window_extent(renderer)
        seen["fig"] = self.bbox

    monkeypatch.setattr(Figure, "savefig", savefig)
    long_title = "ATO mask: 50.1% MACs, 47.1% params removed (target flops -50%) on resnet20 fashion-mnist seed 0"
    path = plot_widths(_summary(n), tmp_path / "w.png", title=long_title if n == 9 else None)
    assert Image.open(path).size[0] > 0
    t, f = seen["title"], seen["fig"]
    assert t.x0 >= f.x0 and t.x1 <= f.x1 and t.y1 <= f.y1, (t, f)


def test_backend_is_not_switched(tmp_path):
    before = matplotlib.get_backend()
    plot_widths(_summary(4), tmp_path / "w.png")
    assert matplotlib.get_backend() == before
