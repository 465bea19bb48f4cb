"""Interleaved timing for bench/compare.py ``--interleave``: cells train in turns, one optimizer step each.

On a shared VM the machine's speed drifts by ±25% over minutes, so cells timed one after another compare
different machines. With ``--interleave`` the cells of one model and seed run at the same time in separate
processes, but a :class:`Turnstile` lets only one of them compute: each takes one optimizer step (its pruner's
work included) and hands the turn on. A slow minute then slows every method alike, and each cell's time is the
sum of its own turns. The processes stay separate so that every cell seeds, initialises and draws its data
exactly as in a sequential run: the accuracies are the same numbers.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from autotrainonce.training import Callback

__all__ = ["Turnstile", "TurnTaker"]

#: a turn never takes this long; waiting longer means another cell's process died
WAIT_LIMIT_S = 6 * 3600.0


class Turnstile:
    """Whose turn it is among ``n`` processes (multiprocessing primitives; share it by inheritance, e.g. as a
    pool initializer argument). Index 0 starts; a process that leaves is skipped from then on."""

    def __init__(self, context: Any, n: int) -> None:
        if n < 1:
            raise ValueError(f"a turnstile needs at least one participant, got {n}")
        self._cond = context.Condition()
        self._turn = context.Value("i", 0, lock=False)
        self._active = context.Array("b", [1] * n, lock=False)

    def wait(self, i: int) -> None:
        """Block until it is ``i``'s turn."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._turn.value == i, timeout=WAIT_LIMIT_S):
                raise TimeoutError(f"turn {i} never came (a cell's process died?)")

    def pass_turn(self, i: int) -> None:
        """``i`` is done with its turn: the next participant still in goes (``i`` itself if alone)."""
        with self._cond:
            self._advance(i)
            self._cond.notify_all()

    def leave(self, i: int) -> None:
        """``i`` is done for good (finished or failed); if it held the turn, the next one goes."""
        with self._cond:
            self._active[i] = 0
            if self._turn.value == i:
                self._advance(i)
            self._cond.notify_all()

    def _advance(self, i: int) -> None:
        n = len(self._active)
        for k in range(1, n + 1):
            j = (i + k) % n
            if self._active[j]:
                self._turn.value = j
                return


class TurnTaker(Callback):
    """Gives the turn up after every optimizer step and counts only the time this cell held it.

    Call :meth:`start` before the cell's set-up (data, model, pruner: timed and not overlapping another
    cell's steps), put the taker last among the Trainer's callbacks (the pruner's work after a step stays in
    the turn), and call :meth:`close` once the compact model is in hand, or when the cell fails.
    """

    def __init__(self, turnstile: Turnstile, index: int) -> None:
        self.turnstile = turnstile
        self.index = index
        self.active_s = 0.0  # seconds spent holding the turn
        self.epoch_s: list[float] = []  # active seconds of each training epoch
        self._since: float | None = None  # perf_counter() when the current turn began
        self._epoch_mark = 0.0
        self._device: torch.device | None = None
        self._closed = False

    def _now(self) -> float:
        return self.active_s + (0.0 if self._since is None else time.perf_counter() - self._since)

    def start(self) -> None:
        """Wait for this cell's turn and start counting."""
        if self._since is None:
            self.turnstile.wait(self.index)
            self._since = time.perf_counter()

    def _end(self) -> None:
        if self._since is None:
            return
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)  # the step's kernels belong to this turn
        self.active_s += time.perf_counter() - self._since
        self._since = None

    def on_fit_start(self, trainer: Any) -> None:
        self._device = getattr(trainer, "device", None)
        self.start()  # no-op when the set-up already holds the turn

    def on_train_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._epoch_mark = self._now()

    def on_after_optimizer_step(self, trainer: Any, optimizer: Any) -> None:
        self._end()
        self.turnstile.pass_turn(self.index)
        self.start()

    def on_train_epoch_end(self, trainer: Any, epoch: int) -> dict[str, float] | None:
        self.epoch_s.append(self._now() - self._epoch_mark)
        return None

    def close(self) -> None:
        """Stop counting and leave the turnstile (idempotent)."""
        if self._closed:
            return
        self._end()
        self._closed = True
        self.turnstile.leave(self.index)
