"""Benchmark of issue 4: dense training vs Auto-Train-Once at several MACs targets, in one invocation.

For every model and seed this trains the dense network and then ATO at each requested removal, all with the
same epochs and recipe (``run_training``, one run directory per cell under ``--out``), and measures each
exported compact model against the dense one: MACs and parameters removed, test top-1, training time per
epoch and per run (as ratios to the dense run of the same invocation), CPU latency at batch 1 and 64, and the
masked-vs-compact output difference. Prints a Markdown table and writes results.csv / .md / .json.

    python bench/ato_fmnist.py --models resnet20,resnet56 --epochs 10            # the full benchmark
    python bench/ato_fmnist.py --models resnet20 --targets 0.5 --epochs 1 --train-subset 6000
    python bench/ato_fmnist.py --quick                                           # CI smoke (digits)
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import logging
import math
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    EpochTimer,
    add_column_stats,
    apply_defaults,
    check_models,
    check_threads,
    environment,
    fmt_stat,
    group_by_cell,
    markdown_table,
    mean_spread,
    paired_latency,
    parse_floats,
    parse_ints,
    parse_list,
    probe_images,
    run_main,
    seeds_text,
    values_of,
    warm_up_models,
    with_ratio,
    write_csv,
    write_json,
)

from autotrainonce.config import Config, merge_overrides  # noqa: E402
from autotrainonce.errors import UserError  # noqa: E402
from autotrainonce.measure import count_macs, count_params, latency_ms  # noqa: E402
from autotrainonce.runner import RunResult, run_training  # noqa: E402
from autotrainonce.training.utils import resolve_device  # noqa: E402

log = logging.getLogger("bench.ato_fmnist")

SCRIPT = "bench/ato_fmnist.py"
DEFAULTS: dict[str, Any] = {
    "models": "resnet20,resnet56", "targets": "0.3,0.5,0.7", "epochs": 10, "seeds": "0",
    "batch_size": 128, "lr": 0.1, "data": "fashion-mnist",
}  # fmt: skip
QUICK: dict[str, Any] = {
    "models": "resnet20", "targets": "0.3,0.5,0.7", "epochs": 2, "seeds": "0",
    "batch_size": 64, "lr": 0.1, "data": "digits",
}  # fmt: skip
# quick runs have ~40 steps: let the controller take a step every 2 of them (default: every 20)
QUICK_OVERRIDES: dict[str, Any] = {"data.augment": False, "prune.options": {"hyper_step": 2}}

# Per-seed rows: results.csv columns, in order.
COLUMNS = [
    "model", "method", "target_pct", "seed", "macs_removed_pct", "params_removed_pct", "macs_gap_pp",
    "test_top1", "top1_delta_pp", "masked_top1", "dense_macs", "compact_macs", "dense_params",
    "compact_params", "epochs", "steps_per_epoch", "train_images", "epoch_s", "epoch_ratio", "step_ms",
    "step_ratio", "epoch_eval_s", "run_s", "run_ratio", "call_s", "lat1_ms", "lat1_dense_ms", "lat1_ratio", "lat64_ms",
    "lat64_dense_ms", "lat64_ratio", "max_abs_diff", "export_diff", "run_dir", "warnings", "error",
]  # fmt: skip
# Columns that are ratios to the dense row of the same model and seed: (ratio column, value column).
RATIOS = [("epoch_ratio", "epoch_s"), ("step_ratio", "step_ms"), ("run_ratio", "run_s")]


@dataclass(frozen=True)
class Cell:
    """One training run of the benchmark."""

    model: str
    seed: int
    target: float | None  # None: dense

    @property
    def method(self) -> str:
        return "dense" if self.target is None else "ato"

    @property
    def name(self) -> str:
        tag = "dense" if self.target is None else f"ato{self.target * 100:g}"
        return f"{self.model}-s{self.seed}-{tag}"

    def describe(self) -> str:
        what = "dense" if self.target is None else f"ATO {self.target:.0%} MACs"
        return f"{self.model} {what} seed {self.seed}"


# ------------------------------------------------------------------------------------------------ arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; unset ones take the --quick or the normal defaults."""
    p = argparse.ArgumentParser(
        prog=SCRIPT,
        description="Dense vs ATO at several MACs targets on Fashion-MNIST, in one invocation.",
    )
    p.add_argument("--models", help=f"comma-separated model names (default {DEFAULTS['models']})")
    p.add_argument("--targets", help=f"MACs fractions to remove (default {DEFAULTS['targets']})")
    p.add_argument("--epochs", type=int, help=f"epochs of every run (default {DEFAULTS['epochs']})")
    p.add_argument("--train-subset", type=int, help="train on the first N training images only")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1 (default 0)")
    p.add_argument("--batch-size", type=int, help=f"training batch (default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, help=f"peak SGD learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--warmup-epochs", type=float, default=0.5, help="linear LR warm-up (default 0.5)")
    p.add_argument("--data", help="fashion-mnist (default) or digits (quick smoke runs)")
    p.add_argument("--device", default="auto", help="training device: auto (default), cpu, cuda")
    p.add_argument("--out", type=Path, help="output folder (default runs/bench-ato-fmnist-<timestamp>)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="extra config override for every run, e.g. --set optim.weight_decay=1e-4 or "
        "--set prune.options.hyper_step=10 (repeatable; VALUE is read as YAML)",
    )  # fmt: skip
    p.add_argument("--latency-rounds", type=int, help="alternating dense/compact latency rounds (default 3)")
    p.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's choice; 1 with --quick)"
    )
    p.add_argument("--quick", action="store_true", help="digits, 2 epochs, resnet20: a smoke run for CI")
    p.add_argument("--quiet", action="store_true", help="log warnings only (no per-epoch lines)")
    args = p.parse_args(argv)
    apply_defaults(args, DEFAULTS, QUICK)
    check_threads(p, args)
    try:
        args.model_list = parse_list(args.models)
        args.target_list = parse_floats(args.targets)
        args.seed_list = parse_ints(args.seeds)
    except ValueError as exc:
        p.error(f"bad list: {exc}")
    if not args.model_list or not args.seed_list:
        p.error("--models and --seeds need at least one entry")
    check_models(p, args.model_list)
    bad = [t for t in args.target_list if not 0.0 < t < 1.0]
    if bad:
        p.error(f"targets must be fractions in (0, 1), got {bad}")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    if args.out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = Path("runs") / f"bench-ato-fmnist-{stamp}"
    return args


def cell_config(base: Config, cell: Cell) -> Config:
    """``base`` for one cell: model, seed, run name and (for ATO) the MACs target."""
    prune: dict[str, Any] = {"method": "none"}
    if cell.target is not None:
        # surgery="end" (the paper's mode) unless --set says otherwise: this benchmark checks the trained
        # dense network, masked, against its export; bench/compare.py has both modes side by side.
        options = {"surgery": "end", **dict(base.prune.options or {})}
        if options["surgery"] != "end":
            raise UserError("ato_fmnist.py measures surgery='end' only; use bench/compare.py for surgery='freeze'")
        prune = {"method": "ato", "remove_flops": cell.target, "options": options}
    return merge_overrides(
        base,
        {"model": {"name": cell.model}, "run": {"seed": cell.seed, "name": cell.name}, "prune": prune},
    )


# ------------------------------------------------------------------------------------------------ one cell
def warm_up(base: Config, model_names: Sequence[str]) -> None:
    """Pay one-time costs before any timed run: dataset files, lazy imports, first kernels of each model.

    Otherwise the first (dense) run would carry them and every ratio to dense would look better than it is.
    """
    import autotrainonce.ato  # noqa: F401  (the pruner and its plots import lazily in run_training)
    import autotrainonce.viz  # noqa: F401

    warm_up_models(base, model_names)


def _cpu(model: nn.Module) -> nn.Module:
    """An eval-mode, contiguous-format CPU copy (the original stays where it is)."""
    return copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()


@torch.no_grad()
def _masked_vs_compact(model: nn.Module, compact: nn.Module, pruner: Any, x: torch.Tensor) -> float:
    """Max abs difference between the masked trained model and the compact one on ``x`` (CPU, float32)."""
    with pruner.space.masked(model, pruner.current_masks()):
        ref = model(x)
    return float((ref.float() - compact(x).float()).abs().max())


def run_cell(cfg: Config, cell: Cell, dense_models: dict[tuple[str, int], nn.Module], rounds: int) -> dict:
    """Train one cell and measure it; returns its results row (ratios to dense are filled in later)."""
    row: dict[str, Any] = {
        "model": cell.model, "method": cell.method, "seed": cell.seed, "epochs": cfg.run.epochs,
        "target_pct": 0.0 if cell.target is None else 100.0 * cell.target,
    }  # fmt: skip
    timer = EpochTimer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        started = time.perf_counter()
        result: RunResult = run_training(cfg, callbacks=[timer])
        row["call_s"] = time.perf_counter() - started
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    for m in messages:
        log.warning("%s: %s", cell.name, m)
    row["warnings"] = " | ".join(messages)[:500]
    trainer = timer.trainer
    row["run_dir"] = str(result.run_dir)
    # set-up, training, evaluation and checkpoints; not what run_training does after fit for ATO runs
    # (export, compact evaluation, its own latency measurement, compact.onnx), which the dense run skips
    row["run_s"] = (timer.fit_end or time.perf_counter()) - started
    row["epoch_s"] = mean_spread(timer.train_seconds)[0]
    row["epoch_eval_s"] = mean_spread(r.get("epoch_time_s") for r in timer.rows)[0]
    row["steps_per_epoch"] = int(trainer.steps_per_epoch)
    row["step_ms"] = 1000.0 * row["epoch_s"] / max(1, row["steps_per_epoch"])
    row["train_images"] = len(trainer.train_loader.dataset)
    row["masked_top1"] = result.metrics.get("test_top1", math.nan)

    x64 = probe_images(trainer.eval_loader, 64)
    x1 = x64[:1]
    trained = _cpu(trainer.model)
    dense_macs, dense_params = count_macs(trained, x1), count_params(trained)
    row.update(dense_macs=dense_macs, dense_params=dense_params)
    if cell.target is None:
        dense_models[(cell.model, cell.seed)] = trained
        row.update(
            test_top1=row["masked_top1"], compact_macs=dense_macs, compact_params=dense_params,
            macs_removed_pct=0.0, params_removed_pct=0.0, macs_gap_pp=0.0, max_abs_diff=0.0,
        )  # fmt: skip
        for b, xb in ((1, x1), (64, x64)):
            ms = latency_ms(trained, xb, repeats=_repeats(trained, xb), warmup=2)
            row.update({f"lat{b}_ms": ms, f"lat{b}_dense_ms": ms, f"lat{b}_ratio": 1.0})
        return row

    assert result.compact is not None, "an ATO run returns its compact model"
    ato = timer.callback_of("ato")
    compact = _cpu(result.compact)
    macs, params = count_macs(compact, x1), count_params(compact)
    row.update(compact_macs=macs, compact_params=params)
    row["macs_removed_pct"] = 100.0 * (1.0 - macs / dense_macs)
    row["params_removed_pct"] = 100.0 * (1.0 - params / dense_params)
    row["macs_gap_pp"] = row["macs_removed_pct"] - row["target_pct"]
    row["test_top1"] = result.compact_metrics.get("top1", math.nan)
    export_diff = float(ato.pruner.export_report.get("max_abs_diff", math.nan)) if ato else math.nan
    own_diff = _masked_vs_compact(trained, compact, ato.pruner, x64) if ato else math.nan
    row["export_diff"] = export_diff
    row["max_abs_diff"] = max(d for d in (export_diff, own_diff) if not math.isnan(d)) if ato else math.nan
    reference = dense_models.get((cell.model, cell.seed), trained)  # same architecture if the dense run failed
    for b, xb in ((1, x1), (64, x64)):
        dense_ms, compact_ms = paired_latency(reference, compact, xb, rounds=rounds, seconds=0.1 * rounds)
        row.update({f"lat{b}_ms": compact_ms, f"lat{b}_dense_ms": dense_ms, f"lat{b}_ratio": compact_ms / dense_ms})
    return row


def _repeats(model: nn.Module, x: torch.Tensor, seconds: float = 0.5) -> int:
    """Enough repeats for about ``seconds`` of timing (3 to 50)."""
    probe = latency_ms(model, x, repeats=1, warmup=1)
    return int(min(50, max(3, seconds * 1000.0 / max(probe, 1e-3))))


# ------------------------------------------------------------------------------------------------ results
def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill the ratio and accuracy-delta columns from the dense row of the same model and seed."""
    dense = {(r["model"], r["seed"]): r for r in rows if r["method"] == "dense" and not r.get("error")}
    for r in rows:
        d = dense.get((r["model"], r["seed"]))
        for ratio, value in RATIOS:
            num, den = r.get(value), d.get(value) if d else None
            r[ratio] = num / den if d and num is not None and den else math.nan
        top, ref = r.get("test_top1"), d.get("test_top1") if d else None
        r["top1_delta_pp"] = top - ref if top is not None and ref is not None else math.nan


def _order(rows: list[dict[str, Any]], models_: list[str]) -> list[dict[str, Any]]:
    return sorted(
        rows, key=lambda r: (models_.index(r["model"]), r["method"] != "dense", r["target_pct"], r["seed"])
    )


def summarize(rows: list[dict[str, Any]], models_: list[str]) -> list[dict[str, Any]]:
    """One entry per (model, method, target) with every numeric column's per-seed values."""
    out = []
    for (model, method, target), rs in group_by_cell(_order(rows, models_)).items():
        ok = [r for r in rs if not r.get("error")]
        entry: dict[str, Any] = {"model": model, "method": method, "target_pct": target}
        entry["seeds"] = [r["seed"] for r in ok]
        entry["failed_seeds"] = [r["seed"] for r in rs if r.get("error")]
        add_column_stats(entry, ok, COLUMNS)
        out.append(entry)
    return out


def results_table(summary: list[dict[str, Any]]) -> str:
    """The main Markdown table (mean ± sample std over seeds where there are several)."""
    header = [
        "model", "method", "requested", "MACs removed", "params removed", "top-1 %", "Δ top-1 (pp)",
        "epoch s (× dense)", "step × dense", "run s (× dense)", "latency b1 ms (×)", "latency b64 ms (×)",
        "max abs diff masked/compact", "seeds",
    ]  # fmt: skip
    body = []
    for e in summary:
        ato = e["method"] == "ato"
        requested = f"{e['target_pct']:g}%" if ato else "—"
        if not e["seeds"]:
            body.append([e["model"], e["method"], requested, *["failed"] * 10, seeds_text(e)])
            continue
        body.append(
            [
                e["model"],
                e["method"],
                requested,
                f"{fmt_stat(values_of(e, 'macs_removed_pct'), 1)}%" if ato else "—",
                f"{fmt_stat(values_of(e, 'params_removed_pct'), 1)}%" if ato else "—",
                fmt_stat(values_of(e, "test_top1"), 2),
                fmt_stat(values_of(e, "top1_delta_pp"), 2, signed=True) if ato else "—",
                with_ratio(e, "epoch_s", "epoch_ratio", 1, "s"),
                f"{fmt_stat(values_of(e, 'step_ratio'), 2)}×" if ato else "—",
                with_ratio(e, "run_s", "run_ratio", 1, "s"),
                with_ratio(e, "lat1_ms", "lat1_ratio", 2, "ms"),
                with_ratio(e, "lat64_ms", "lat64_ratio", 1, "ms"),
                _sci(max(values_of(e, "max_abs_diff"), default=math.nan)) if ato else "—",
                seeds_text(e),
            ]
        )
    return markdown_table(header, body, align="lllrrrrrrrrrrl")


def _sci(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.1e}"


def goals(summary: list[dict[str, Any]], models_: list[str]) -> list[str]:
    """The three goals of issue 4, read off the summary (informational: timings are never asserted)."""
    lines = []
    for model in models_:
        ato = [e for e in summary if e["model"] == model and e["method"] == "ato" and e["seeds"]]
        if not ato:
            lines.append(f"- **{model}**: no completed ATO row")
            continue
        half = [e for e in ato if abs(e["target_pct"] - 50.0) < 1e-6]
        if half:
            d = mean_spread(values_of(half[0], "top1_delta_pp"))[0]
            verdict = "—" if math.isnan(d) else ("met" if d >= -0.5 else "missed")
            lines.append(f"- **{model}**, 50% removed: compact top-1 {d:+.2f} pp vs dense (goal ≥ −0.5 pp): {verdict}")
        else:
            lines.append(f"- **{model}**: no 50% row, accuracy goal not measured")
        gaps = [(e["target_pct"], mean_spread(values_of(e, "macs_gap_pp"))[0]) for e in ato]
        ok = all(abs(g) <= 2.0 for _, g in gaps)
        parts = ", ".join(f"{t:g}% → {t + g:.1f}% ({g:+.1f} pp)" for t, g in gaps)
        lines.append(f"- **{model}**, MACs removed vs requested: {parts} (goal within ±2 pp): {'met' if ok else 'missed'}")
        ratios = [(e["target_pct"], mean_spread(values_of(e, "epoch_ratio"))[0]) for e in ato]
        if any(math.isnan(r) for _, r in ratios):
            lines.append(f"- **{model}**, ATO epoch time: no dense row to compare with")
            continue
        ok = all(r <= 1.15 for _, r in ratios)
        steps = ", ".join(f"{e['target_pct']:g}%: {mean_spread(values_of(e, 'step_ratio'))[0]:.2f}×" for e in ato)
        parts = ", ".join(f"{t:g}%: {r:.2f}×" for t, r in ratios)
        lines.append(
            f"- **{model}**, ATO epoch time vs dense: {parts} (goal ≤ 1.15×, measured, not asserted): "
            f"{'met' if ok else 'missed'}; per step: {steps}"
        )
    return lines


def per_seed_table(rows: list[dict[str, Any]]) -> str:
    """Every run on its own (only written when there are several seeds)."""
    header = ["model", "method", "requested", "seed", "MACs removed", "top-1 %", "Δ top-1", "epoch ×", "run ×",
              "b1 ×", "b64 ×", "max diff", "error"]  # fmt: skip
    body = []
    for r in rows:
        def f(col: str, digits: int, r: dict[str, Any] = r) -> str:
            v = r.get(col)
            return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

        body.append([r["model"], r["method"], f"{r['target_pct']:g}%", r["seed"], f("macs_removed_pct", 1),
                     f("test_top1", 2), f("top1_delta_pp", 2), f("epoch_ratio", 2), f("run_ratio", 2),
                     f("lat1_ratio", 2), f("lat64_ratio", 2), _sci(r.get("max_abs_diff", math.nan)),
                     (r.get("error") or "").splitlines()[-1][:80] if r.get("error") else ""])  # fmt: skip
    return markdown_table(header, body, align="lllrrrrrrrrrl")


NOTES = """\
Columns: *MACs/params removed* are measured with `autotrainonce.measure` on the exported compact model vs the
dense architecture (per image); *top-1* is the compact model's (dense row: the dense model's); *Δ top-1* is
against the dense run of the same seed. *epoch s* is the mean training time per epoch (first to last step,
pruner steps included, evaluation excluded); *× dense* divides by the dense run of the same model and seed in
this invocation. ATO trains on the training set minus its held-out split (`data.holdout_fraction`, 5%), so
its epochs have fewer steps: *step × dense* compares time per optimiser step. *run s* is the whole
`run_training` call up to the end of training (data, set-up, epochs with evaluation and
checkpoints); `call_s` in results.csv is the whole call, which for ATO also exports, evaluates and times the
compact model and writes its files. Latency: median CPU forward time, compact and dense
measured alternately. *max abs diff masked/compact*: the larger of the export check and a check on 64 test images
(CPU, float32). With several seeds: mean ± sample standard deviation."""


def render(args: argparse.Namespace, env: dict[str, Any], rows: list[dict[str, Any]], done: bool) -> str:
    """results.md: environment, table, goals, notes (and per-seed rows with several seeds)."""
    summary = summarize(rows, args.model_list)
    parts = [
        f"# ATO benchmark on {args.data}" + ("" if done else " (partial)"),
        "",
        f"Epochs per run: {args.epochs}; batch {args.batch_size}; lr {args.lr}; train subset "
        f"{args.train_subset or 'all'}; seeds {args.seeds}; torch threads {torch.get_num_threads()}.",
        "",
        results_table(summary),
        "",
        "Goals:",
        "",
        *goals(summary, args.model_list),
        "",
    ]
    if len(args.seed_list) > 1 or any(r.get("error") for r in rows):
        parts += ["Per run:", "", per_seed_table(rows), ""]
    parts += [NOTES, "", "Environment:", ""]
    parts += [f"- {k}: `{v}`" for k, v in env.items()]
    return "\n".join(parts) + "\n"


def save(out: Path, args: argparse.Namespace, env: dict[str, Any], rows: list[dict[str, Any]], done: bool) -> str:
    """Write results.csv / .md / .json (again after every cell, so a crash keeps what was measured)."""
    rows = _order(rows, args.model_list)
    add_ratios(rows)
    write_csv(out / "results.csv", rows, COLUMNS)
    text = render(args, env, rows, done)
    (out / "results.md").write_text(text)
    write_json(
        out / "results.json",
        {"complete": done, "environment": env, "args": {k: v for k, v in vars(args).items() if k != "out"},
         "out": str(out), "rows": rows, "summary": summarize(rows, args.model_list)},
    )  # fmt: skip
    return text


# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every cell finished, 1 when some failed, 2 on a usage error."""
    return run_main(parse_args(argv), argv, QUICK_OVERRIDES, _run_all)


def _run_all(args: argparse.Namespace, base: Config) -> int:
    """Every cell in order, saving the results after each one; prints the table at the end."""
    env = environment(args.argv, SCRIPT, str(resolve_device(base.run.device)))
    cells = [Cell(m, s, t) for s in args.seed_list for m in args.model_list for t in [None, *args.target_list]]
    log.info("warming up (data, imports, first kernels)")
    warm_up(base, args.model_list)
    rows: list[dict[str, Any]] = []
    dense_models: dict[tuple[str, int], nn.Module] = {}
    for i, cell in enumerate(cells, 1):
        log.info("=== [%d/%d] %s -> %s", i, len(cells), cell.describe(), args.out / cell.name)
        try:
            rows.append(run_cell(cell_config(base, cell), cell, dense_models, args.latency_rounds))
        except Exception as exc:  # keep going: one failed cell must not lose a long benchmark
            log.error("%s failed:\n%s", cell.name, traceback.format_exc())
            rows.append({"model": cell.model, "method": cell.method, "seed": cell.seed,
                         "target_pct": 0.0 if cell.target is None else 100.0 * cell.target,
                         "run_dir": str(args.out / cell.name), "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
        save(args.out, args, env, rows, done=False)
    text = save(args.out, args, env, rows, done=True)
    print(text.split("\nColumns:")[0].rstrip())
    print(f"\nresults: {args.out}/results.md, results.csv, results.json")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
