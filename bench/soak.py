"""Soak test: many short Auto-Train-Once jobs on random zoo models, targets and surgery modes.

    python bench/soak.py                      # 20 jobs, seed 0
    python bench/soak.py --jobs 50 --seed 7 --time-budget 900 --json soak.json

Every job draws a zoo model (with random options), a small input (CIFAR-style models at 16 or 32 px, ImageNet
ones at 32 px, 1 or 3 channels), a Flops or Params target and a surgery mode ("end" or "freeze"). It then runs
the public API on synthetic data: ``discover`` -> ``AutoTrainOnce`` for a few SGD steps through the freeze ->
``export``, and checks

- equivalence: the compact model's outputs equal the masked model's on a fresh batch (eval mode), at the end
  (surgery "end") or right at the cut (surgery "freeze", against a copy of the network taken just before it);
- exact cost: ``space.flops(mask)`` / ``space.params(mask)`` equal the compact model's measured MACs and
  parameters;
- the target: the achieved reduction of the targeted cost is within ``--tolerance`` of the request;
- sanity: finite outputs, a compact model smaller than the dense one, no exception anywhere.

It prints one row per job and a table of the failures, and exits 1 if any job failed (0 expected). Jobs are
reproducible from ``--seed``: job ``i`` draws everything from ``seed * 1000 + i``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autotrainonce import data, models
from autotrainonce.ato import AutoTrainOnce, Flops, Params
from autotrainonce.ato.resource import resolve_target
from autotrainonce.errors import SurgeryError, TargetError
from autotrainonce.measure import count_macs, count_params
from autotrainonce.space import discover
from autotrainonce.space.surgery import exact_math

CIFAR_STYLE = ("resnet20", "resnet32", "resnet56", "resnet110", "mobilenetv2_cifar", "vgg16_bn")
IMAGENET_STYLE = ("resnet18", "resnet34", "resnet50", "mobilenetv2")
NUM_CLASSES = 10
EQUIV_TOL = 1e-4  # max |masked - compact|, relative to the output scale (as the library's export check)


@dataclass
class Job:
    """One soak job: everything it draws, and what it measured."""

    index: int
    seed: int
    model: str
    options: dict[str, Any]
    input_shape: tuple[int, int, int]
    kind: str  # "flops" or "params"
    remove: float
    surgery: str
    steps: int
    seconds: float = 0.0
    removed: float | None = None
    max_diff: float | None = None
    failures: list[str] = field(default_factory=list)

    def describe(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.model}({opts})" if opts else self.model


def draw_job(index: int, seed: int, steps: int, names: list[str]) -> Job:
    """The random choices of job ``index`` (a pure function of ``seed`` and ``index``)."""
    rng = random.Random(seed * 1000 + index)
    name = rng.choice(names)
    options: dict[str, Any] = {}
    if name.startswith("resnet") and name in CIFAR_STYLE:
        options["shortcut"] = rng.choice(["A", "B"])
    if name.startswith("mobilenetv2"):
        options["width_mult"] = rng.choice([0.5, 1.0])
        options["dropout"] = 0.0
    if name in IMAGENET_STYLE:
        size = 32  # the ImageNet stems divide by 32: 32 px leaves a 1x1 map, enough to exercise every layer
        channels = 3
    else:
        size = rng.choice([16, 32]) if name not in ("resnet110", "vgg16_bn") else 16
        channels = rng.choice([1, 3])
    return Job(
        index=index, seed=seed * 1000 + index, model=name, options=options, input_shape=(channels, size, size),
        kind=rng.choice(["flops", "params"]), remove=round(rng.uniform(0.2, 0.6), 2),
        surgery=rng.choice(["end", "freeze"]), steps=steps,
    )  # fmt: skip


def _batches(job: Job, batch: int, count: int, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` normalised synthetic batches of ``job``'s input shape."""
    c, h, _ = job.input_shape
    ds = data.create(
        "synthetic", split, transform="eval", num_samples=batch * count, num_classes=NUM_CLASSES,
        image_size=h, in_channels=c, seed=job.seed,
    )  # fmt: skip
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = torch.tensor([ds[i][1] for i in range(len(ds))])
    return [(xs[i : i + batch], ys[i : i + batch]) for i in range(0, len(xs), batch)]


def _reachable_target(job: Job, space: Any) -> Flops | Params:
    """The job's target, lowered (and the job updated) until the network can reach it."""
    kind = Flops if job.kind == "flops" else Params
    for _ in range(8):
        target = kind(remove=job.remove)
        try:
            resolve_target(target, space, min_channels=1)
            return target
        except TargetError:
            job.remove = round(job.remove * 0.7, 3)  # a "sensible range" depends on what the model can lose
    raise TargetError(f"no reachable {job.kind} target found for {job.model}")


@torch.no_grad()
def _max_diff(reference: nn.Module, compact: nn.Module, space: Any, masks: Any, x: torch.Tensor) -> float:
    """max |masked(reference)(x) - compact(x)| / max(1, |masked|), both in eval mode."""
    modes = [(m, m.training) for m in (*reference.modules(), *compact.modules())]
    reference.eval()
    compact.eval()
    try:
        with exact_math(), space.masked(reference, masks):
            ref = reference(x)
        out = compact(x)
    finally:
        for m, flag in modes:
            m.training = flag
    if not (torch.isfinite(ref).all() and torch.isfinite(out).all()):
        return math.inf
    return float((ref - out).abs().max()) / max(1.0, float(ref.abs().max()))


def run_job(job: Job, batch: int, tolerance: float) -> Job:
    """Run one job; problems are appended to ``job.failures`` (an exception is one failure)."""
    started = time.perf_counter()
    try:
        _run(job, batch, tolerance)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        job.failures.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                            f"({Path(where.filename).name}:{where.lineno})")  # fmt: skip
    job.seconds = time.perf_counter() - started
    return job


def _run(job: Job, batch: int, tolerance: float) -> None:
    torch.manual_seed(job.seed)
    c, h, w = job.input_shape
    model = models.create(job.model, num_classes=NUM_CLASSES, in_channels=c, **job.options)
    dense = copy.deepcopy(model)  # the untrained architecture: the reference for the achieved reduction
    example = torch.zeros(1, c, h, w)
    train = _batches(job, batch, job.steps, "train")
    holdout = _batches(job, batch, 2, "test")
    probe = torch.randn(4, c, h, w, generator=torch.Generator().manual_seed(job.seed))

    space = discover(model, example)
    target = _reachable_target(job, space)
    pruner = AutoTrainOnce(
        model, example, target, holdout=holdout, total_steps=job.steps, space=space, surgery=job.surgery,
        controller_start=0.1, proximal_start=0.25, lambda_switch=0.45, freeze_at=0.6, hyper_step=1,
        mask_interval=0.1, controller_lr=1e-2,
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    freeze_step = pruner.schedule.freeze_at
    for step, (x, y) in enumerate(train, start=1):
        net = pruner.model
        net.train()
        loss = F.cross_entropy(net(x), y)
        if not math.isfinite(float(loss)):
            raise FloatingPointError(f"loss {float(loss)} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        before_cut = copy.deepcopy(pruner.model) if job.surgery == "freeze" and step == freeze_step else None
        if pruner.step(optimizer):  # surgery="freeze" cut the network here
            assert before_cut is not None, f"cut at step {step}, expected {freeze_step}"
            job.max_diff = _max_diff(before_cut, pruner.model, space, pruner.current_masks(), probe)
    if job.surgery == "freeze" and not pruner.cut:
        job.failures.append("surgery=freeze but the network was never cut")
    masks = pruner.current_masks()
    try:
        compact = pruner.export()
    except SurgeryError as exc:
        # Say whether the cut itself is wrong or only the check: compare on the same input, relative to the
        # size of the outputs (what space.prune's own check does).
        rel = _max_diff(model, space.prune(model, masks, check=False), space, masks, example)
        job.failures.append(f"export refused: {' '.join(str(exc).split())[:120]} [relative |diff| {rel:.1e}]")
        return
    if job.surgery == "end":
        job.max_diff = _max_diff(model, compact, space, masks, probe)

    # checks
    if job.max_diff is None or not job.max_diff <= EQUIV_TOL:
        job.failures.append(f"compact != masked: max |diff| {job.max_diff} > {EQUIV_TOL}")
    macs, params = count_macs(compact, example), count_params(compact)
    if space.flops(masks) != macs:
        job.failures.append(f"cost model {space.flops(masks)} MACs != measured {macs}")
    if space.params(masks) != params:
        job.failures.append(f"cost model {space.params(masks)} params != measured {params}")
    dense_cost = count_macs(dense, example) if job.kind == "flops" else count_params(dense)
    job.removed = 1.0 - (macs if job.kind == "flops" else params) / dense_cost
    if abs(job.removed - job.remove) > tolerance:
        job.failures.append(f"removed {job.removed:.3f} of {job.kind}, target {job.remove} (tolerance {tolerance})")
    if params >= count_params(dense):
        job.failures.append(f"compact model is not smaller ({params} >= {count_params(dense)} params)")
    with torch.no_grad():
        if not torch.isfinite(compact.eval()(probe)).all():
            job.failures.append("compact model returns non-finite outputs")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row(job: Job) -> str:
    """One line of the job table."""
    shape = "x".join(map(str, job.input_shape))
    status = "ok" if not job.failures else f"FAIL ({len(job.failures)})"
    return (f"{job.index:>3}  {job.describe():<46}  {shape:>7}  {job.kind:<6} {job.remove:>5.3f}  "
            f"{_fmt(job.removed, '.3f'):>7}  {job.surgery:<6}  {_fmt(job.max_diff, '.1e'):>7}  "
            f"{job.seconds:>6.1f}  {status}")  # fmt: skip


HEADER = (f"{'#':>3}  {'model':<46}  {'input':>7}  {'target':<6} {'frac':>5}  {'removed':>7}  "
          f"{'cut':<6}  {'|diff|':>7}  {'sec':>6}  status")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the soak; returns the exit status (0: no failure)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20, help="number of jobs (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="S",
                        help="start no new job after S seconds (default: no limit)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per job (default 16)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--tolerance", type=float, default=0.03,
                        help="allowed |achieved - target| reduction (default 0.03)")  # fmt: skip
    parser.add_argument("--models", default=None,
                        help="comma-separated zoo names to draw from (default: the whole zoo)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write every job as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 8:
        parser.error("--steps must be at least 8 (the schedule needs room before and after the freeze)")
    torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else models.list_models()
    unknown = sorted(set(names) - set(models.list_models()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(models.list_models())}")

    print(f"soak: {args.jobs} jobs, seed {args.seed}, {args.steps} steps of batch {args.batch}, "
          f"torch {torch.__version__}, {args.threads} thread(s)")  # fmt: skip
    print(HEADER)
    started = time.perf_counter()
    jobs: list[Job] = []
    for i in range(args.jobs):
        if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
            break
        job = draw_job(i, args.seed, args.steps, names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. unknown-op warnings; the checks below are what count
            run_job(job, args.batch, args.tolerance)
        jobs.append(job)
        print(row(job), flush=True)
    total = time.perf_counter() - started

    failed = [j for j in jobs if j.failures]
    skipped = args.jobs - len(jobs)
    print(f"\n{len(jobs)} jobs in {total:.0f}s: {len(jobs) - len(failed)} ok, {len(failed)} failed"
          + (f", {skipped} not started (time budget)" if skipped else ""))  # fmt: skip
    if failed:
        print("\nFailures")
        print(f"{'#':>3}  {'job':<46}  failure")
        for job in failed:
            for failure in job.failures:
                print(f"{job.index:>3}  {job.describe():<46}  {failure}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(j) for j in jobs], indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
