"""Pure metric functions for ``vqgen evaluate`` (and any benchmark that must agree with it).

torch for image metrics (SSIM, the discretized Gaussian), numpy for statistics of
histograms and features (entropy, Fréchet distance). No model or file I/O in here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# stage one logs the same numbers while training: one implementation, re-exported here
from vqgen.stage1_vqvae.likelihood import (  # noqa: F401 - the discretized pixel likelihood
    LN2,
    discretized_gaussian_log_probs,
    recon_bits,
)
from vqgen.stage1_vqvae.metrics import entropy, histogram_probs, perplexity, psnr_from_mse  # noqa: F401

# ----------------------------------------------------------------------------- images


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 2-D Gaussian, float64 (size, size), summing to 1."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    x: Tensor, y: Tensor, *, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
    k1: float = 0.01, k2: float = 0.03,
) -> Tensor:
    """SSIM per image (Wang et al. 2004): x, y float (N, C, H, W) in [0, data_range] -> float64 (N,),
    computed on the CPU (float64; MPS has none).

    Gaussian window (``window_size`` x ``window_size``, ``sigma``), C1 = (k1 L)^2,
    C2 = (k2 L)^2; each channel is filtered on its own, without padding (the map is
    (H - window_size + 1) x (W - window_size + 1)), and the map is averaged over channels
    and positions. Statistics are the window-weighted (biased) moments, as in the paper.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    n, c, h, w = x.shape
    if h < window_size or w < window_size:
        raise ValueError(f"ssim: images {h}x{w} are smaller than the {window_size}x{window_size} window")
    x, y = x.detach().cpu().double(), y.detach().cpu().double()
    ax = torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    # the Gaussian window is separable: a column pass then a row pass, all 5 moments at once
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    k = 5 * c
    stack = F.conv2d(stack, g.view(1, 1, -1, 1).expand(k, 1, window_size, 1), groups=k)
    stack = F.conv2d(stack, g.view(1, 1, 1, -1).expand(k, 1, 1, window_size), groups=k)
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.split(c, dim=1)
    s_xx = e_xx - mu_x**2
    s_yy = e_yy - mu_y**2
    s_xy = e_xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * s_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (s_xx + s_yy + c2)
    return (num / den).mean(dim=(1, 2, 3))


def box_blur3(images: Tensor) -> Tensor:
    """3x3 box filter with replicate padding: float (N, C, H, W) -> same shape and range."""
    c = images.shape[1]
    kernel = torch.full((c, 1, 3, 3), 1.0 / 9.0, dtype=images.dtype, device=images.device)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def quantize_8bit(images: Tensor) -> Tensor:
    """float images in [0, 1] -> the nearest of the 256 levels k/255 (what a PNG holds)."""
    return images.clamp(0, 1).mul(255).round().div(255)


# ----------------------------------------------------------------------------- histograms


def cross_entropy(target_counts: Sequence[float] | np.ndarray | Tensor,
                  model_probs: Sequence[float] | np.ndarray | Tensor, base: float = math.e) -> float:
    """H(p, q) = -sum p log q: ``target_counts`` (histogram of what is coded, normalised here)
    coded with ``model_probs`` (same length, normalised here); in units of log ``base``.
    Infinite when q is 0 where p is not: smooth q first if that can happen."""
    p, q = histogram_probs(target_counts), histogram_probs(model_probs)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in length: {p.size} vs {q.size}")
    nz = p > 0
    with np.errstate(divide="ignore"):
        return float(-(p[nz] * np.log(q[nz])).sum() / math.log(base))


def usage(counts: Sequence[float] | np.ndarray | Tensor) -> float:
    """Fraction of bins with a non-zero count (distinct codes used / K), in [0, 1]."""
    c = np.asarray(counts.cpu() if isinstance(counts, Tensor) else counts).ravel()
    return float((c > 0).sum() / max(c.size, 1))


# ----------------------------------------------------------------------------- features


def feature_stats(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """features (N, D), N >= 2 -> (mean (D,), covariance (D, D) with ddof 1), float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features,
                   dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix."""
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray,
                                s2: np.ndarray) -> float:
    """Fréchet distance between Gaussians N(mu1, s1) and N(mu2, s2):
    |mu1 - mu2|^2 + tr s1 + tr s2 - 2 tr sqrt(sqrt(s1) s2 sqrt(s1)), float64, >= 0.

    Only symmetric eigendecompositions are used (no scipy): sqrt(s1) s2 sqrt(s1) is
    symmetric PSD, so its trace-square-root is the sum of the square roots of its
    eigenvalues; negative eigenvalues from round-off are clipped to 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    r1 = _sqrt_psd(s1)
    mid = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((mid + mid.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(fd, 0.0)


def frechet_distance(features1: np.ndarray | Tensor, features2: np.ndarray | Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance_from_stats(*feature_stats(features1), *feature_stats(features2))


# ----------------------------------------------------------------------------- likelihood


def bits_per_dim_bound(recon_bits_per_image: Tensor | np.ndarray,
                       prior_bits_per_image: Tensor | np.ndarray, dims: int,
                       sigmas: Sequence[float]) -> dict:
    """The VQ-VAE bound on NLL(x) in bits per dimension, minimised over a sigma grid.

    recon_bits_per_image: (N, S) -log2 p(x | z_q(x)) for each of the S sigmas;
    prior_bits_per_image: (N,) -log2 p(z_q(x)); dims: C * H * W.
    bits/dim(sigma) = mean_i(prior_i + recon_i(sigma)) / dims. Returns the best sigma,
    its bound and the two parts, plus the whole curve (for the report).
    """
    rb = np.asarray(recon_bits_per_image, dtype=np.float64)
    pb = np.asarray(prior_bits_per_image, dtype=np.float64)
    if rb.ndim != 2 or rb.shape[0] != pb.shape[0] or rb.shape[1] != len(sigmas):
        raise ValueError(f"shapes do not fit: recon {rb.shape}, prior {pb.shape}, "
                         f"{len(sigmas)} sigmas")
    curve = (rb.mean(0) + pb.mean()) / dims
    best = int(np.argmin(curve))
    return {
        "bits_per_dim": float(curve[best]),
        "sigma": float(sigmas[best]),
        "sigma_index": best,
        "prior_bits_per_dim": float(pb.mean() / dims),
        "recon_bits_per_dim": float(rb[:, best].mean() / dims),
        "curve": [[float(s), float(v)] for s, v in zip(sigmas, curve, strict=True)],
    }
