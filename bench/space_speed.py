"""Time pruning-space discovery and physical pruning on zoo models (a benchmark, not a test).

    python bench/space_speed.py              # ResNet-50 at 1x3x224x224 plus a few zoo models
    python bench/space_speed.py --threads 1  # what a busy machine (or a DataLoader-heavy run) sees

Prints one row per model: discover (first call in this process, then the best of the repeats), prune
without and with the equivalence probe, exact cost evaluation, and the group counts. Goals on a laptop-class
CPU: discover < 2 s and prune < 1 s for ResNet-50 at 224x224. Nearly all of discover is one forward pass
under torch's FlopCounterMode, so the numbers follow the CPU's conv speed; on a shared machine, OpenMP threads
waiting for each other can make those tiny-batch convs 10x slower, hence the load average in the header.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from autotrainonce import models
from autotrainonce.space import PruningSpace, discover

CASES: list[tuple[str, int, int]] = [  # (model, input size, classes)
    ("resnet50", 224, 1000),
    ("resnet18", 224, 1000),
    ("mobilenetv2", 224, 1000),
    ("vgg16_bn", 32, 10),
    ("resnet56", 32, 10),
    ("resnet110", 32, 10),
]


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _half_masks(space: PruningSpace) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(0)
    masks: list[torch.Tensor | None] = []
    for g in space.groups:
        if not g.prunable:
            masks.append(None)
            continue
        m = torch.rand(g.size, generator=gen) < 0.5
        m[0] = True
        masks.append(m)
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per step (best is reported)")
    parser.add_argument("--models", nargs="*", help="subset of: " + ", ".join(c[0] for c in CASES))
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load {load}")
    header = (
        f"{'model':<12} {'input':>9} {'groups':>7} {'prunable':>8} {'discover 1st':>12} {'discover':>9} "
        f"{'prune':>7} {'prune+check':>11} {'flops()':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, size, classes in CASES:
        if args.models and name not in args.models:
            continue
        torch.manual_seed(0)
        model = models.create(name, num_classes=classes).eval()
        x = torch.randn(1, 3, size, size)
        first, space = _best(lambda m=model, x=x: discover(m, x), 1)
        again, space = _best(lambda m=model, x=x: discover(m, x), args.repeat)
        masks = _half_masks(space)
        prune, _ = _best(lambda s=space, m=model, k=masks: s.prune(m, k, check=False), args.repeat)
        checked, _ = _best(lambda s=space, m=model, k=masks: s.prune(m, k, check=True), 1)
        cost, _ = _best(lambda s=space, k=masks: s.flops(k), args.repeat)
        print(
            f"{name:<12} {size:>4}x{size:<4} {len(space.groups):>7} {len(space.prunable_indices):>8} "
            f"{first:>11.2f}s {again:>8.2f}s {prune:>6.2f}s {checked:>10.2f}s {cost * 1e3:>6.1f}ms"
        )


if __name__ == "__main__":
    main()
