"""The quantizer's whole training state is in its state dict: copied mid-training into a
fresh quantizer (different random codebook, k-means not yet run), both continue bit for bit,
through dead-code counters and restarts. This is what makes a resumed run exact."""

from __future__ import annotations

import pytest
import torch

from vqgen.stage1_vqvae.quantizer import VectorQuantizer

K, D = 12, 3
ARGS = dict(beta=0.25, decay=0.8, kmeans_init=True, dead_after=3)


def batches(steps: int) -> list[torch.Tensor]:
    """z_e (4, D, 3, 3) drawn around 3 fixed centres for the first steps, then 3 other
    centres: most codes go unused for a while (their dead counters climb) and get restarted."""
    g = torch.Generator().manual_seed(0)
    first, later = torch.randn(3, D, generator=g) * 4, torch.randn(3, D, generator=g) * 4
    out = []
    for step in range(steps):
        centres = first if step < 6 else later
        pick = torch.randint(0, 3, (36,), generator=g)
        flat = centres[pick] + 0.1 * torch.randn(36, D, generator=g)
        out.append(flat.view(4, 3, 3, D).permute(0, 3, 1, 2).contiguous())
    return out


def step(q: VectorQuantizer, z_e: torch.Tensor, lr: float = 0.1):
    """One training step; with a gradient codebook, plain SGD (stateless, so the optimizer
    needs no state of its own to continue identically)."""
    z_e = z_e.clone().requires_grad_(True)
    z_q, codes, losses = q(z_e)
    if not q.ema:
        q.zero_grad()
        losses["loss"].backward()
        with torch.no_grad():
            q.codebook -= lr * q.codebook.grad
    return z_q.detach(), codes, {k: v.detach() for k, v in losses.items()}


def assert_same_state(a: VectorQuantizer, b: VectorQuantizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("ema", [True, False])
def test_state_round_trip_mid_training_continues_bit_identically(ema: bool):
    data = batches(16)
    torch.manual_seed(0)
    a = VectorQuantizer(K, D, ema=ema, **ARGS).train()
    for z_e in data[:8]:  # k-means init, EMA steps, dead counters climbing, a first restart
        step(a, z_e)
    assert int(a.steps_unused.max()) > 0  # mid-count: the counters are part of the state

    torch.manual_seed(1)  # a fresh quantizer with another random codebook
    b = VectorQuantizer(K, D, ema=ema, **ARGS).train()
    assert not torch.equal(a.codebook, b.codebook)
    b.load_state_dict(a.state_dict())
    assert_same_state(a, b)

    restarted = False
    for z_e in data[8:]:
        unused_before = a.steps_unused.clone()
        za, ca, la = step(a, z_e)
        zb, cb, lb = step(b, z_e)
        assert torch.equal(za, zb) and torch.equal(ca, cb)
        assert all(torch.equal(la[k], lb[k]) for k in la)
        assert_same_state(a, b)
        restarted |= bool(((unused_before >= ARGS["dead_after"] - 1)
                           & (a.steps_unused == 0)).any())
    assert restarted, "no dead code was restarted after the round trip: the test lost its teeth"
