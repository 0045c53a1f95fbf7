"""The continuous baseline: the VQ-VAE's encoder and decoder around a diagonal Gaussian latent
(Kingma & Welling 2014) instead of a codebook.

images (B, C, H, W) in [0, 1] -> q(z | x) = N(mean, diag(exp(logvar))), z (B, D, h, w) with
(h, w) the VQ-VAE's code grid for the same ``downsample``; prior p(z) = N(0, I). The encoder
outputs 2D channels (mean and log-variance); everything else is the VQ-VAE's architecture,
so the two compare at the same size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .model import Decoder, Encoder, check_downsample
from .runtime.errors import UserError

NO_CODES = ("is a Gaussian (continuous) VAE: it has no discrete codes to encode or to train a "
            "prior on; sample it with `vqgen sample --vqvae CKPT` (z ~ N(0, I)) or train a "
            "VQ-VAE / VQ-GAN for codes")


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats per item, summed over every latent
    dimension: (B, ...) -> (B,). Closed form 0.5 sum(mean^2 + var - 1 - logvar), in float32."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def gaussian_nll_optimal_sigma(recon: Tensor, images: Tensor, min_sigma: float) -> Tensor:
    """Per-dimension negative log-likelihood (nats) of ``images`` under N(recon, sigma^2 I) with
    sigma^2 = the batch's mean squared error (its maximum-likelihood value, the "optimal
    sigma-VAE" of Rybkin et al. 2021), floored at ``min_sigma``^2:
    0.5 log(2 pi sigma^2) + 0.5 mse / sigma^2. The balance between reconstruction and KL then
    needs no hand-set weight."""
    mse = (recon.float() - images.float()).pow(2).mean()
    var = mse.detach().clamp(min=min_sigma**2)
    return 0.5 * math.log(2 * math.pi) + 0.5 * var.log() + 0.5 * mse / var


class GaussianVAE(nn.Module):
    """images (B, C, H, W) in [0, 1] <-> latents float (B, code_dim, H/f, W/f).

    Has the attributes the rest of stage one reads from a VQ-VAE (``image_size``,
    ``in_channels``, ``downsample``, ``code_dim``, ``code_shape``) and ``num_codes = 0``;
    :meth:`encode` (images -> codes) refuses with a one-line :class:`UserError`.
    """

    num_codes = 0

    def __init__(self, in_channels: int = 1, image_size: tuple[int, int] = (28, 28),
                 hidden: int = 64, res_hidden: int = 32, num_res: int = 2, code_dim: int = 32,
                 downsample: int = 4) -> None:
        super().__init__()
        check_downsample(tuple(image_size), downsample)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.in_channels, self.downsample, self.code_dim = in_channels, downsample, code_dim
        self.encoder = Encoder(in_channels, hidden, res_hidden, num_res, 2 * code_dim, downsample)
        self.decoder = Decoder(in_channels, hidden, res_hidden, num_res, code_dim, downsample)

    @property
    def code_shape(self) -> tuple[int, int]:
        """(h, w) of the latent grid."""
        return (self.image_size[0] // self.downsample, self.image_size[1] // self.downsample)

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images -> (mean, logvar), each float (B, code_dim, h, w); logvar clamped to
        [-30, 20] so exp() stays finite."""
        mean, logvar = self.encoder(images).float().chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, images: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """images -> (decoder mean at a reparameterised z ~ q(z | x) (B, C, H, W), z,
        {"mean", "logvar", "kl" (B,) nats})."""
        mean, logvar = self.posterior(images)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * noise
        return self.decoder(z), z, {"mean": mean, "logvar": logvar,
                                    "kl": kl_divergence(mean, logvar)}

    def encode(self, images: Tensor) -> Tensor:
        raise UserError(f"this checkpoint {NO_CODES}")

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """images -> decoder output at the posterior mean, clamped to [0, 1]."""
        return self.decoder(self.posterior(images)[0]).clamp_(0.0, 1.0)

    @torch.no_grad()
    def decode_latents(self, z: Tensor) -> Tensor:
        """z float (B, code_dim, h, w) -> images (B, C, h*f, w*f) in [0, 1]."""
        return self.decoder(z).clamp_(0.0, 1.0)

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> Tensor:
        """``num`` images decoded from z ~ N(0, I): (num, C, H, W) in [0, 1]."""
        z = torch.randn((num, self.code_dim, *self.code_shape), generator=generator,
                        device=device)
        return self.decode_latents(z)
