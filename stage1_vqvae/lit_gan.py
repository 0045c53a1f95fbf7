"""VQ-GAN training (Esser et al. 2021) as a mixin over the VQ-VAE LightningModule.

``stage1_vqvae.lit.LitVQGAN`` is ``VQGANTraining`` + ``LitVQVAE``: the same encoder,
quantizer and decoder (so encode, priors, sampling and the codec use a VQ-GAN checkpoint as
they use a VQ-VAE one), another training loss, and a PatchGAN discriminator with its own
optimizer. The class is assembled in ``lit.py`` so that ``load_vqvae`` can rebuild it from the
checkpoint alone without an import cycle (this module does not import ``lit``).

One step (manual optimization, two optimizers, one backward pass):

- generator: ``nll = rec_loss (+ perceptual_weight * perceptual)``, plus the quantizer's
  loss, plus ``lambda * g_loss`` with ``g_loss = -mean D(recon)`` and ``lambda`` the adaptive
  weight (:func:`~stage1_vqvae.gan.adaptive_weight`) x ``disc_weight``;
- discriminator: hinge loss on the originals and the detached reconstructions.

The generator's terms go through the discriminator with detached parameters
(:func:`~stage1_vqvae.gan.frozen_forward`) and the discriminator's see detached
reconstructions, so one ``manual_backward`` of the sum gives each network exactly its own
gradient: every parameter is used once per backward (DDP needs no unused-parameter search),
and under 16-bit mixed precision both optimizers step on one loss scale before one
``scaler.update()``. Before ``disc_start`` optimizer steps the discriminator is not used
(not stepped, and the generator's loss is exactly the VQ-VAE's); from then on the perceptual
feature-matching term (on the discriminator's features) and the adversarial term switch on.
``global_step`` counts generator steps, one per batch, as for the VQ-VAE.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from . import gan as adv  # `gan` is also an init argument
from .runtime.errors import UserError
from .runtime.trainer import lr_schedule, warmup_cosine

REC_LOSSES = ("mse", "l1")
PERCEPTUAL = ("features", "lpips", "none")


def reconstruction_loss(recon: Tensor, images: Tensor, kind: str) -> Tensor:
    """Mean squared ("mse") or absolute ("l1") error over every subpixel."""
    if kind == "mse":
        return F.mse_loss(recon, images)
    if kind == "l1":
        return F.l1_loss(recon, images)
    raise UserError(f"reconstruction loss {kind!r}: expected one of {', '.join(REC_LOSSES)}")


class VQGANTraining:
    """Mixin: put before ``LitVQVAE`` in the bases. Its init arguments (plain values, saved
    as hyper-parameters with the VQ-VAE's):

    gan: marks the checkpoint as a VQ-GAN (always True here).
    disc_start: generator steps before the discriminator and its losses switch on (default
    0: on mnist5k, feature matching from the first step gave the VQ-VAE's PSNR and a far
    lower rFD; 200 or 500 cost PSNR, see docs/stage-one-family.md).
    disc_weight: factor on the adaptive weight of the adversarial term (VQGAN: 0.8; default
    0.1: at 0.8 the adversarial gradient cost 2.2 dB of PSNR on mnist5k and raised the rFD).
    disc_lr: the discriminator's Adam learning rate (betas 0.5, 0.9, constant).
    disc_width: channels of its first layer, 0 = by image size
    (:func:`~stage1_vqvae.gan.disc_width_for`). disc_layers: stride-2 layers, 0 = by image
    size (:func:`~stage1_vqvae.gan.disc_layers_for`). The resolved numbers are saved.
    rec_loss: "mse" (as the VQ-VAE, default) or "l1" (the VQGAN paper).
    perceptual: "features" (L1 feature matching on the discriminator's blocks, offline),
    "lpips" (needs the lpips package and its VGG weights) or "none".
    perceptual_weight: its factor. max_adaptive_weight: the clamp on the adaptive weight.
    """

    def __init__(
        self,
        *,
        gan: bool = True,
        disc_start: int = 0,
        disc_weight: float = 0.1,
        disc_lr: float = 2e-4,
        disc_width: int = 0,
        disc_layers: int = 0,
        rec_loss: str = "mse",
        perceptual: str = "features",
        perceptual_weight: float = 1.0,
        max_adaptive_weight: float = 1e4,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)  # LitVQVAE: save_hyperparameters() sees both signatures
        if rec_loss not in REC_LOSSES:
            raise UserError(f"--rec-loss {rec_loss!r}: expected one of {', '.join(REC_LOSSES)}")
        if perceptual not in PERCEPTUAL:
            raise UserError(f"--perceptual {perceptual!r}: expected one of {', '.join(PERCEPTUAL)}")
        if disc_start < 0 or disc_weight < 0 or disc_lr <= 0 or disc_width < 0:
            raise UserError("--disc-start, --disc-weight and --disc-width must be >= 0 and "
                            "--disc-lr > 0")
        hp = self.hparams
        layers = int(disc_layers) or adv.disc_layers_for(tuple(hp.image_size))
        width = int(disc_width) or adv.disc_width_for(tuple(hp.image_size))
        # the checkpoint records the discriminator actually built
        hp.disc_layers, hp.disc_width = layers, width
        self.discriminator = adv.PatchDiscriminator(int(hp.channels), width, layers)
        self.automatic_optimization = False
        self._lpips = None
        if perceptual == "lpips":
            # not a submodule: frozen, never in the checkpoint, never seen by DDP
            object.__setattr__(self, "_lpips", adv.load_lpips())

    def on_fit_start(self) -> None:
        # Lightning warns that step-triggered checkpoints of manual optimization hold the
        # state after the step: that is the state a resume needs
        warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
        super().on_fit_start()

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last layer weight, where the adaptive weight compares gradients."""
        return self.model.decoder.net[-1].weight

    def disc_active(self) -> bool:
        return self.global_step >= int(self.hparams.disc_start)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        hp = self.hparams
        opt_g, opt_d = self.optimizers()
        images = batch[0]
        recon, _, vq = self.model(images)
        rec_loss = reconstruction_loss(recon, images, hp.rec_loss)
        nll = rec_loss
        bs = images.shape[0]
        if self._lpips is not None:
            self._lpips.to(images.device)
            p_loss = adv.lpips_loss(self._lpips, recon, images)
            nll = nll + hp.perceptual_weight * p_loss
            self.log("train/perceptual_loss", p_loss, batch_size=bs)
        active = self.disc_active()
        if active:
            # one discriminator pass over originals and (detached) reconstructions: GroupNorm
            # is per image, so this equals two passes
            logits, feats = self.discriminator(torch.cat([images, recon.detach()]))
            logits_real, logits_fake = logits.split(bs)
            d_loss = adv.hinge_d_loss(logits_real, logits_fake)
            logits_gen, feats_gen = adv.frozen_forward(self.discriminator, recon)
            if hp.perceptual == "features":
                fm = adv.feature_matching_loss(feats_gen, [f[:bs] for f in feats])
                nll = nll + hp.perceptual_weight * fm
                self.log("train/feature_loss", fm, batch_size=bs)
            g_loss = adv.hinge_g_loss(logits_gen)
            weight = adv.adaptive_weight(nll, g_loss, self.last_layer,
                                         max_weight=hp.max_adaptive_weight) * hp.disc_weight
            loss = nll + weight * g_loss + vq["loss"] + d_loss
            self.log("train/d_loss", d_loss, batch_size=bs)
            self.log("train/g_loss", g_loss, batch_size=bs)
            self.log("train/adaptive_weight", weight, batch_size=bs)
            self.log("train/logits_real", logits_real.float().mean(), batch_size=bs)
            self.log("train/logits_fake", logits_fake.float().mean(), batch_size=bs)
        else:
            loss = nll + vq["loss"]
            if self.trainer.world_size > 1:
                # DDP without unused-parameter search wants every parameter in every backward
                loss = loss + 0.0 * sum(p.sum() for p in self.discriminator.parameters())
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if active:
            self._step_discriminator(opt_d)
        opt_g.step()  # the LightningOptimizer: counts global_step, scaler.update() under fp16
        self.lr_schedulers().step()
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/recon_loss", rec_loss, batch_size=bs)
        self.log("train/commitment_loss", vq["commitment_loss"], batch_size=bs)
        return loss

    def _step_discriminator(self, opt_d) -> None:
        """Step the discriminator's raw optimizer (so global_step counts generator steps only);
        under fp16 through the shared GradScaler, whose update() the generator's step makes."""
        raw = getattr(opt_d, "optimizer", opt_d)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            scaler.step(raw)
        else:
            raw.step()

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = torch.optim.Adam(self.model.parameters(), lr=hp.lr)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.disc_lr, betas=(0.5, 0.9))
        sched = warmup_cosine(opt_g, lr_schedule(self, hp.warmup_steps, hp.min_lr_ratio))
        return [opt_g, opt_d], [sched]
