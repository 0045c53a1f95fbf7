"""The pure metric functions of ``vqgen evaluate`` against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqgen.pipeline import metrics as M

# ---------------------------------------------------------------------- PSNR, SSIM, blur


def test_psnr_of_known_mse():
    assert M.psnr_from_mse(0.01) == pytest.approx(20.0)
    assert M.psnr_from_mse(1e-4) == pytest.approx(40.0)
    assert M.psnr_from_mse(0.25, peak=255.0) == pytest.approx(10 * math.log10(255.0**2 / 0.25))


def test_gaussian_window_is_normalised_and_peaks_in_the_middle():
    w = M.gaussian_window(11, 1.5)
    assert w.shape == (11, 11)
    assert float(w.sum()) == pytest.approx(1.0)
    assert int(w.argmax()) == 5 * 11 + 5


def test_ssim_of_identical_images_is_one():
    x = torch.rand(3, 2, 16, 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(M.ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = 0.2, 0.7
    x, y = torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)
    c1 = 0.01**2
    # no variance: the contrast-structure term is C2 / C2 = 1
    assert float(M.ssim(x, y)[0]) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))


def test_ssim_of_one_window_matches_the_weighted_formula():
    """An 11x11 image has exactly one window: compare with numpy sums over the weights."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(1, 1, 11, 11, generator=g), torch.rand(1, 1, 11, 11, generator=g)
    ax = np.arange(11) - 5.0
    w1 = np.exp(-(ax**2) / (2 * 1.5**2))
    w = np.outer(w1, w1) / np.outer(w1, w1).sum()
    xn, yn = x.double().numpy()[0, 0], y.double().numpy()[0, 0]
    mx, my = (w * xn).sum(), (w * yn).sum()
    vx, vy = (w * xn**2).sum() - mx**2, (w * yn**2).sum() - my**2
    cxy = (w * xn * yn).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    want = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert float(M.ssim(x, y)[0]) == pytest.approx(want, rel=1e-9)


def test_ssim_averages_channels_and_refuses_small_images():
    x = torch.rand(1, 2, 11, 11, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[:, 1] = 0.5  # channel 0 identical, channel 1 flat
    per_channel = [float(M.ssim(x[:, c : c + 1], y[:, c : c + 1])[0]) for c in range(2)]
    assert float(M.ssim(x, y)[0]) == pytest.approx(sum(per_channel) / 2)
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        M.ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_box_blur_replicates_edges():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 9.0
    out = M.box_blur3(x)
    # the corner pixel sees itself 4 times (replicate padding), its neighbours twice or once
    assert float(out[0, 0, 0, 0]) == pytest.approx(4.0)
    assert float(out[0, 0, 0, 1]) == pytest.approx(2.0)
    assert float(out[0, 0, 1, 1]) == pytest.approx(1.0)
    assert float(out[0, 0, 2, 2]) == pytest.approx(0.0)
    flat = torch.full((2, 3, 5, 5), 0.3)
    assert torch.allclose(M.box_blur3(flat), flat)


# ---------------------------------------------------------------------- histograms


def test_entropy_of_uniform_and_one_hot():
    assert M.entropy(np.ones(8)) == pytest.approx(math.log(8))
    assert M.entropy([5, 5, 5, 5], base=2) == pytest.approx(2.0)
    assert M.entropy([0, 7, 0]) == 0.0
    assert M.entropy([1, 3]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_perplexity_and_usage():
    assert M.perplexity([3, 3, 3, 0, 0, 0, 0, 0]) == pytest.approx(3.0)
    assert M.usage([3, 3, 3, 0, 0, 0, 0, 0]) == pytest.approx(3 / 8)
    assert M.usage(torch.tensor([1, 0])) == pytest.approx(0.5)


def test_cross_entropy():
    assert M.cross_entropy([1, 1], [1, 1], base=2) == pytest.approx(1.0)
    # p = (1, 0) coded with q = (1/4, 3/4): -log2(1/4) = 2 bits
    assert M.cross_entropy([4, 0], [1, 3], base=2) == pytest.approx(2.0)
    assert M.cross_entropy([1, 1], [1, 0]) == math.inf
    with pytest.raises(ValueError):
        M.entropy([0, 0])


# ---------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_of_identical_sets_is_zero():
    f = np.random.default_rng(0).normal(size=(300, 6))
    assert M.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    got = M.frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(want, rel=1e-10)


def test_frechet_distance_of_commuting_rotated_covariances():
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: the same closed form as the diagonal case."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    want = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    got = M.frechet_distance_from_stats(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-8)


def test_frechet_distance_of_non_commuting_covariances_matches_the_2x2_formula():
    """For 2x2 SPD A, B: tr sqrt(sqrt(A) B sqrt(A)) = sqrt(tr(AB) + 2 sqrt(det(AB)))."""
    s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
    ab = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(ab) + 2 * math.sqrt(np.linalg.det(ab)))
    want = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert M.frechet_distance_from_stats(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(want)


def test_frechet_distance_from_samples_uses_unbiased_covariance():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(50, 3)), rng.normal(size=(60, 3)) + 1.0
    mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    assert M.frechet_distance(f1, f2) == pytest.approx(M.frechet_distance_from_stats(mu1, s1, mu2, s2))
    assert M.frechet_distance(f1, f2) > 2.0  # the means differ by 1 in each of 3 dims


# ---------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("mean", [-0.3, 0.0, 0.001, 0.5, 0.999, 1.0, 1.4])
@pytest.mark.parametrize("sigma", [1e-3, 0.02, 0.3])
def test_discretized_gaussian_sums_to_one_over_the_256_levels(mean: float, sigma: float):
    levels = torch.arange(256)
    logp = M.discretized_gaussian_log_probs(levels, torch.full((256,), mean), sigma)
    assert logp.dtype == torch.float64
    assert torch.isfinite(logp).all()
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_discretized_gaussian_of_a_middle_level_is_the_cdf_difference():
    sigma, mean, k = 0.05, 0.4, 110
    lo, hi = (k - 0.5) / 255, (k + 0.5) / 255

    def phi(t: float) -> float:  # erfc: no cancellation in the left tail
        return 0.5 * math.erfc(-(t - mean) / (sigma * math.sqrt(2)))

    m = torch.tensor([mean], dtype=torch.float64)
    got = M.discretized_gaussian_log_probs(torch.tensor([k]), m, sigma)
    assert float(got[0]) == pytest.approx(math.log(phi(hi) - phi(lo)), rel=1e-9)
    # edge level 0 takes the whole left tail
    got0 = M.discretized_gaussian_log_probs(torch.tensor([0]), m, sigma)
    assert float(got0[0]) == pytest.approx(math.log(phi(0.5 / 255)), rel=1e-9)


def test_discretized_gaussian_far_tail_stays_finite():
    # ~39 sigma away: Phi(b) - Phi(a) underflows to 0 in a naive version (log = -inf)
    got = M.discretized_gaussian_log_probs(torch.tensor([199, 200]), torch.zeros(2), 0.02)
    assert torch.isfinite(got).all()
    z = (200 - 0.5) / 255 / 0.02  # log of the bin mass ~ -z^2 / 2 this far out
    assert -z * z / 2 - 10 < float(got[1]) < -z * z / 2
    assert float(got[1]) < float(got[0])


def test_discretized_gaussian_much_wider_than_a_level():
    """sigma >> 1/255: every middle level gets density x width, and the total is still 1."""
    sigma = 1e8
    logp = M.discretized_gaussian_log_probs(torch.arange(256), torch.full((256,), 0.5,
                                            dtype=torch.float64), sigma)
    want = -math.log(sigma * math.sqrt(2 * math.pi)) + math.log(1 / 255)
    assert float(logp[100]) == pytest.approx(want, rel=1e-9)
    tail = 0.5 * math.erfc(-(0.5 / 255 - 0.5) / (sigma * math.sqrt(2)))  # about half the mass
    assert float(logp[0]) == pytest.approx(math.log(tail), rel=1e-9)
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_recon_bits_and_the_bound():
    x = torch.tensor([[[[0.0, 1.0], [128 / 255, 1 / 255]]]])  # (1, 1, 2, 2)
    sigmas = [0.01, 0.1]
    rb = M.recon_bits(x, x, sigmas)  # mean exactly on every level
    assert rb.shape == (1, 2)
    levels = (x * 255).round().long()
    for s_i, s in enumerate(sigmas):
        want = -M.discretized_gaussian_log_probs(levels, x, s).sum() / math.log(2)
        assert float(rb[0, s_i]) == pytest.approx(float(want))
    assert float(rb[0, 0]) < float(rb[0, 1])  # a sharper Gaussian costs fewer bits here
    res = M.bits_per_dim_bound(rb, torch.tensor([10.0]), dims=4, sigmas=sigmas)
    assert res["sigma"] == 0.01 and res["sigma_index"] == 0
    assert res["bits_per_dim"] == pytest.approx((10.0 + float(rb[0, 0])) / 4)
    assert res["prior_bits_per_dim"] == pytest.approx(2.5)
    assert res["bits_per_dim"] == pytest.approx(res["prior_bits_per_dim"] + res["recon_bits_per_dim"])
