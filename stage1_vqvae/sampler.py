"""Shuffling that depends only on (seed, epoch), so a resumed run sees the same order."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """A permutation of range(n) drawn from ``seed + epoch``.

    Lightning calls ``set_epoch`` at the start of every epoch (as for DistributedSampler),
    so epoch k's order is the same whether the run got there in one go or resumed.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
