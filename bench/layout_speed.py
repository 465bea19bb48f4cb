"""Train-step time row-major vs channels-last on this machine, dense and half-width (a benchmark, not a test).

    python bench/layout_speed.py                       # ResNet-20 and ResNet-56, 1 and 2 threads
    python bench/layout_speed.py --models resnet20 --threads 1

For each model: the dense network and a compact one (every prunable group cut to half its channels with the
library's own surgery), each in both memory layouts, trained on random 28x28 one-channel batches. The four
variants take their steps in turn (``--rounds`` rounds of ``--steps`` steps each) and the median is reported, so
a busy machine slows them alike. The trainer's ``channels_last: auto`` stays off on CPU because the answer
depends on the host (docs/decisions.md); this prints the answer for yours.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from autotrainonce import models
from autotrainonce.space import discover

LAYOUTS = {"row-major": torch.contiguous_format, "channels-last": torch.channels_last}


def _variants(name: str, size: int) -> dict[tuple[str, str], nn.Module]:
    torch.manual_seed(0)
    dense = models.create(name, num_classes=10, in_channels=1)
    space = discover(dense, torch.randn(1, 1, size, size))
    half = [torch.arange(g.size) % 2 == 0 if g.prunable else None for g in space.groups]
    compact = space.prune(dense, half)
    # module.to(memory_format=) converts in place: each layout gets its own copy
    return {(width, layout): copy.deepcopy(net).to(memory_format=fmt)
            for width, net in (("dense", dense), ("half", compact))
            for layout, fmt in LAYOUTS.items()}  # fmt: skip


def step_times(name: str, batch: int, size: int, rounds: int, steps: int) -> dict[tuple[str, str], float]:
    """Median seconds per training step of each (width, layout) variant of model ``name``."""
    nets = _variants(name, size)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 10, (batch,))
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in nets.items()}

    def step(key: tuple[str, str]) -> None:
        opts[key].zero_grad()
        nn.functional.cross_entropy(nets[key](x.to(memory_format=LAYOUTS[key[1]])), y).backward()
        opts[key].step()

    for key in nets:  # first calls pick kernels: not timed
        step(key)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in nets}
    for _ in range(rounds):
        for key in nets:
            start = time.perf_counter()
            for _ in range(steps):
                step(key)
            times[key].append((time.perf_counter() - start) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet20,resnet56", help="comma-separated zoo names")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=28, help="input height and width")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    before = torch.get_num_threads()
    print("| model | threads | width | row-major ms/step | channels-last ms/step | channels-last × row-major | "
          "half × dense (row-major) | half × dense (channels-last) |")
    print("| :--- | ---: | :--- | ---: | ---: | ---: | ---: | ---: |")
    try:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for name in args.models.split(","):
                t = step_times(name, args.batch, args.size, args.rounds, args.steps)
                for width in ("dense", "half"):
                    rm, cl = t[(width, "row-major")], t[(width, "channels-last")]
                    print(f"| {name} | {threads} | {width} | {1000 * rm:.1f} | {1000 * cl:.1f} | {cl / rm:.2f} | "
                          f"{rm / t[('dense', 'row-major')]:.2f} | {cl / t[('dense', 'channels-last')]:.2f} |")
    finally:
        torch.set_num_threads(before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
