"""Seeds of a run: Python, NumPy and torch in the trainer, and one per DataLoader worker."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    # Each DataLoader worker gets its own deterministic seed (the reference code had none).
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
