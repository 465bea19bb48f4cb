"""Tables, summary and plots of bench/compare.py (pure functions of the result rows, plus two PNG writers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    add_column_stats,
    fmt_stat,
    group_by_cell,
    markdown_table,
    mean_spread,
    seeds_text,
    values_of,
    with_ratio,
)

__all__ = [
    "COLUMNS",
    "add_ratios",
    "order_rows",
    "summarize",
    "results_table",
    "cut_table",
    "widths_table",
    "per_run_table",
    "plot_target",
    "plot_accuracy",
    "plot_widths",
]

# results.csv columns, in order (one row per cell: model, method, target, seed).
COLUMNS = [
    "model", "method", "target_pct", "seed", "macs_removed_pct", "params_removed_pct", "macs_gap_pp",
    "test_top1", "top1_delta_pp", "dense_macs", "compact_macs", "dense_params", "compact_params", "epochs",
    "steps_per_epoch", "train_images", "epoch_s", "epoch_ratio", "precut_epochs", "precut_epoch_s",
    "precut_ratio", "step_ms", "step_ratio", "run_s",
    "run_ratio", "timing", "search_s", "lat1_ms", "lat1_dense_ms", "lat1_ratio", "lat64_ms", "lat64_dense_ms",
    "lat64_ratio", "cut_change", "cut_change_l2", "freeze_hamming", "freeze_hamming_frac", "freeze_shrunk_kept",
    "freeze_cut_unshrunk", "freeze_kept_near_zero", "freeze_kept_near_zero_frac", "freeze_kept_zero", "freeze_init_order",
    "freeze_l1_order", "finetune", "setting", "run_dir", "warnings", "error",
]  # fmt: skip
# Ratio columns filled from the dense row of the same model and seed: (ratio, value).
RATIOS = [("epoch_ratio", "epoch_s"), ("precut_ratio", "precut_epoch_s"), ("step_ratio", "step_ms"),
          ("run_ratio", "run_s")]  # fmt: skip
METHOD_ORDER = ("dense", "ato", "ato-freeze", "torch-pruning", "oto-hesso", "l1-oneshot", "magnitude")


def _num(v: Any) -> float:
    """A float, NaN for anything missing or non-numeric."""
    if isinstance(v, bool) or v is None or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill the time ratios and the accuracy delta from the dense row of the same model and seed."""
    dense = {(r["model"], r["seed"]): r for r in rows if r["method"] == "dense" and not r.get("error")}
    for r in rows:
        d = dense.get((r["model"], r["seed"]))
        for ratio, value in RATIOS:
            num, den = _num(r.get(value)), _num(d.get(value)) if d else math.nan
            r[ratio] = num / den if den and math.isfinite(den) else math.nan
        k = int(r.get("precut_epochs") or 0)
        mine, ref = r.get("epoch_times"), d.get("epoch_times") if d else None
        if k and isinstance(mine, list) and isinstance(ref, list) and len(mine) >= k and len(ref) >= k:
            # before the cut: this method's epochs over the same epochs of the dense run (methods cut at
            # different steps, so the dense mean over its own pre-window epochs is not the reference)
            r["precut_ratio"] = sum(mine[:k]) / sum(ref[:k]) if sum(ref[:k]) > 0 else math.nan
        top, ref = _num(r.get("test_top1")), _num(d.get("test_top1")) if d else math.nan
        r["top1_delta_pp"] = top - ref


def order_rows(rows: list[dict[str, Any]], models: Sequence[str]) -> list[dict[str, Any]]:
    """Rows by model (as given), method (dense first), target, seed."""

    def key(r: dict[str, Any]) -> tuple:
        m = r["method"].split("[")[0]  # a variant (method[options]) sorts right after its method
        return (
            list(models).index(r["model"]) if r["model"] in models else len(models),
            METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER),
            r["method"],
            r["target_pct"],
            r["seed"],
        )

    return sorted(rows, key=key)


def summarize(rows: list[dict[str, Any]], models: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per (model, method, target): per-seed values of every numeric column, widths averaged."""
    out = []
    for (model, method, target), rs in group_by_cell(order_rows(rows, models)).items():
        ok = [r for r in rs if not r.get("error")]
        entry: dict[str, Any] = {"model": model, "method": method, "target_pct": target,
                                 "seeds": [r["seed"] for r in ok],
                                 "failed_seeds": [r["seed"] for r in rs if r.get("error")],
                                 "errors": sorted({r["error"] for r in rs if r.get("error")})}  # fmt: skip
        add_column_stats(entry, ok, COLUMNS, skip_bool=True)
        entry["finetune"] = "/".join(sorted({str(r.get("finetune", "?")) for r in ok})) or "—"
        entry["settings"] = [r.get("setting", "") for r in ok]
        widths: dict[str, list[float]] = {}
        for r in ok:
            for layer, w in (r.get("widths") or {}).items():
                widths.setdefault(layer, []).append(float(w))
        entry["widths"] = {layer: sum(ws) / len(ws) for layer, ws in widths.items()}
        entry["prunable_layers"] = next(
            (list(r["prunable_layers"]) for r in ok if r.get("prunable_layers")), []
        )
        out.append(entry)
    return out


def results_table(summary: list[dict[str, Any]]) -> str:
    """The main Markdown table: one line per model, method and target (mean ± sample std over seeds)."""
    header = ["model", "method", "requested", "MACs removed", "params removed", "top-1 %", "Δ top-1 (pp)",
              "epoch s (× dense)", "run s (× dense)", "latency b1 ms (×)", "latency b64 ms (×)",
              "fine-tuning needed", "seeds", "error"]  # fmt: skip
    body = []
    for e in summary:
        pruning = e["method"] != "dense"
        requested = f"{e['target_pct']:g}%" if pruning else "—"
        error = "; ".join(e["errors"])
        if not e["seeds"]:
            body.append([e["model"], e["method"], requested, *["—"] * 10, seeds_text(e), error])
            continue
        body.append([
            e["model"], e["method"], requested,
            f"{fmt_stat(values_of(e, 'macs_removed_pct'), 1)}%" if pruning else "—",
            f"{fmt_stat(values_of(e, 'params_removed_pct'), 1)}%" if pruning else "—",
            fmt_stat(values_of(e, "test_top1"), 2),
            fmt_stat(values_of(e, "top1_delta_pp"), 2, signed=True) if pruning else "—",
            with_ratio(e, "epoch_s", "epoch_ratio", 1, "s", hide_empty_ratio=True),
            with_ratio(e, "run_s", "run_ratio", 1, "s", hide_empty_ratio=True),
            with_ratio(e, "lat1_ms", "lat1_ratio", 2, "ms", hide_empty_ratio=True),
            with_ratio(e, "lat64_ms", "lat64_ratio", 1, "ms", hide_empty_ratio=True),
            e["finetune"] if pruning else "—",
            seeds_text(e), error,
        ])  # fmt: skip
    return markdown_table(header, body, align="lllrrrrrrrrlll")


def _sci(values: list[float]) -> str:
    """``"3.2e-01"`` for one value, ``"3.2e-01 ± 1.0e-02"`` for several, ``"—"`` for none (changes span decades)."""
    mean, spread, n = mean_spread(values)
    if n == 0:
        return "—"
    return f"{mean:.1e}" if n == 1 else f"{mean:.1e} ± {spread:.1e}"


def cut_table(summary: list[dict[str, Any]]) -> str:
    """What happened at the cut, one line per pruning method and target (mean ± sample std over seeds).

    Output change for every method; ATO also compares its frozen mask with the last draw the proximal step
    shrank, and counts the channels it keeps although they are already (near) zero.
    """
    header = ["model", "method", "requested", "out Δ L2 (rel.)", "out Δ max (rel.)", "draw ≠ frozen",
              "shrunk but kept", "cut but never shrunk", "kept ≈ 0 (= 0)", "order: init / L1", "seeds"]  # fmt: skip
    body = []
    for e in summary:
        if e["method"] == "dense" or not e["seeds"]:
            continue
        hamming = values_of(e, "freeze_hamming_frac")
        ato = mean_spread(hamming)[2] > 0  # ATO rows carry a freeze report

        def count(col: str, e: dict[str, Any] = e) -> str:
            return fmt_stat(values_of(e, col), 1 if len(e["seeds"]) > 1 else 0)

        body.append([
            e["model"], e["method"], f"{e['target_pct']:g}%",
            _sci(values_of(e, "cut_change_l2")), _sci(values_of(e, "cut_change")),
            f"{fmt_stat([100 * v for v in hamming], 1)}% ({count('freeze_hamming')})" if ato else "—",
            count("freeze_shrunk_kept") if ato else "—",
            count("freeze_cut_unshrunk") if ato else "—",
            f"{count('freeze_kept_near_zero')} ({count('freeze_kept_zero')})" if ato else "—",
            f"{_order(e, 'freeze_init_order')} / {_order(e, 'freeze_l1_order')}" if ato else "—",
            seeds_text(e),
        ])  # fmt: skip
    return markdown_table(header, body, align="lllrrrrrrrl")


def _order(entry: dict[str, Any], col: str) -> str:
    """Mean rank correlation over seeds, "—" where it is undefined (no controller, or heads started at zero)."""
    mean, _, n = mean_spread(values_of(entry, col))
    return "—" if n == 0 else f"{mean:+.2f}"


def widths_table(summary: list[dict[str, Any]], models: Sequence[str], target: float | None) -> str:
    """Kept fraction of every prunable conv's output channels at ``target`` (percent), one column per method."""
    parts = []
    for model in models:
        entries = [e for e in summary if e["model"] == model and e["seeds"] and e["widths"]
                   and e["method"] != "dense" and target is not None and abs(e["target_pct"] - target) < 1e-6]  # fmt: skip
        if not entries:
            continue
        entries.sort(key=lambda e: METHOD_ORDER.index(e["method"]) if e["method"] in METHOD_ORDER else 99)
        prunable = {name for e in entries for name in e.get("prunable_layers", [])}
        layers: list[str] = []
        for e in entries:  # the dense network's conv order; layers no method may change are left out
            layers += [n for n in e["widths"] if n not in layers and (not prunable or n in prunable)]
        body = [[model, name, *[_fraction(e["widths"].get(name)) for e in entries]] for name in layers]
        header = ["model", f"layer (kept fraction at {target:g}%)", *[e["method"] for e in entries]]
        parts.append(markdown_table(header, body, align="ll" + "r" * len(entries)))
    return "\n\n".join(parts) if parts else "(no completed pruning runs at this target)"


def _fraction(value: Any) -> str:
    v = _num(value)
    return "—" if math.isnan(v) else f"{v:.2f}"


def per_run_table(rows: list[dict[str, Any]]) -> str:
    """Every cell on its own, with the method's setting (peer configuration) and any error."""
    header = ["model", "method", "requested", "seed", "MACs removed", "top-1 %", "epoch ×", "pre-cut epoch ×",
              "run ×", "cut Δ (rel.)", "cut Δ L2", "draw ≠ frozen", "setting", "error"]  # fmt: skip
    body = []
    for r in rows:

        def f(col: str, digits: int, r: dict[str, Any] = r) -> str:
            v = _num(r.get(col))
            return "—" if math.isnan(v) else f"{v:.{digits}f}"

        cut, l2 = _num(r.get("cut_change")), _num(r.get("cut_change_l2"))
        hamming = _num(r.get("freeze_hamming_frac"))
        body.append([r["model"], r["method"], f"{r['target_pct']:g}%" if r["method"] != "dense" else "—",
                     r["seed"], f("macs_removed_pct", 1), f("test_top1", 2), f("epoch_ratio", 2),
                     f("precut_ratio", 2), f("run_ratio", 2), "—" if math.isnan(cut) else f"{cut:.1e}",
                     "—" if math.isnan(l2) else f"{l2:.1e}",
                     "—" if math.isnan(hamming) else f"{100 * hamming:.1f}%",
                     str(r.get("setting") or "").replace("|", "/"),
                     str(r.get("error") or "").replace("|", "/")])  # fmt: skip
    return markdown_table(header, body, align="lllrrrrrrrrrll")


def plot_target(targets: Sequence[float], wanted: float = 50.0) -> float | None:
    """The requested target (in percent) closest to ``wanted``; None without targets."""
    return min(targets, key=lambda t: (abs(t - wanted), t)) if targets else None


def _style(method: str) -> dict[str, Any]:
    """Marker and line style per method, so that methods with equal numbers (ato, ato-freeze) stay visible."""
    styles = {"ato": ("o", "-"), "ato-freeze": ("s", "--"), "torch-pruning": ("^", "-"),
              "oto-hesso": ("D", "-."), "l1-oneshot": ("v", ":"), "magnitude": ("^", ":")}  # fmt: skip
    marker, line = styles.get(method, (".", "-"))
    return {"marker": marker, "linestyle": line}


def _figure(n: int, width: float = 6.0, height: float = 4.2) -> tuple[Any, Any, list[Any]]:
    """A matplotlib Figure with ``n`` side-by-side axes, drawn with the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * max(1, n), height), constrained_layout=True)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, n), squeeze=False)[0]
    return fig, canvas, list(axes)


def _legend_or_note(ax: Any, has_lines: bool, note: str) -> None:
    """A light grid, and a legend when ``ax`` has lines, else ``note`` in its middle."""
    ax.grid(alpha=0.3)
    if has_lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)


def plot_accuracy(summary: list[dict[str, Any]], models: Sequence[str], path: Path) -> None:
    """accuracy vs MACs removed: a line per method (error bars: spread over seeds), dense as a horizontal line."""
    fig, _, axes = _figure(len(models))
    for ax, model in zip(axes, models):
        entries = [e for e in summary if e["model"] == model and e["seeds"]]
        for e in entries:
            if e["method"] == "dense":
                mean, spread, _ = mean_spread(values_of(e, "test_top1"))
                ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"dense ({mean:.2f}%)")
                if spread > 0:
                    ax.axhspan(mean - spread, mean + spread, color="black", alpha=0.08)
        methods = [m for m in METHOD_ORDER if m != "dense"]
        methods += sorted({e["method"] for e in entries} - set(METHOD_ORDER))
        for method in methods:
            pts = sorted((e for e in entries if e["method"] == method), key=lambda e: e["target_pct"])
            if not pts:
                continue
            xs = [mean_spread(values_of(e, "macs_removed_pct")) for e in pts]
            ys = [mean_spread(values_of(e, "test_top1")) for e in pts]
            ax.errorbar([x[0] for x in xs], [y[0] for y in ys], xerr=[x[1] for x in xs], yerr=[y[1] for y in ys],
                        capsize=3, label=method, **_style(method))  # fmt: skip
        ax.set_title(model)
        ax.set_xlabel("MACs removed (%)")
        ax.set_ylabel("test top-1 of the compact model (%)")
        _legend_or_note(ax, bool(entries), "no completed runs")
    fig.savefig(path, dpi=110)


def plot_widths(
    summary: list[dict[str, Any]], models: Sequence[str], target: float | None, path: Path
) -> None:
    """Kept fraction of every conv's output channels at ``target`` (percent), one line per method."""
    fig, _, axes = _figure(len(models), width=9.0, height=4.6)
    for ax, model in zip(axes, models):
        entries = [e for e in summary if e["model"] == model and e["seeds"] and e["widths"]
                   and e["method"] != "dense" and target is not None and abs(e["target_pct"] - target) < 1e-6]  # fmt: skip
        prunable = {name for e in entries for name in e.get("prunable_layers", [])}
        layers: list[str] = []
        for e in entries:  # the dense network's conv order; layers no method may change are left out
            layers += [
                name for name in e["widths"] if name not in layers and (not prunable or name in prunable)
            ]
        for e in sorted(
            entries, key=lambda e: METHOD_ORDER.index(e["method"]) if e["method"] in METHOD_ORDER else 99
        ):
            ys = [e["widths"].get(name, math.nan) for name in layers]
            ax.plot(range(len(layers)), ys, label=e["method"], **_style(e["method"]))
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=90, fontsize=6)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("kept fraction of output channels")
        ax.set_title(
            f"{model}: kept channels per conv at {target:g}% MACs removed" if target is not None else model
        )
        _legend_or_note(ax, bool(entries), "no completed pruning runs")
    fig.savefig(path, dpi=110)
