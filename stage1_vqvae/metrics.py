"""Image and code-usage metrics that stage one logs while training and ``vqgen evaluate``
reports, so the two always agree (``pipeline.metrics`` re-exports them). numpy only."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import Tensor


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB of a mean squared error on images in [0, peak]: 10 log10(peak^2 / mse).

    mse is floored at 1e-12 so identical images give a large finite number (120 dB).
    """
    return 10.0 * math.log10(peak * peak / max(float(mse), 1e-12))


def histogram_probs(counts: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    """Counts (any shape, >= 0, positive total; a tensor on any device) -> float64
    probabilities (N,) summing to 1. ``ValueError`` on an empty or all-zero histogram."""
    c = np.asarray(counts.cpu() if isinstance(counts, Tensor) else counts, dtype=np.float64)
    c = c.ravel()
    if c.size == 0 or (c < 0).any() or c.sum() <= 0:
        raise ValueError("need a non-empty histogram of non-negative counts with a positive total")
    return c / c.sum()


def entropy(counts: Sequence[float] | np.ndarray | Tensor, base: float = math.e) -> float:
    """Entropy of a histogram (counts or probabilities, normalised here), in units of
    log ``base`` (e: nats, 2: bits). Empty bins add nothing (0 log 0 = 0)."""
    p = histogram_probs(counts)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(base))


def perplexity(counts: Sequence[float] | np.ndarray | Tensor) -> float:
    """exp(entropy in nats): the number of equally used codes with the same entropy."""
    return math.exp(entropy(counts))
