"""Which held-out images a preview shows: a fixed, seeded, class-balanced pick.

Splits are often sorted by class (CIFAR-10's test set, folders read in name order), so
"the first 16" would show one class only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def balanced_pick(labels: Sequence[int] | np.ndarray, total: int, seed: int = 0) -> np.ndarray:
    """Indices of ``total`` items (fewer when there are fewer), spread evenly over classes.

    labels (N,) int (-1 = unlabelled, one more group) -> int64 indices, grouped by class in
    ascending label order. Each class's members are shuffled by a generator seeded from
    ``seed``; classes take turns, so every class appears when ``total`` >= the number of
    classes and per-class counts differ by at most one (unless a class runs out). The same
    labels and seed always give the same indices.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    take = [0] * len(groups)
    left = min(int(total), labels.size)
    while left > 0:
        for g, members in enumerate(groups):
            if left > 0 and take[g] < len(members):
                take[g] += 1
                left -= 1
    picked = [members[:n] for members, n in zip(groups, take, strict=True)]
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)
