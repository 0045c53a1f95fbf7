"""LightningModule for the VQ-VAE and the checkpoint loader.

The checkpoint is the config: every init argument is a plain value saved with
``save_hyperparameters()``, so ``LitVQVAE.load_from_checkpoint(path)`` and
``load_vqvae(path)`` rebuild the model (and the image transform, via ``data``,
``channels`` and ``image_size``) with no other input.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .data.preview import balanced_pick
from .data.spec import MAX_IMAGE_SIDE
from .gaussian import NO_CODES
from .lit_gan import VQGANTraining
from .lit_gaussian import GaussianTraining
from .metrics import perplexity, psnr_from_mse
from .model import VQVAE
from .quantizer import code_counts
from .runtime.checkpoint import (
    checkpoint_stamp,
    classes_problem,
    dim,
    hparams_mismatch,
    is_int,
    migrate_checkpoint,
    read_checkpoint,
    rebuild_module,
)
from .runtime.errors import UserError
from .runtime.pretrained import build_model, resolve_model, write_model
from .runtime.trainer import load_lr_schedule, lr_schedule, save_lr_schedule, warmup_cosine

PRESETS: dict[str, dict[str, object]] = {
    # 28x28 grey digits -> 7x7 codes
    "mnist": dict(
        channels=1, image_size=(28, 28), downsample=4, hidden=64, res_hidden=32, num_res=2,
        code_dim=32, num_codes=256, lr=4e-3, batch_size=64, max_epochs=27,
    ),
    # 32x32 colour images -> 8x8 codes
    "cifar": dict(
        channels=3, image_size=(32, 32), downsample=4, hidden=128, res_hidden=64, num_res=2,
        code_dim=64, num_codes=512, lr=1e-3, batch_size=128, max_epochs=50,
    ),
    # 64x64 colour images -> 16x16 codes (each code covers 4x4 pixels, as in "cifar")
    "px64": dict(
        channels=3, image_size=(64, 64), downsample=4, hidden=128, res_hidden=64, num_res=2,
        code_dim=64, num_codes=512, lr=1e-3, batch_size=64, max_epochs=40,
    ),
    # 128x128 colour images -> 16x16 codes (downsample 8), not 32x32: the prior draws one
    # code per position and needs a stack deep enough to see the whole grid, so 16x16 keeps
    # its training, depth and sampling at the 64 px cost (1024 positions would be 4x the
    # steps). Codes cover 8x8 pixels, so K is doubled and reconstructions are softer;
    # --downsample 4 gives 32x32 codes (the VQ-VAE paper's choice for 128 px ImageNet).
    "px128": dict(
        channels=3, image_size=(128, 128), downsample=8, hidden=128, res_hidden=64, num_res=2,
        code_dim=64, num_codes=1024, lr=1e-3, batch_size=32, max_epochs=30,
    ),
}
DEFAULT_PRESET = {"mnist5k": "mnist", "mnist": "mnist", "fashion-mnist": "mnist",
                  "cifar10": "cifar"}


class LitVQVAE(pl.LightningModule):
    """Trains :class:`VQVAE` on images (B, C, H, W) in [0, 1] with MSE reconstruction.

    Logs ``train/loss``, ``train/recon_loss``, ``val/recon_loss``, ``val/psnr`` (dB, over
    the whole split), ``val/perplexity`` and ``val/codebook_usage`` (distinct codes used in
    the whole validation epoch / K), and writes a reconstruction grid PNG per epoch of a
    fixed, seeded, class-balanced set of held-out images (:func:`balanced_pick`).
    """

    preview_count = 20  # held-out images in each epoch's preview (2 per class for 10 classes)

    def __init__(
        self,
        channels: int = 1,
        image_size: tuple[int, int] = (28, 28),
        hidden: int = 64,
        res_hidden: int = 32,
        num_res: int = 2,
        code_dim: int = 32,
        num_codes: int = 256,
        downsample: int = 4,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        kmeans_init: bool = True,
        dead_after: int = 50,
        lr: float = 2e-3,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        data: str = "mnist5k",
        data_root: str = "data",
        batch_size: int = 64,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_classes: int = 0,
        class_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = VQVAE(
            in_channels=channels, image_size=tuple(image_size), hidden=hidden,
            res_hidden=res_hidden, num_res=num_res, code_dim=code_dim, num_codes=num_codes,
            downsample=downsample, beta=beta, ema=ema, decay=decay, kmeans_init=kmeans_init,
            dead_after=dead_after,
        )
        self._val_counts: Tensor | None = None
        self._val_sse: list[Tensor] = []  # per-batch sums, on the device until the epoch ends
        self._val_pixels = 0
        self._preview_images: Tensor | None = None  # chosen once, kept on the CPU
        self.preview_dir: str | None = None

    @property
    def code_shape(self) -> tuple[int, int]:
        return self.model.code_shape

    @property
    def num_codes(self) -> int:
        return self.model.num_codes

    def forward(self, images: Tensor) -> Tensor:
        return self.model.encode(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images = batch[0]
        recon, _, vq = self.model(images)
        recon_loss = F.mse_loss(recon, images)
        loss = recon_loss + vq["loss"]
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/recon_loss", recon_loss, batch_size=bs)
        self.log("train/commitment_loss", vq["commitment_loss"], batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        # int64, not float64: MPS has no float64; no host read until the epoch ends
        self._val_counts = torch.zeros(self.num_codes, dtype=torch.int64, device=self.device)
        self._val_sse, self._val_pixels = [], 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images = batch[0]
        recon, codes, _ = self.model(images)
        recon = recon.clamp(0, 1)
        self._val_sse.append(((recon - images.float()) ** 2).sum())
        self._val_pixels += images.numel()
        assert self._val_counts is not None
        self._val_counts += code_counts(codes.flatten(), self.num_codes)

    def on_validation_epoch_end(self) -> None:
        counts = self._val_counts
        assert counts is not None
        # one host read per epoch: the batch sums are added in float64 on the CPU, and the
        # ranks' totals all-reduced in float32 on the device (no float64 there)
        sse = float(torch.stack(self._val_sse).cpu().double().sum()) if self._val_sse else 0.0
        stats = torch.tensor([sse, float(self._val_pixels)], device=counts.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(stats)
        mse = float(stats[0] / stats[1].clamp(min=1))
        # sync_dist is off on purpose: the values are already identical on every rank
        self.log("val/recon_loss", mse)
        self.log("val/psnr", psnr_from_mse(mse))
        self.log("val/perplexity", perplexity(counts) if bool(counts.any()) else 1.0)
        self.log("val/codebook_usage", float((counts > 0).sum()) / self.num_codes)
        if not self.trainer.sanity_checking:
            self._save_preview()

    def preview_images(self) -> Tensor | None:
        """The held-out images every epoch's preview shows: (n, C, H, W) on the CPU, picked
        once by :func:`balanced_pick` from the data module's val split; None without one."""
        if self._preview_images is None:
            dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            ds = dm.dataset("val") if dm is not None and hasattr(dm, "dataset") else None
            if ds is None or len(ds) == 0:
                return None
            pick = balanced_pick(ds.labels, self.preview_count, seed=int(self.hparams.seed))
            self._preview_images = torch.stack([ds[int(i)][0] for i in pick])
        return self._preview_images

    @torch.no_grad()
    def _save_preview(self) -> None:
        if self.preview_dir is None or self.global_rank != 0:
            return
        images = self.preview_images()
        if images is None:
            return
        from torchvision.utils import save_image

        recon = self.model.reconstruct(images.to(self.device))
        preview = torch.cat([images, recon.float().cpu()])
        n = images.shape[0]
        path = Path(self.preview_dir) / f"recon_epoch{self.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # top row originals, bottom row reconstructions
        save_image(preview, path, nrow=n, padding=2, pad_value=0.5)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = warmup_cosine(opt, lr_schedule(self, self.hparams.warmup_steps, self.hparams.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": sched}

    def save_pretrained(self, folder: str | os.PathLike, *, card: str | None = None,
                        source: dict | None = None, training: dict | None = None) -> dict:
        """Write this model as a pretrained folder (config.json, model.safetensors and, given
        ``card``, README.md; see :mod:`stage1_vqvae.runtime.pretrained`). Returns the config."""
        return write_model(folder, kind="vqvae", hparams=dict(self.hparams),
                           weights=self.model.state_dict(), source=source, training=training,
                           card=card)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> LitVQVAE:
        """:func:`load_vqvae` of a pretrained folder, a shipped name (``"mnist"``) or a checkpoint;
        the class (VQ-VAE, VQ-GAN, Gaussian VAE) is the one the model was trained as."""
        lit = load_vqvae(name_or_path, map_location)
        if not isinstance(lit, cls):
            raise UserError(f"{name_or_path} holds a {type(lit).__name__}, not a {cls.__name__}; "
                            "load it with LitVQVAE.from_pretrained")
        return lit

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vqgen"] = checkpoint_stamp("vqvae")
        save_lr_schedule(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # LitVQVAE.load_from_checkpoint reads with Lightning's own loader, not ours: upgrade an
        # old format here (the state dict is loaded after this hook); a no-op when current
        if isinstance(checkpoint.get("vqgen"), dict):
            migrate_checkpoint(checkpoint)
        load_lr_schedule(self, checkpoint)


def _vqvae_hparams_problem(hp: dict, state: dict) -> str | None:
    """What is wrong with a checkpoint's VQ-VAE hyper-parameters given its weights (checked
    before building): sizes must match the weights' shapes, the rest be in range."""
    enc = [k for k in state if k.startswith("model.encoder.net.")]
    res = {k.split(".")[3] for k in enc if ".body." in k}
    down = [k for k in enc if k.endswith(".weight") and ".body." not in k
            and isinstance(state[k], torch.Tensor) and tuple(state[k].shape[2:]) == (4, 4)]
    implied = {
        "num_codes": (dim(state, "model.quantizer.codebook", 0), "model.quantizer.codebook"),
        "code_dim": (dim(state, "model.quantizer.codebook", 1), "model.quantizer.codebook"),
        "channels": (dim(state, "model.encoder.net.0.weight", 1), "model.encoder.net.0"),
        "hidden": (dim(state, "model.decoder.net.0.weight", 0), "model.decoder.net.0"),
        "num_res": (len(res), "the encoder's residual blocks"),
        "downsample": (2 ** len(down), "the encoder's strided convolutions"),
    }
    if hp.get("bottleneck", "vq") == "gaussian":  # no codebook: a Gaussian latent
        del implied["num_codes"], implied["code_dim"]
    why = hparams_mismatch(hp, implied)
    if why:
        return why
    size = hp.get("image_size")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(is_int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in size)):
        return f"hyper-parameter image_size={size!r} is not two sizes in [1, {MAX_IMAGE_SIDE}]"
    if size[0] % hp["downsample"] or size[1] % hp["downsample"]:
        return f"image_size {size} is not divisible by downsample {hp['downsample']}"
    return classes_problem(hp)


# ----------------------------------------------------------------- the stage-one family
# The VQ-GAN and the Gaussian VAE are the VQ-VAE's module with another training (mixins in
# lit_gan.py / lit_gaussian.py, which do not import this module); assembled here so that
# load_vqvae rebuilds any of the three from a checkpoint's hyper-parameters alone.


class LitVQGAN(VQGANTraining, LitVQVAE):
    """The VQ-VAE trained with the VQ-GAN loss (a PatchGAN discriminator, hinge losses,
    feature matching, adaptive weight; see :mod:`stage1_vqvae.lit_gan`)."""


class LitGaussianVAE(GaussianTraining, LitVQVAE):
    """The same encoder / decoder around a diagonal Gaussian latent (no codes; see
    :mod:`stage1_vqvae.lit_gaussian`)."""


def stage_one_class(hparams: dict) -> type[LitVQVAE]:
    """The module class a checkpoint's (or a new run's) hyper-parameters describe."""
    if hparams.get("bottleneck", "vq") == "gaussian":
        return LitGaussianVAE
    if hparams.get("gan", False):
        return LitVQGAN
    return LitVQVAE


def has_codes(lit: LitVQVAE) -> bool:
    """False for the Gaussian VAE: no discrete codes to encode, dump or model with a prior."""
    return lit.hparams.get("bottleneck", "vq") != "gaussian"


def require_codes(lit: LitVQVAE, path: str | os.PathLike) -> None:
    """Raise a one-line UserError when ``lit`` (loaded from ``path``) has no codes."""
    if not has_codes(lit):
        raise UserError(f"{path} {NO_CODES}")


def load_vqvae(path: str | os.PathLike, map_location: str | torch.device = "cpu",
              checkpoint: dict | None = None) -> LitVQVAE:
    """Rebuild a trained stage-one module (eval mode) from its checkpoint alone: a
    :class:`LitVQVAE`, :class:`LitVQGAN` or :class:`LitGaussianVAE`, as its hyper-parameters
    say (``checkpoint``: the dict already read from ``path``, if the caller has it). ``path``
    may also be a pretrained folder, a pair's folder or a shipped name (``"mnist"``; see
    :mod:`stage1_vqvae.runtime.pretrained`)."""
    if checkpoint is None:
        path = resolve_model(path)
        if path.is_dir():  # a pretrained folder (or pair), or a shipped name
            return build_model(path, "vqvae", stage_one_class, map_location)
    ckpt = checkpoint if checkpoint is not None else read_checkpoint(path, "vqvae")
    cls = stage_one_class(dict(ckpt.get("hyper_parameters") or {}))
    return rebuild_module(cls, path, "vqvae", map_location, ckpt)


def trained_dataset(lit: LitVQVAE, split: str, *, data: str | None = None,
                    data_root: str | os.PathLike | None = None, download: bool = False,
                    val_fraction: float | None = None):
    """The ``split`` ("train" / "val") of the data ``lit`` was trained on (or of ``data``),
    converted the way it was trained: its channels, (H, W), split fraction and split seed.
    Items: (image float32 (C, H, W) in [0, 1], label int, -1 without classes)."""
    from .data import build_dataset

    hp = lit.hparams
    return build_dataset(
        data or hp.data, split, data_root=data_root, download=download,
        channels=int(hp.channels), image_size=tuple(hp.image_size),
        val_fraction=float(hp.val_fraction) if val_fraction is None else val_fraction,
        seed=int(hp.seed),
    )


LitVQVAE.hparams_problem = staticmethod(_vqvae_hparams_problem)
