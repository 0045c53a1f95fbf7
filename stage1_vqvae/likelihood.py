"""The discretized Gaussian pixel likelihood every stage-one model is scored with (the
VQ-VAE paper's bits/dim): -log2 p(x | decoder mean) over the 256 levels of each subpixel,
for a grid of sigmas. Used by the report (``pipeline.metrics`` re-exports it) and by the
Gaussian VAE's validation, so bits/dim mean the same thing everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

LN2 = math.log(2.0)

# sigma of p(x | z) on the [0, 1] scale: 1/1000 .. 1/2, 28 steps (ratio ~1.26)
SIGMA_GRID: tuple[float, ...] = tuple(float(s) for s in np.geomspace(1e-3, 0.5, 28))


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(d)) for d < 0, accurate on both ends (Maechler 2012)."""
    d = d.clamp(max=-1e-300)  # d == 0 only from round-off of two equal CDFs
    return torch.where(d > -LN2, torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def discretized_gaussian_log_probs(levels: Tensor, mean: Tensor, sigma: float,
                                   num_levels: int = 256) -> Tensor:
    """log p(level | mean, sigma) in nats, float64 on the CPU (MPS has no float64), same
    shape as ``levels``.

    levels: int in [0, num_levels - 1] (the pixel k means intensity k / (L - 1));
    mean: float, same shape, on the [0, 1] intensity scale (any real value is allowed);
    sigma: the Gaussian's standard deviation on that scale. Level k gets the Gaussian's
    mass on [(k - 0.5)/(L - 1), (k + 0.5)/(L - 1)], the end levels also the tails, so the
    L probabilities sum to 1 exactly.
    """
    if sigma <= 0:
        raise ValueError(f"sigma {sigma} must be positive")
    top = num_levels - 1
    levels = levels.detach().cpu()
    x = levels.to(torch.float64) / top
    m = mean.detach().cpu().to(torch.float64)
    half = 0.5 / top
    a = (x - half - m) / sigma
    b = (x + half - m) / sigma
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    lna, lnb = torch.special.log_ndtr(-a), torch.special.log_ndtr(-b)
    # Phi(b) - Phi(a) from whichever tail the bin lies in, so it never cancels to 0
    left = lb + _log1mexp(la - lb)
    right = lna + _log1mexp(lnb - lna)
    mid = torch.where(a > 0, right, left)
    # a bin far narrower than sigma: its two CDFs round to one value; the midpoint rule
    # (density at the bin centre times its width) is then exact to ~width^2 / 24
    c = (a + b) / 2
    narrow = -0.5 * c * c - 0.5 * math.log(2 * math.pi) + torch.log(b - a)
    mid = torch.where((b - a) < 1e-4, narrow, mid)
    return torch.where(levels <= 0, lb, torch.where(levels >= top, lna, mid))


def recon_bits(images: Tensor, mean: Tensor, sigmas: Sequence[float]) -> Tensor:
    """-log2 p(x | z) per image for each sigma: images (N, C, H, W) 8-bit values k/255,
    mean (N, C, H, W) the decoder output -> float64 (N, len(sigmas)) bits per image, on the CPU."""
    levels = images.mul(255).round().long()
    out = [-discretized_gaussian_log_probs(levels, mean, float(s)).flatten(1).sum(1) / LN2
           for s in sigmas]
    return torch.stack(out, dim=1)
