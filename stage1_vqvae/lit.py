"""LightningModule for the VQ-VAE and the checkpoint loader.

The checkpoint is the config: every init argument is a plain value saved with
``save_hyperparameters()``, so ``LitVQVAE.load_from_checkpoint(path)`` and
``load_vqvae(path)`` rebuild the model (and the image transform, via ``data``,
``channels`` and ``image_size``) with no other input.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .data.spec import MAX_IMAGE_SIDE
from .metrics import perplexity, psnr_from_mse
from .model import VQVAE
from .runtime.checkpoint import (
    checkpoint_stamp,
    classes_problem,
    dim,
    hparams_mismatch,
    is_int,
    rebuild_module,
)
from .runtime.trainer import warmup_cosine

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
}
DEFAULT_PRESET = {"mnist5k": "mnist", "mnist": "mnist", "fashion-mnist": "mnist",
                  "cifar10": "cifar"}


class LitVQVAE(pl.LightningModule):
    """Trains :class:`VQVAE` on images (B, C, H, W) in [0, 1] with MSE reconstruction.

    Logs ``train/loss``, ``train/recon_loss``, ``val/recon_loss``, ``val/psnr`` (dB, over
    the whole split), ``val/perplexity`` and ``val/codebook_usage`` (distinct codes used in
    the whole validation epoch / K), and writes a reconstruction grid PNG per epoch.
    """

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
        self._val_sse = 0.0
        self._val_pixels = 0
        self._val_preview: Tensor | None = None
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
        self._val_counts = torch.zeros(self.num_codes, dtype=torch.float64, device=self.device)
        self._val_sse, self._val_pixels = 0.0, 0
        self._val_preview = None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images = batch[0]
        recon, codes, _ = self.model(images)
        recon = recon.clamp(0, 1)
        self._val_sse += float(((recon - images) ** 2).sum())
        self._val_pixels += images.numel()
        assert self._val_counts is not None
        self._val_counts += torch.bincount(codes.flatten(), minlength=self.num_codes).double()
        if batch_idx == 0:
            n = min(16, images.shape[0])
            self._val_preview = torch.cat([images[:n], recon[:n]]).detach().cpu()

    def on_validation_epoch_end(self) -> None:
        counts = self._val_counts
        assert counts is not None
        stats = torch.tensor([self._val_sse, float(self._val_pixels)], dtype=torch.float64,
                             device=counts.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(stats)
        mse = float(stats[0] / stats[1].clamp(min=1))
        # sync_dist is off on purpose: the values are already identical on every rank
        self.log("val/recon_loss", mse)
        self.log("val/psnr", psnr_from_mse(mse))
        self.log("val/perplexity", perplexity(counts) if bool(counts.any()) else 1.0)
        self.log("val/codebook_usage", float((counts > 0).sum()) / self.num_codes)
        if self._val_preview is not None and not self.trainer.sanity_checking:
            self._save_preview(self._val_preview)

    def _save_preview(self, preview: Tensor) -> None:
        if self.preview_dir is None or self.global_rank != 0:
            return
        from torchvision.utils import save_image

        n = preview.shape[0] // 2
        path = Path(self.preview_dir) / f"recon_epoch{self.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # top row originals, bottom row reconstructions
        save_image(preview, path, nrow=n, padding=2, pad_value=0.5)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        sched = warmup_cosine(opt, total, self.hparams.warmup_steps, self.hparams.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": sched}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vqgen"] = checkpoint_stamp("vqvae")


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


def load_vqvae(path: str | os.PathLike, map_location: str | torch.device = "cpu",
              checkpoint: dict | None = None) -> LitVQVAE:
    """Rebuild a trained :class:`LitVQVAE` (eval mode) from its checkpoint alone (``checkpoint``:
    the dict already read from ``path``, if the caller has it)."""
    return rebuild_module(LitVQVAE, path, "vqvae", map_location, checkpoint)


LitVQVAE.hparams_problem = staticmethod(_vqvae_hparams_problem)
