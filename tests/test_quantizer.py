"""Properties of the vector quantizer: nearest code, straight-through gradient, where beta
sits, lookup, EMA and gradient codebooks, k-means init, dead-code restart, eval purity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqgen.stage1_vqvae.quantizer import VectorQuantizer, kmeans, nearest_codes


def to_grid(flat: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(B*h*w, D) rows in (b, y, x) order -> z_e (B, D, h, w)."""
    return flat.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


def to_flat(z: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B*h*w, D), the quantizer's own row order."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def make_vq(num_codes: int = 16, code_dim: int = 4, **kw) -> VectorQuantizer:
    kw.setdefault("kmeans_init", False)
    kw.setdefault("dead_after", 0)
    q = VectorQuantizer(num_codes, code_dim, **kw)
    with torch.no_grad():  # a codebook of order 1, like the encoder outputs below
        q.codebook.copy_(torch.randn(num_codes, code_dim))
        if q.ema:
            q.ema_sum.copy_(q.codebook)
    return q


def clustered(k: int, d: int, per: int, spread: float = 10.0, noise: float = 0.01, seed: int = 0):
    """``k`` well-separated clusters of ``per`` points each: (points (k*per, D), centers)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * spread
    points = centers[torch.arange(k * per) % k] + noise * torch.randn(k * per, d, generator=g)
    return points, centers


# --------------------------------------------------------------------------- nearest code


def test_nearest_codes_equals_bruteforce_cdist_argmin():
    g = torch.Generator().manual_seed(1)
    # float64 so the expanded-square distance and cdist agree to the last bit on argmin
    flat = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    codebook = torch.randn(64, 8, generator=g, dtype=torch.float64)
    assert torch.equal(nearest_codes(flat, codebook), torch.cdist(flat, codebook).argmin(1))


def test_forward_and_quantize_pick_the_nearest_code_float32():
    q = make_vq(num_codes=32, code_dim=6).eval()
    z_e = torch.randn(3, 6, 5, 7)
    _, codes, _ = q(z_e)
    assert codes.shape == (3, 5, 7) and codes.dtype == torch.int64
    assert torch.equal(codes, q.quantize(z_e))
    dist = torch.cdist(to_flat(z_e), q.codebook)
    chosen = dist.gather(1, codes.reshape(-1, 1)).squeeze(1)
    # the chosen code is at the minimum distance (up to float32 rounding of near ties)
    torch.testing.assert_close(chosen, dist.min(1).values, atol=1e-5, rtol=1e-5)
    assert (codes.reshape(-1) == dist.argmin(1)).float().mean() > 0.99


# --------------------------------------------------------------------------- gradients, losses


@pytest.mark.parametrize("ema", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_straight_through_gradient_is_identity(ema: bool, training: bool):
    q = make_vq(ema=ema).train(training)
    z_e = torch.randn(2, 4, 3, 5, requires_grad=True)
    w = torch.randn(2, 4, 3, 5)
    z_st, codes, _ = q(z_e)
    (w * z_st).sum().backward()
    assert torch.equal(z_e.grad, w)
    # ...while the forward value is the quantized vector
    torch.testing.assert_close(z_st, q.lookup(codes), atol=1e-6, rtol=0)


@pytest.mark.parametrize("ema", [True, False])
def test_beta_sits_on_the_commitment_term(ema: bool):
    beta = 0.7
    q = make_vq(beta=beta, ema=ema).eval()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_st, codes, losses = q(z_e)
    z_q = q.lookup(codes).detach()
    mse = F.mse_loss(z_e.detach(), z_q)
    torch.testing.assert_close(losses["commitment_loss"], beta * mse)
    if ema:
        assert float(losses["codebook_loss"]) == 0.0
    else:
        torch.testing.assert_close(losses["codebook_loss"], mse)  # no beta here
    torch.testing.assert_close(losses["loss"], losses["commitment_loss"] + losses["codebook_loss"])
    # only beta * commitment reaches the encoder: d/dz_e = beta * 2 (z_e - z_q) / numel
    losses["loss"].backward()
    torch.testing.assert_close(z_e.grad, beta * 2 * (z_e.detach() - z_q) / z_e.numel())


def test_gradient_mode_codebook_is_a_parameter_trained_by_codebook_loss():
    q = make_vq(ema=False, beta=0.25).train()
    names = dict(q.named_parameters())
    assert "codebook" in names and q.codebook.requires_grad
    z_e = torch.randn(4, 4, 3, 3)
    _, codes, losses = q(z_e)
    assert float(losses["codebook_loss"].detach()) > 0
    losses["loss"].backward()
    assert q.codebook.grad is not None
    # d codebook_loss / d e_k = 2 * sum over rows assigned to k of (e_k - z_e) / numel; beta absent
    flat, idx = to_flat(z_e), codes.reshape(-1)
    expect = torch.zeros_like(q.codebook).index_add_(0, idx, q.codebook.detach()[idx] - flat)
    torch.testing.assert_close(q.codebook.grad, 2 * expect / z_e.numel())


def test_ema_codebook_is_a_buffer_without_gradient():
    q = make_vq(ema=True)
    assert "codebook" in dict(q.named_buffers())
    assert "codebook" not in dict(q.named_parameters())
    assert not q.codebook.requires_grad
    assert "quantizer" not in str([n for n, _ in q.named_parameters()])


# --------------------------------------------------------------------------- lookup


def test_lookup_equals_z_q_in_eval_mode():
    q = make_vq(num_codes=10, code_dim=5).eval()
    z_e = torch.randn(3, 5, 4, 6)
    z_st, codes, _ = q(z_e)
    z_q = q.lookup(codes)
    assert z_q.shape == z_e.shape
    torch.testing.assert_close(z_st, z_q, atol=1e-6, rtol=0)
    # lookup is plain indexing of the codebook
    assert torch.equal(z_q[1, :, 2, 3], q.codebook[codes[1, 2, 3]])


# --------------------------------------------------------------------------- EMA updates


def test_ema_moves_codes_towards_their_assigned_vectors():
    q = make_vq(num_codes=8, code_dim=3, ema=True, decay=0.5).train()
    z_e = torch.randn(4, 3, 4, 4) * 2
    before = q.codebook.clone()
    _, codes, _ = q(z_e)
    flat, idx = to_flat(z_e), codes.reshape(-1)
    used = idx.unique()
    assert len(used) >= 3
    for k in used.tolist():
        mean = flat[idx == k].mean(0)
        assert torch.dist(q.codebook[k], mean) < torch.dist(before[k], mean), k
    # repeated steps on the same data converge onto the assigned means
    for _ in range(60):
        _, codes, _ = q(z_e)
    idx = codes.reshape(-1)
    for k in idx.unique().tolist():
        torch.testing.assert_close(q.codebook[k], flat[idx == k].mean(0), atol=1e-3, rtol=1e-3)


def test_ema_update_matches_the_formula():
    decay, eps = 0.9, 1e-5
    q = make_vq(num_codes=6, code_dim=2, ema=True, decay=decay, eps=eps).train()
    count0, sum0 = q.ema_count.clone(), q.ema_sum.clone()
    z_e = torch.randn(2, 2, 3, 3)
    _, codes, _ = q(z_e)
    idx, flat = codes.reshape(-1), to_flat(z_e)
    n_k = torch.bincount(idx, minlength=6).float()
    s_k = torch.zeros(6, 2).index_add_(0, idx, flat)
    count = decay * count0 + (1 - decay) * n_k
    total = count.sum()
    smoothed = (count + eps) / (total + 6 * eps) * total
    torch.testing.assert_close(q.ema_count, count)
    torch.testing.assert_close(q.codebook, (decay * sum0 + (1 - decay) * s_k) / smoothed[:, None])


# --------------------------------------------------------------------------- k-means init


def test_kmeans_finds_well_separated_clusters():
    points, centers = clustered(k=8, d=4, per=64)
    cents = kmeans(points, 8, generator=torch.Generator().manual_seed(0))
    # every true center has a centroid on it, and every centroid sits on a center
    d = torch.cdist(centers, cents)
    assert d.min(1).values.max() < 0.05, d.min(1).values
    assert d.min(0).values.max() < 0.05, d.min(0).values


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ema", [True, False])
def test_kmeans_init_on_first_training_batch(ema: bool, seed: int):
    k, d = 8, 4
    points, centers = clustered(k=k, d=d, per=64, seed=seed)
    q = VectorQuantizer(k, d, ema=ema, kmeans_init=True, dead_after=0)
    assert bool(q.kmeans_pending)
    q.train()
    _, codes, _ = q(to_grid(points, 8, 8, 8))
    assert not bool(q.kmeans_pending)
    # codebook rows are the cluster means (one per cluster) ...
    dist = torch.cdist(centers, q.codebook.detach())
    assert dist.min(1).values.max() < 0.05, dist.min(1).values.detach()
    assert dist.min(0).values.max() < 0.05, dist.min(0).values.detach()
    # ... so every code is used, each by exactly one cluster
    assert torch.bincount(codes.reshape(-1), minlength=k).tolist() == [64] * k


def test_kmeans_init_happens_once_and_not_in_eval():
    k, d = 8, 4
    points, _ = clustered(k=k, d=d, per=64)
    z = to_grid(points, 8, 8, 8)
    q = VectorQuantizer(k, d, ema=False, kmeans_init=True, dead_after=0)
    before = q.codebook.detach().clone()
    q.eval()
    q(z)
    assert bool(q.kmeans_pending) and torch.equal(q.codebook.detach(), before)
    q.train()
    q(z)
    after_first = q.codebook.detach().clone()
    assert not torch.equal(after_first, before)
    q(z * 3.0 + 1.0)  # a different second batch must not re-initialise
    assert torch.equal(q.codebook.detach(), after_first)


def test_kmeans_with_fewer_points_than_codes_fills_every_row():
    x = torch.randn(5, 3)
    cents = kmeans(x, 12, generator=torch.Generator().manual_seed(0))
    assert cents.shape == (12, 3) and torch.isfinite(cents).all()
    assert torch.cdist(cents, x).min(1).values.max() < 0.2  # all near the data


# --------------------------------------------------------------------------- dead codes


@pytest.mark.parametrize("ema", [True, False])
def test_dead_code_is_restarted_from_an_encoder_output(ema: bool):
    dead_after = 3
    q = make_vq(num_codes=8, code_dim=3, ema=ema, dead_after=dead_after, decay=0.9).train()
    with torch.no_grad():
        q.codebook[5] = 1e3  # never the nearest code
        if ema:
            q.ema_sum[5] = 1e3
    for step in range(1, dead_after + 1):
        z_e = torch.randn(2, 3, 4, 4)
        _, codes, _ = q(z_e)
        assert not (codes == 5).any()
        flat = to_flat(z_e)
        gap = (flat - q.codebook[5].detach()).abs().sum(1).min()
        if step < dead_after:
            assert gap > 100, f"restarted too early, at step {step}"
    # after dead_after unused steps the code is an encoder output of the current batch
    assert gap < 1e-6
    assert int(q.steps_unused[5]) == 0
    if ema:
        torch.testing.assert_close(q.ema_sum[5], q.codebook[5])
    # and it now takes part: the vector it copied maps to it (or to an identical code)
    _, codes, _ = q(to_grid(flat, 2, 4, 4))
    assert (codes == 5).any()


def test_used_codes_are_never_restarted():
    q = make_vq(num_codes=4, code_dim=2, ema=False, dead_after=1).train()
    z_e = to_grid(q.codebook.detach().repeat(4, 1), 1, 4, 4)  # every code exactly hit
    before = q.codebook.detach().clone()
    for _ in range(3):
        q(z_e)
    assert torch.equal(q.codebook.detach(), before)
    assert q.steps_unused.tolist() == [0, 0, 0, 0]


# --------------------------------------------------------------------------- eval purity


@pytest.mark.parametrize("ema", [True, False])
def test_eval_mode_changes_no_state(ema: bool):
    q = VectorQuantizer(16, 4, ema=ema, kmeans_init=True, dead_after=1).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    for _ in range(3):
        q(torch.randn(2, 4, 3, 3))
        q.quantize(torch.randn(2, 4, 3, 3))
    after = q.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_quantize_changes_no_state_even_in_train_mode():
    q = VectorQuantizer(16, 4, ema=True, kmeans_init=True, dead_after=1).train()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.quantize(torch.randn(2, 4, 3, 3))
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_state_is_checkpointed():
    keys = set(VectorQuantizer(8, 2, ema=True).state_dict())
    assert {"codebook", "ema_count", "ema_sum", "kmeans_pending", "steps_unused"} <= keys


# --------------------------------------------------------------------------- mixed precision


def offset_data(n: int = 4096, k: int = 64, d: int = 16, offset: float = 4.0, seed: int = 0):
    """Rows and a codebook of the same spread around a shared offset, as encoder outputs
    with a non-zero mean are: (flat (n, d), codebook (k, d)), float32."""
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(k, d, generator=g) * 0.5 + offset
    flat = torch.randn(n, d, generator=g) * 0.5 + offset
    return flat, codebook


def exact_nearest(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Brute force: float32 differences (no expanded square), argmin."""
    d = torch.cdist(flat, codebook, compute_mode="donot_use_mm_for_euclid_dist")
    return d.argmin(1)


@pytest.mark.parametrize("offset", [0.0, 4.0, 50.0])
def test_nearest_codes_under_bf16_autocast_are_the_float32_nearest(offset: float):
    flat, codebook = offset_data(offset=offset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nearest_codes(flat, codebook)
    assert torch.equal(got, exact_nearest(flat, codebook)), (
        f"{int((got != exact_nearest(flat, codebook)).sum())} of {len(got)} codes are not the nearest")


@pytest.mark.parametrize("ema", [True, False])
def test_training_steps_under_bf16_autocast_match_float32(ema: bool):
    """Codes, EMA statistics, k-means init and dead-code restarts: the same state, bit for
    bit, with and without autocast."""
    flat, _ = offset_data(n=2048, d=8)
    z_e = to_grid(flat, 8, 16, 16)
    runs = {}
    for autocast in (False, True):
        torch.manual_seed(0)
        q = VectorQuantizer(64, 8, ema=ema, kmeans_init=True, dead_after=2).train()
        codes = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for step in range(4):
                z_st, c, losses = q(z_e + 0.1 * step)
                codes.append(c)
        assert z_st.dtype == torch.float32 and losses["loss"].dtype == torch.float32
        runs[autocast] = (torch.stack(codes), q.state_dict())
    (c32, s32), (cbf, sbf) = runs[False], runs[True]
    assert torch.equal(cbf, c32)
    for key, value in s32.items():
        assert torch.equal(sbf[key], value), key
    # and the codes are the float32 nearest of the final codebook, as encode will see them
    q.eval()
    assert torch.equal(q.quantize(z_e), exact_nearest(flat, q.codebook).view(8, 16, 16))
