"""Training of the Gaussian VAE baseline as a mixin over the VQ-VAE LightningModule.

``stage1_vqvae.lit.LitGaussianVAE`` is ``GaussianTraining`` + ``LitVQVAE`` (assembled in
``lit.py``, so ``load_vqvae`` rebuilds it from a checkpoint without an import cycle): the
VQ-VAE's hyper-parameters, encoder and decoder sizes, optimizer, schedule and checkpoints,
with :class:`~stage1_vqvae.gaussian.GaussianVAE` as the model. The loss is the negative ELBO
per dimension: a Gaussian likelihood with its maximum-likelihood sigma plus KL / (C*H*W).

Validation logs what the VQ-VAE logs (``val/recon_loss``, ``val/psnr``, at the posterior
mean) and the ELBO in bits/dim with the discretized likelihood the report uses
(:mod:`stage1_vqvae.likelihood`): ``val/bits_per_dim`` = min over the sigma grid of
(-log2 p(x | z) + KL / ln 2) / (C*H*W), z one draw from q(z | x) (seeded), and
``val/kl_bits_per_dim``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .gaussian import GaussianVAE, gaussian_nll_optimal_sigma, kl_divergence
from .likelihood import LN2, SIGMA_GRID, recon_bits
from .metrics import psnr_from_mse
from .runtime.errors import UserError

BOTTLENECKS = ("vq", "gaussian")


class GaussianTraining:
    """Mixin: put before ``LitVQVAE``. Init arguments (saved with the VQ-VAE's):
    bottleneck: "gaussian" (marks the checkpoint); min_sigma: floor of the likelihood's
    sigma on the [0, 1] scale (default 1/255, one grey level). The VQ-VAE's codebook
    arguments are saved but unused."""

    def __init__(self, *, bottleneck: str = "gaussian", min_sigma: float = 1.0 / 255.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if bottleneck != "gaussian":
            raise UserError(f"bottleneck {bottleneck!r}: this class is the Gaussian VAE")
        hp = self.hparams
        self.model = GaussianVAE(
            in_channels=int(hp.channels), image_size=tuple(hp.image_size), hidden=hp.hidden,
            res_hidden=hp.res_hidden, num_res=hp.num_res, code_dim=hp.code_dim,
            downsample=hp.downsample)

    def forward(self, images: Tensor) -> Tensor:
        return self.model.reconstruct(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images = batch[0]
        recon, _, st = self.model(images)
        dims = images[0].numel()
        nll = gaussian_nll_optimal_sigma(recon, images, float(self.hparams.min_sigma))
        kl = st["kl"].mean()
        loss = nll + kl / dims
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/recon_loss", (recon.float() - images).pow(2).mean(), batch_size=bs)
        self.log("train/kl", kl, batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        # float64 sums on the CPU (MPS has no float64): sse, pixels, kl nats, images, bits(S)
        self._val_stats = torch.zeros(4 + len(SIGMA_GRID), dtype=torch.float64)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images = batch[0]
        mean, logvar = self.model.posterior(images)
        recon = self.model.decoder(mean).clamp(0, 1)
        gen = torch.Generator(device=images.device).manual_seed(int(batch_idx))
        noise = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)
        sampled = self.model.decoder(mean + (0.5 * logvar).exp() * noise)
        kl = kl_divergence(mean, logvar)
        bits = recon_bits(images.detach().cpu(), sampled.detach().cpu(), SIGMA_GRID).sum(0)
        s = self._val_stats
        s[0] += float(((recon - images) ** 2).sum())
        s[1] += images.numel()
        s[2] += float(kl.sum())
        s[3] += images.shape[0]
        s[4:] += bits

    def on_validation_epoch_end(self) -> None:
        stats = self._val_stats
        if dist.is_available() and dist.is_initialized():
            t = stats.to(self.device)
            dist.all_reduce(t)
            stats = t.cpu()
        mse = float(stats[0] / stats[1].clamp(min=1))
        n = float(stats[3].clamp(min=1))
        dims = float(stats[1] / max(n, 1.0))
        kl_bits = float(stats[2]) / n / LN2 / dims
        recon_bits_per_dim = stats[4:] / n / dims
        self.log("val/recon_loss", mse)
        self.log("val/psnr", psnr_from_mse(mse))
        self.log("val/kl_bits_per_dim", kl_bits)
        self.log("val/bits_per_dim", float(recon_bits_per_dim.min()) + kl_bits)
        if not self.trainer.sanity_checking:
            self._save_preview()
