"""Side-by-side benchmark: ATO (this library) against Torch-Pruning, OTO/HESSO and L1 one-shot pruning.

Every method trains the same model on the same data with the same recipe (the library's Trainer: SGD with
Nesterov momentum, cosine LR, batch 128) for the same number of epochs, in one invocation on one machine;
each exported compact model is then measured the same way: test top-1, MACs and parameters removed, time per
epoch and per run relative to the dense run, CPU latency at batch 1 and 64 relative to the dense network.

    python bench/compare.py --model resnet20 --data fashion-mnist --epochs 5 --remove-flops 0.3,0.5,0.7
    python bench/compare.py --model resnet20 --epochs 1 --train-subset 3000 --remove-flops 0.5   # a short check
    python bench/compare.py --quick                                                          # CI smoke (digits)
    python bench/compare.py --merge runs/seed0,runs/seed1 --out runs/both   # one table from several invocations
    python bench/compare.py --epochs 4 --train-subset 8000 --interleave   # run times robust to machine drift

Writes results.md / results.csv / results.json and accuracy_vs_macs.png / kept_channels.png under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import multiprocessing
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    apply_defaults,
    check_models,
    check_threads,
    environment,
    paired_latency,
    parse_floats,
    parse_ints,
    parse_list,
    run_main,
    write_csv,
    write_json,
)
from _compare_cells import (  # noqa: E402
    LIBRARY_METHODS,
    METHODS,
    CellSpec,
    parse_methods,
    safe_run_cell,
    split_method,
    warm_up,
    worker_init,
)
from _compare_report import (  # noqa: E402
    COLUMNS,
    add_ratios,
    cut_table,
    order_rows,
    per_run_table,
    plot_accuracy,
    plot_target,
    plot_widths,
    results_table,
    summarize,
    widths_table,
)
from _turns import Turnstile  # noqa: E402

from autotrainonce import models  # noqa: E402
from autotrainonce.config import Config  # noqa: E402
from autotrainonce.measure import latency_ms  # noqa: E402
from autotrainonce.training.utils import resolve_device  # noqa: E402

log = logging.getLogger("bench.compare")

SCRIPT = "bench/compare.py"
DEFAULTS: dict[str, Any] = {
    "model": "resnet20", "data": "fashion-mnist", "epochs": 10, "remove_flops": "0.3,0.5,0.7", "seeds": "0",
    "batch_size": 128, "lr": 0.1, "prune_steps": 5, "jobs": 1,
}  # fmt: skip
QUICK: dict[str, Any] = {
    "model": "resnet20", "data": "digits", "epochs": 2, "remove_flops": "0.5", "seeds": "0",
    "batch_size": 64, "lr": 0.1, "prune_steps": 2, "jobs": 1,
}  # fmt: skip
# quick runs have ~40 steps: the ATO controller steps every 2 of them (default: every 20); 8x8 digits: no crop
QUICK_OVERRIDES: dict[str, Any] = {"data.augment": False, "prune.options": {"hyper_step": 2}}
PLOTS = ("accuracy_vs_macs.png", "kept_channels.png")


# ------------------------------------------------------------------------------------------------ arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; unset ones take the --quick or the normal defaults."""
    p = argparse.ArgumentParser(prog=SCRIPT, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help=f"model name(s), comma-separated (default {DEFAULTS['model']})")
    p.add_argument("--data", help="dataset: fashion-mnist (default) or digits (the --quick smoke run)")
    p.add_argument("--epochs", type=int, help=f"epochs of every run (default {DEFAULTS['epochs']})")
    p.add_argument("--remove-flops", help=f"fractions of MACs to remove (default {DEFAULTS['remove_flops']})")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all); a library "
                   "method may carry its own pruner options, e.g. ato-freeze[variant=paper;hyper_step=2], to put "
                   "settings side by side in one invocation")  # fmt: skip
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1 (default 0)")
    p.add_argument("--train-subset", type=int, help="train on the first N training images only")
    p.add_argument("--batch-size", type=int, help=f"training batch (default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, help=f"peak SGD learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--warmup-epochs", type=float, default=0.5, help="linear LR warm-up (default 0.5)")
    p.add_argument("--prune-window", default="0.2,0.51",
                   help="start,end of the peers' pruning window as fractions of training (default 0.2,0.51: "
                        "ATO's proximal start and mask freeze)")  # fmt: skip
    p.add_argument(
        "--prune-steps", type=int, help="Torch-Pruning pruning steps in the window (default 5; quick: 2)"
    )
    p.add_argument(
        "--hesso-periods",
        type=int,
        default=1,
        help="HESSO pruning periods in the window (default 1, OTO's own)",
    )
    p.add_argument("--device", default="auto", help="training device: auto (default), cpu, cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. --set prune.options.hyper_step=10 (YAML value)")  # fmt: skip
    p.add_argument(
        "--threads", type=int, help="torch intra-op threads per process (default: torch's; quick: 1)"
    )
    p.add_argument(
        "--jobs", type=int, help="cells run in parallel worker processes, 1 thread each (default 1)"
    )
    p.add_argument("--interleave", action="store_true",
                   help="time robustly on a noisy machine: the cells of one model and seed run in separate "
                        "processes but take one optimizer step each in turn, and each cell counts only its own "
                        "turns (same accuracies as a sequential run; slower drift hits every method alike)")  # fmt: skip
    p.add_argument("--latency-rounds", type=int, help="alternating dense/compact latency rounds (default 3)")
    p.add_argument("--out", type=Path, help="output folder (default runs/bench-compare-<timestamp>)")
    p.add_argument("--quick", action="store_true", help="digits, 2 epochs, 50%% only: a smoke run for CI")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    p.add_argument("--merge", metavar="DIR,DIR,...",
                   help="train nothing: merge the results.json of these --out folders (same recipe, e.g. one per "
                        "seed or method) into one table under --out; DIR[m1;m2] takes only those methods' rows "
                        "from DIR (e.g. to leave out an older default's rows)")  # fmt: skip
    args = p.parse_args(argv)
    if args.merge is not None:
        args.merge_list, args.merge_methods = [], []
        for item in parse_list(args.merge):
            folder, bracket, rest = item.partition("[")
            if bracket and not rest.endswith("]"):
                p.error(f"--merge {item!r}: write a folder's methods as DIR[method;method]")
            args.merge_list.append(Path(folder))
            args.merge_methods.append(set(parse_methods(rest[:-1], sep=";")) if bracket else None)
        if not args.merge_list or args.out is None:
            p.error("--merge needs at least one folder and an --out folder for the merged table")
        return args
    apply_defaults(args, DEFAULTS, QUICK)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.interleave and args.jobs > 1:
        p.error("--interleave computes one cell at a time (in turns); drop --jobs")
    if args.jobs > 1 and args.threads is None:
        args.threads = 1  # one thread per worker: the workers, not OpenMP, use the cores
    check_threads(p, args)
    try:
        args.model_list = parse_list(args.model)
        args.target_list = parse_floats(args.remove_flops)
        args.seed_list = parse_ints(args.seeds)
        window = parse_floats(args.prune_window)
        args.method_list = parse_methods(args.methods) if args.methods else list(METHODS)
        bases = [split_method(m)[0] for m in args.method_list]
    except ValueError as exc:
        p.error(f"bad list: {exc}")
    if not args.model_list or not args.seed_list or not args.method_list:
        p.error("--model, --seeds and --methods need at least one entry")
    check_models(p, args.model_list)
    bad_methods = [m for m in bases if m not in METHODS]
    if bad_methods:
        p.error(f"unknown method(s) {bad_methods}; choose from {', '.join(METHODS)}")
    if len(set(args.method_list)) != len(args.method_list):
        p.error(f"--methods lists a method twice: {args.methods}")
    if any(m != "dense" for m in bases) and not args.target_list:
        p.error("--remove-flops needs at least one target")
    if any(not 0.0 < t < 1.0 for t in args.target_list):
        p.error(f"--remove-flops takes fractions in (0, 1), got {args.target_list}")
    if len(window) != 2 or not 0.0 <= window[0] <= window[1] <= 1.0:
        p.error("--prune-window takes start,end with 0 <= start <= end <= 1")
    args.window = (window[0], window[1])
    if args.epochs < 1 or args.prune_steps < 1 or args.hesso_periods < 1:
        p.error("--epochs, --prune-steps and --hesso-periods must be at least 1")
    if args.out is None:
        args.out = Path("runs") / f"bench-compare-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return args


def cell_specs(args: argparse.Namespace, base: Config) -> list[CellSpec]:
    """Every cell: for each seed and model, dense first, then each pruning method at each target."""
    specs = []
    for seed in args.seed_list:
        for model in args.model_list:
            for method in args.method_list:
                for target in [None] if split_method(method)[0] == "dense" else args.target_list:
                    specs.append(CellSpec(model, method, target, seed, base, str(args.out), args.window,
                                          args.prune_steps, args.hesso_periods))  # fmt: skip
    return sorted(specs, key=lambda s: (s.seed, args.model_list.index(s.model), s.base != "dense"))


# ------------------------------------------------------------------------------------------------ latency
def measure_latency(rows: list[dict[str, Any]], rounds: int) -> None:
    """CPU latency at batch 1 and 64 of each compact model, alternating with the dense network of its model.

    Done after all training, in this process, so that no training job competes with the timing.
    """
    dense_nets: dict[tuple, torch.nn.Module] = {}
    for r in rows:
        if r.get("error") or not r.get("compact_path"):
            continue
        try:
            key = (r["model"], r["num_classes"], r["in_channels"])
            if key not in dense_nets:
                dense_nets[key] = models.create(r["model"], num_classes=r["num_classes"],
                                                in_channels=r["in_channels"]).eval()  # fmt: skip
            dense = dense_nets[key]
            compact = torch.load(r["compact_path"], weights_only=False).eval()  # our own file, written above
            x64 = torch.load(Path(r["run_dir"]) / "probe.pt")
            for b, xb in ((1, x64[:1]), (64, x64)):
                if split_method(r["method"])[0] == "dense":
                    ms = latency_ms(dense, xb, repeats=_repeats(dense, xb, rounds), warmup=2)
                    r.update({f"lat{b}_ms": ms, f"lat{b}_dense_ms": ms, f"lat{b}_ratio": 1.0})
                    continue
                dense_ms, compact_ms = paired_latency(dense, compact, xb, rounds=rounds, seconds=0.1 * rounds)
                r.update(
                    {
                        f"lat{b}_ms": compact_ms,
                        f"lat{b}_dense_ms": dense_ms,
                        f"lat{b}_ratio": compact_ms / dense_ms,
                    }
                )
        except Exception as exc:  # a timing problem must not lose the trained results
            log.warning("latency of %s %s failed: %s", r["model"], r["method"], exc)


def _repeats(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> int:
    """Enough repeats for about 0.1 s per round (3 to 50)."""
    probe = latency_ms(model, x, repeats=1, warmup=1)
    return int(min(50, max(3, 100.0 * rounds / max(probe, 1e-3))))


# ------------------------------------------------------------------------------------------------ output
NOTES = """\
Columns: *MACs/params removed*: `autotrainonce.measure.count_macs` / `count_params` of the compact model
against the dense architecture, per image. *top-1*: test top-1 of the compact model (dense row: the dense
model); *Δ top-1*: against the dense run of the same seed. *epoch s*: mean training time per epoch (first to
last step, pruning work inside the steps included); *run s*: the whole cell from data set-up to the compact
model in hand (pruning searches, export / `construct_subnet` included; the final test evaluation and the
latency measurement excluded). *× dense* divides by the dense run of the same model and seed **in this
invocation**. *pre-cut epoch ×*: mean time of the epochs that end before the pruning window does (ATO's search
and ramp, before any method's last cut) over the same epochs of the dense run (with `data.holdout_fraction` above 0
ATO's epochs have that many fewer steps). Latency: median CPU forward time, compact and dense measured alternately after all training.
*fine-tuning needed*: "yes" when producing the compact model changed what the network computes (relative
output change on 64 test images > 1e-3 at some cut) so that the method relies on training after the cut to
recover; "no" when the removed channels were already zero (the cut is exact). Every method trains for the
same epochs in total either way: nothing is trained beyond the budget. With several seeds: mean ± sample
standard deviation.

*At the cut*: *out Δ L2* is ||after − before|| / ||before|| of the outputs on the same 64 test images
(`autotrainonce.measure.relative_output_change`, the definition of the pruners' own `output_change`), the
largest over a method's removals; *out Δ max* is the per-run *cut Δ* (max |after − before| / max |before|).
ATO only, from `AutoTrainOnce.freeze_report` (docs/ato.md): *draw ≠ frozen* is the Hamming distance between
the last mask the proximal step shrank (the latest draw) and the frozen mask, as a share of the prunable
channels (count in brackets), split into *shrunk but kept* (dropped by the draw, kept at the freeze) and *cut
but never shrunk* (kept by the draw, dropped at the freeze); *kept ≈ 0* counts the channels the frozen mask
keeps whose norm (all parameter members) is at most 1e-3 × the median kept-channel norm of their group, just
before the freeze (exactly zero in brackets); *order: init / L1* is the mean over groups of the rank
correlation between the controller's channel order when the mask is decided and its order at initialisation
(1: unchanged; "—" when the heads start at zero, `head_init=0`) / the channels' L1 norms then. *Kept widths*: kept fraction of each prunable conv's output
channels in the compact model (averaged over seeds), as in kept_channels.png."""


def render(args: argparse.Namespace, env: dict[str, Any], rows: list[dict[str, Any]], done: bool) -> str:
    """results.md: the tables (results, at the cut, per run, kept widths), the notes and the environment."""
    summary = summarize(rows, args.model_list)
    target = _widths_target(args)
    parts = [
        f"# Pruning methods side by side on {args.data}" + ("" if done else " (partial)"),
        "",
        f"Models {', '.join(args.model_list)}; epochs per run {args.epochs}; batch {args.batch_size}; lr "
        f"{args.lr}; train subset {args.train_subset or 'all'}; seeds {args.seeds}; pruning window "
        f"{args.window[0]:g}-{args.window[1]:g} of training, {args.prune_steps} Torch-Pruning steps, {args.hesso_periods} HESSO period(s); jobs {args.jobs}; "
        f"torch threads per process {args.threads or torch.get_num_threads()}"
        + ("; interleaved timing (the cells of one model and seed take one optimizer step each in turn; each "
           "counts its own turns)." if getattr(args, "interleave", False) else "."),  # fmt: skip
        "",
        results_table(summary),
        "",
        "At the cut:",
        "",
        cut_table(summary),
        "",
        "Per run:",
        "",
        per_run_table(rows),
        "",
        f"Kept widths at {target:g}% MACs removed:" if target is not None else "",
        "",
        widths_table(summary, args.model_list, target),
        "",
        NOTES,
        "",
        "Environment:",
        "",
        *[f"- {k}: `{v}`" for k, v in env.items()],
    ]
    return "\n".join(parts) + "\n"


def _widths_target(args: argparse.Namespace) -> float | None:
    """The requested target (percent) closest to 50%: the one of the widths table and kept_channels.png."""
    return plot_target([100.0 * t for t in args.target_list])


def save(
    args: argparse.Namespace, env: dict[str, Any], rows: list[dict[str, Any]], done: bool, ratios: bool = True
) -> str:
    """Write results.csv / .md / .json (after every cell, so an interrupted run keeps what it measured).

    ``ratios=False`` (a merge) keeps each row's ratios to the dense run of its own invocation.
    """
    rows = order_rows(rows, args.model_list)
    if ratios:
        add_ratios(rows)
    out: Path = args.out
    write_csv(out / "results.csv", rows, COLUMNS)
    text = render(args, env, rows, done)
    (out / "results.md").write_text(text)
    summary = summarize(rows, args.model_list)
    write_json(out / "results.json", {
        "complete": done, "environment": env, "out": str(out),
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows, "summary": summary,
    })  # fmt: skip
    if done:
        plot_accuracy(summary, args.model_list, out / PLOTS[0])
        plot_widths(summary, args.model_list, _widths_target(args), out / PLOTS[1])
    return text


# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 when every library method finished (peers may fail), 1 otherwise, 2 on usage."""
    args = parse_args(argv)
    if args.merge is not None:
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return merge(args)
    return run_main(args, argv, QUICK_OVERRIDES, _run_all)


# the options that define the recipe: invocations may only be merged when these agree
# (threads too: on a CPU the number of torch threads changes float rounding, and so each run's trajectory)
RECIPE_KEYS = ("data", "epochs", "train_subset", "batch_size", "lr", "warmup_epochs", "window", "prune_steps",
               "hesso_periods", "set", "quick", "device", "threads")  # fmt: skip


def merge(args: argparse.Namespace) -> int:
    """Merge the results of several invocations (same recipe) into one results.md/csv/json under ``--out``.

    Each row keeps the time ratios of its own invocation (a ratio is only meaningful against the dense run
    timed beside it; an invocation without a dense run has none); Δ top-1 is taken against the dense run of
    the same model and seed from any invocation. A dense run present in several invocations is kept once, and
    its top-1 must agree (the same seed gives the same run), else the merge is refused. 0 on success, 2 on
    unusable input.
    """
    loaded = []
    for folder, only in zip(args.merge_list, args.merge_methods):
        path = folder / "results.json"
        try:
            res = json.loads(path.read_text())
            if only is not None:
                missing = only - {r["method"] for r in res["rows"]}
                if missing:
                    print(f"error: {folder} has no rows of {', '.join(sorted(missing))}; its methods are "
                          f"{', '.join(sorted({r['method'] for r in res['rows']}))}", file=sys.stderr)  # fmt: skip
                    return 2
                res["rows"] = [r for r in res["rows"] if r["method"] in only]
            loaded.append((folder, res))
        except (OSError, ValueError) as exc:
            print(f"error: cannot read {path}: {exc}; give --out folders of finished bench/compare.py runs",
                  file=sys.stderr)  # fmt: skip
            return 2
    first = loaded[0][1]["args"]
    for folder, res in loaded[1:]:
        diff = [k for k in RECIPE_KEYS if res["args"].get(k) != first.get(k)]
        if diff:
            detail = ", ".join(f"{k}: {first.get(k)!r} vs {res['args'].get(k)!r}" for k in diff)
            print(f"error: {folder} used another recipe than {loaded[0][0]} ({detail}); only runs of one recipe "
                  "can share a table (give settings of one method as method[key=value] instead of --set)",
                  file=sys.stderr)  # fmt: skip
            return 2
    rows: list[dict[str, Any]] = []
    seen: dict[tuple, tuple[Path, dict[str, Any]]] = {}
    for folder, res in loaded:
        if not res.get("complete"):
            log.warning("%s is a partial run (interrupted?): its finished cells are merged", folder)
        for r in res["rows"]:
            key = (r["model"], r["method"], r["target_pct"], r["seed"])
            if key in seen:
                other, kept = seen[key]
                if r["method"] == "dense" and abs(float(kept.get("test_top1", 0)) - float(r.get("test_top1", 0))) < 1e-6:
                    continue  # the same dense run again (one per invocation, for its time ratios)
                print(f"error: {r['model']} {r['method']} {r['target_pct']:g}% seed {r['seed']} is in both {other} "
                      f"and {folder} with different results; merge folders that do not overlap",
                      file=sys.stderr)  # fmt: skip
                return 2
            seen[key] = (folder, r)
            rows.append({**r, "source": str(folder)})
    merged = argparse.Namespace(**{**first, "out": args.out, "argv": args.argv})
    merged.model_list = list(dict.fromkeys(m for _, res in loaded for m in res["args"]["model_list"]))
    merged.target_list = sorted({t for _, res in loaded for t in res["args"]["target_list"]})
    merged.seeds = ",".join(str(s) for s in sorted({r["seed"] for r in rows}))
    merged.jobs = ",".join(sorted({str(res["args"]["jobs"]) for _, res in loaded}))
    env = dict(loaded[0][1]["environment"])
    env["merged_from"] = "; ".join(
        f"{folder} ({res['environment'].get('date')}, commit {res['environment'].get('git_commit')}: "
        f"{res['environment'].get('command')})" for folder, res in loaded
    )
    args.out.mkdir(parents=True, exist_ok=True)
    # Δ top-1 against the dense run of the same model and seed from any invocation (the same seed gives the
    # same dense run, see above); the time ratios stay those of each row's own invocation
    dense = {(r["model"], r["seed"]): r for r in rows if r["method"] == "dense" and not r.get("error")}
    for r in rows:
        ref = dense.get((r["model"], r["seed"]))
        if ref is not None and r.get("test_top1") is not None:
            r["top1_delta_pp"] = float(r["test_top1"]) - float(ref["test_top1"])
    text = save(merged, env, rows, done=all(res.get("complete") for _, res in loaded), ratios=False)
    print(text.split("\nPer run:")[0].rstrip())
    print(f"\nmerged {len(loaded)} invocations: {args.out}/results.md, results.csv, results.json")
    return 0


def _run_interleaved(args: argparse.Namespace, base: Config, specs: list[CellSpec], env: dict[str, Any],
                     level: int, done_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """``--interleave``: each group of cells (one model and seed) in its own processes, taking turns."""
    context = multiprocessing.get_context("spawn")
    groups: dict[tuple[int, str], list[CellSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.seed, spec.model), []).append(spec)
    rows: list[dict[str, Any]] = []
    for (seed, model), group in groups.items():
        log.info("seed %d, %s: %d cells in turns", seed, model, len(group))
        turnstile = Turnstile(context, len(group))
        init = (args.threads, level, base, args.model_list, args.method_list, turnstile)
        with ProcessPoolExecutor(len(group), mp_context=context, initializer=worker_init, initargs=init) as pool:
            futures = [pool.submit(safe_run_cell, dataclasses.replace(spec, turn=i)) for i, spec in enumerate(group)]
            for spec, future in zip(group, futures):
                try:
                    row = future.result()
                except Exception as exc:  # the worker process itself died
                    row = {"model": spec.model, "method": spec.method, "target_pct": spec.target_pct,
                           "seed": spec.seed, "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
                rows.append(row)
        save(args, env, done_rows + rows, done=False)
    return rows


def _run_all(args: argparse.Namespace, base: Config) -> int:
    env = environment(args.argv, SCRIPT, str(resolve_device(base.run.device)))
    specs = cell_specs(args, base)
    rows: list[dict[str, Any]] = []
    level = logging.WARNING if args.quiet else logging.INFO
    if getattr(args, "interleave", False):
        rows.extend(_run_interleaved(args, base, specs, env, level, rows))
    elif args.jobs == 1:
        log.info("warming up (data, imports, first kernels)")
        warm_up(base, args.model_list, args.method_list)
        for i, spec in enumerate(specs, 1):
            log.info("[%d/%d]", i, len(specs))
            rows.append(safe_run_cell(spec))
            save(args, env, rows, done=False)
    else:
        context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
        init = (args.threads, level, base, args.model_list, args.method_list)
        with ProcessPoolExecutor(
            args.jobs, mp_context=context, initializer=worker_init, initargs=init
        ) as pool:
            futures = {pool.submit(safe_run_cell, spec): spec for spec in specs}
            for i, future in enumerate(as_completed(futures), 1):
                spec = futures[future]
                try:
                    row = future.result()
                except Exception as exc:  # the worker process itself died
                    row = {"model": spec.model, "method": spec.method, "target_pct": spec.target_pct,
                           "seed": spec.seed, "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
                log.info(
                    "[%d/%d] %s done%s",
                    i,
                    len(specs),
                    spec.name,
                    f": {row['error']}" if row.get("error") else "",
                )
                rows.append(row)
                save(args, env, rows, done=False)
    log.info("measuring CPU latency of every compact model against its dense network")
    measure_latency(rows, args.latency_rounds)
    text = save(args, env, rows, done=True)
    print(text.split("\nPer run:")[0].rstrip())
    print(f"\nresults: {args.out}/results.md, results.csv, results.json, {', '.join(PLOTS)}")
    failed = [r for r in rows if r.get("error") and split_method(r["method"])[0] in LIBRARY_METHODS]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
