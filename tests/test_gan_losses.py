"""The VQ-GAN's loss parts in isolation: hinge losses at known logits, the adaptive weight
against gradient norms computed independently, the discriminator's receptive field and depth
rule, the frozen (generator-only) discriminator pass, feature matching, and LPIPS's offline
error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqgen.stage1_vqvae import gan
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.runtime.errors import MissingInputError


def test_hinge_losses_at_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0, 1.0])   # relu(1 - r): 0, 0.5, 2, 0 -> mean 0.625
    fake = torch.tensor([-2.0, 0.0, 1.0, -0.5])  # relu(1 + f): 0, 1, 2, 0.5 -> mean 0.875
    assert gan.hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.625 + 0.875))
    assert gan.hinge_g_loss(fake).item() == pytest.approx(0.375)  # -mean(fake)
    # a confident, correct discriminator has zero loss
    assert gan.hinge_d_loss(torch.full((3,), 1.5), torch.full((3,), -1.0)).item() == 0.0


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    torch.manual_seed(0)
    model = VQVAE(hidden=8, res_hidden=4, num_res=1, code_dim=4, num_codes=16)
    disc = gan.PatchDiscriminator(1, width=8, num_layers=1)
    x = torch.rand(4, 1, 28, 28)
    recon, _, _ = model(x)
    nll = (recon - x).abs().mean()
    g_loss = gan.hinge_g_loss(disc(recon)[0])
    last = model.decoder.net[-1].weight
    weight = gan.adaptive_weight(nll, g_loss, last)

    def grad_norm(loss: torch.Tensor) -> float:
        model.zero_grad()
        loss.backward(retain_graph=True)
        return float(last.grad.norm())

    expected = grad_norm(nll) / (grad_norm(g_loss) + 1e-4)
    assert weight.item() == pytest.approx(expected, rel=1e-5)
    assert not weight.requires_grad
    # clamped from above, and the .grad of the layer is not touched by the weight itself
    model.zero_grad()
    assert gan.adaptive_weight(nll * 1e9, g_loss, last, max_weight=10.0).item() == 10.0
    assert last.grad is None


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_receptive_field_matches_a_perturbation(layers: int):
    """Changing one pixel moves exactly the logits whose patch covers it: the formula in
    receptive_field() (which sets the depth rule) is the network's real patch size."""
    torch.manual_seed(0)
    disc = gan.PatchDiscriminator(1, width=4, num_layers=layers).eval()
    for m in disc.modules():  # GroupNorm would spread a change across the whole image
        if isinstance(m, nn.GroupNorm):
            m.forward = lambda x: x
    size = 96
    x = torch.rand(1, 1, size, size, dtype=torch.float64)
    disc = disc.double()
    y0 = disc(x)[0]
    x2 = x.clone()
    x2[..., size // 2, size // 2] += 1.0
    moved = (disc(x2)[0] - y0).abs()[0, 0] > 0
    rows = moved.any(1).nonzero().flatten()
    span_rows = int(rows.max() - rows.min() + 1)
    stride = 2**layers
    # logits that see the pixel: about receptive_field / stride of them in each direction
    assert abs(span_rows * stride - gan.receptive_field(layers)) <= stride


def test_depth_follows_image_size():
    assert gan.receptive_field(1) == 16 and gan.receptive_field(3) == 70
    assert gan.disc_layers_for((28, 28)) == 1  # 16 px patches, not the whole digit
    assert gan.disc_layers_for((32, 32)) == 1
    assert gan.disc_layers_for((64, 64)) == 2
    assert gan.disc_layers_for((256, 256)) == 3
    assert gan.disc_layers_for((28, 200)) == 1  # the smaller side decides
    disc = gan.PatchDiscriminator(3, width=8, num_layers=gan.disc_layers_for((32, 32)))
    logits, feats = disc(torch.rand(2, 3, 32, 32))
    assert logits.shape[0] == 2 and logits.shape[1] == 1 and logits.shape[-1] > 1  # patches
    assert len(feats) == 2


def test_width_follows_image_size():
    """16 channels up to 32 px (where 64 would cost several times the VQ-VAE's own step),
    the published 64 above; the smaller side decides."""
    assert gan.disc_width_for((28, 28)) == gan.disc_width_for((32, 32)) == 16
    assert gan.disc_width_for((28, 200)) == 16
    assert gan.disc_width_for((64, 64)) == gan.disc_width_for((128, 128)) == 64


def test_frozen_forward_same_values_no_discriminator_gradient():
    torch.manual_seed(0)
    disc = gan.PatchDiscriminator(1, width=8, num_layers=1)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    live, _ = disc(x)
    frozen, _ = gan.frozen_forward(disc, x)
    assert torch.equal(live, frozen)
    frozen.sum().backward()
    assert all(p.grad is None for p in disc.parameters())
    g_frozen = x.grad.clone()
    x.grad = None
    disc(x)[0].sum().backward()
    assert torch.allclose(x.grad, g_frozen)  # the generator sees the same gradient


def test_feature_matching():
    a = [torch.zeros(2, 3, 4, 4), torch.ones(2, 5, 2, 2)]
    b = [torch.full((2, 3, 4, 4), 0.5), torch.ones(2, 5, 2, 2)]
    assert gan.feature_matching_loss(a, b).item() == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert gan.feature_matching_loss(b, b).item() == 0.0
    fake = [torch.zeros(1, 2, requires_grad=True)]
    real = [torch.ones(1, 2, requires_grad=True)]
    gan.feature_matching_loss(fake, real).backward()
    assert fake[0].grad is not None and real[0].grad is None  # only the generator learns


def test_lpips_without_weights_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingInputError) as err:
        gan.load_lpips()
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "hub" / "checkpoints" / gan.LPIPS_BACKBONE_FILE) in msg
