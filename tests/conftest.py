"""Shared test set-up."""

from __future__ import annotations

import os

import torch

# Two xdist workers on a 2-core machine: one intra-op thread each, or they fight over the cores (10-30x slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
