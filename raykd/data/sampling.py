"""Deterministic, shardable sampling: the order depends only on (seed, epoch), never on state.

Training: one permutation of all slices per epoch, padded by wrapping to a multiple of the world
size, rank ``r`` takes every ``world``-th index, so ``world`` ranks × batch ``b`` see exactly the
global batches of one rank with batch ``world·b``. Validation: each rank gets an equal-length
shard; padding entries carry weight 0 so reduced metrics count every slice once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShardedSampler(Sampler[int]):
    def __init__(
        self, n: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0
    ) -> None:
        self.n, self.rank, self.world, self.shuffle, self.seed = n, rank, world_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = -(-self.n // self.world) * self.world
        return order + order[: total - self.n]

    def __iter__(self) -> Iterator[int]:
        return iter(self._global_order()[self.rank :: self.world])

    def __len__(self) -> int:
        return -(-self.n // self.world)


def validation_shard(n: int, rank: int, world_size: int) -> tuple[list[int], list[float]]:
    """Indices and weights (1 real, 0 padding) of this rank's equal-length validation shard."""
    per_rank = -(-n // world_size)
    idx = list(range(rank, n, world_size))
    weights = [1.0] * len(idx)
    while len(idx) < per_rank:
        idx.append(idx[-1] if idx else 0)
        weights.append(0.0)
    return idx, weights
