"""A tiny CNN and the digits tensors shared by the ATO tests."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EX = torch.zeros(1, 1, 8, 8)  # example input: one 8x8 greyscale digit


class Net(nn.Module):
    """Three conv-BN-ReLU layers and a linear classifier, for 1x8x8 digits."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w)
        self.c2, self.b2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.c3, self.b3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (N, 1, 8, 8) floats in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return x, torch.tensor(d.target, dtype=torch.long)


def digits_train_loader() -> DataLoader:
    """The first 640 digits, shuffled, 10 batches of 64 per epoch (the Trainer runs of the ATO tests)."""
    x, y = digits()
    return DataLoader(TensorDataset(x[:640], y[:640]), batch_size=64, shuffle=True, drop_last=True)


def interrupt_at_epoch(epoch: int | None) -> list:
    """A Trainer callback that raises KeyboardInterrupt as ``epoch`` starts (a killed run); none for None."""
    from autotrainonce.training import Callback

    class Interrupt(Callback):
        def on_train_epoch_start(self, trainer, index):
            if index == epoch:
                raise KeyboardInterrupt

    return [Interrupt()] if epoch is not None else []
