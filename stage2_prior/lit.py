"""LightningModule for the gated PixelCNN prior and its checkpoint loader.

Every init argument is a plain value; ``num_codes``, ``code_shape``, ``num_classes`` and
``class_names`` come from the code maps' ``meta.json`` and the VQ-VAE that made them is
recorded (``vqvae_checkpoint``, ``vqvae_sha256``) so sampling needs only this checkpoint.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from vqgen.stage1_vqvae.codes import MAX_CODE_SIDE
from vqgen.stage1_vqvae.runtime.checkpoint import (
    checkpoint_stamp,
    classes_problem,
    dim,
    hparams_mismatch,
    is_int,
    rebuild_module,
)
from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage1_vqvae.runtime.pretrained import build_model, resolve_model, write_model
from vqgen.stage1_vqvae.runtime.trainer import (
    load_lr_schedule,
    lr_schedule,
    save_lr_schedule,
    warmup_cosine,
)

from .model import GatedPixelCNN

LN2 = math.log(2.0)


class LitPrior(pl.LightningModule):
    """Trains :class:`GatedPixelCNN` by maximum likelihood on code maps.

    Logs ``train/loss`` (= train NLL, nats per code), ``val/nll`` (nats per code),
    ``val/bits_per_code`` and, for class-conditional models, ``val/nll_uncond`` (the
    same model with the null class, i.e. what unconditional sampling draws from).
    """

    def __init__(
        self,
        num_codes: int = 256,
        code_shape: tuple[int, int] = (7, 7),
        num_classes: int = 0,
        class_names: tuple[str, ...] = (),
        class_counts: tuple[int, ...] = (),
        hidden: int = 48,
        num_layers: int = 8,
        kernel_size: int = 3,
        head_hidden: int = 96,
        dropout: float = 0.0,
        ema_decay: float = 0.0,
        cond_drop: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.05,
        batch_size: int = 64,
        seed: int = 0,
        codes_dir: str = "",
        vqvae_checkpoint: str = "",
        vqvae_sha256: str = "",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= cond_drop < 1.0:
            raise UserError(f"--cond-drop {cond_drop} must be in [0, 1)")
        if not 0.0 <= ema_decay < 1.0:
            raise UserError(f"--ema-decay {ema_decay} must be in [0, 1) (0 turns averaging off)")
        self.model = GatedPixelCNN(
            num_codes, tuple(code_shape), num_classes=num_classes, hidden=hidden,
            num_layers=num_layers, kernel_size=kernel_size, head_hidden=head_hidden,
            dropout=dropout,
        )
        # Polyak averaging: validation (so best.ckpt), sampling and every verb use these weights
        # (load_prior puts them in .model); saved in the state dict, so a resume continues them
        self.ema: GatedPixelCNN | None = None
        if ema_decay > 0:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)

    @property
    def num_codes(self) -> int:
        return self.model.num_codes

    @property
    def code_shape(self) -> tuple[int, int]:
        return self.model.code_shape

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.model.num_classes > 0 else None

    def forward(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.model(codes, labels)

    # Batches come from CodeMapDataModule, whose code maps and labels were range-checked when
    # the folder was read; the steps pass validated=True so they read no value on the host
    # (a GPU sync per step). Direct calls of the model keep every check.

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        codes, labels = batch
        lab = self._labels(labels)
        # random draws from (seed, step, rank), not the RNG's running state: a resumed run
        # (even mid-epoch) drops the same labels and units as an uninterrupted one, and DDP
        # ranks differ
        step_seed = (int(self.hparams.seed) * 1_000_003 + int(self.global_step)) * 4099 + self.global_rank
        if lab is not None and self.hparams.cond_drop > 0:
            g = torch.Generator(device=lab.device).manual_seed(step_seed)
            lab = self.model.drop_labels(lab, self.hparams.cond_drop, generator=g, validated=True)
        if self.hparams.dropout > 0:
            torch.manual_seed(step_seed + 1)  # nn.Dropout draws from the global generator
        nll = F.cross_entropy(self.model(codes, lab, validated=True), codes)
        self.log("train/loss", nll, prog_bar=True, batch_size=codes.shape[0])
        return nll

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is None:
            return
        # the decay ramps up from 0.1 as (1 + t) / (10 + t), so early weights fade out fast
        # (Tensorflow's ExponentialMovingAverage num_updates); one fused update, no host sync
        t = int(self.global_step)
        decay = min(float(self.hparams.ema_decay), (1.0 + t) / (10.0 + t))
        torch._foreach_lerp_(list(self.ema.parameters()),
                             [p.detach() for p in self.model.parameters()], 1.0 - decay)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        codes, labels = batch
        bs = codes.shape[0]
        net = self.ema if self.ema is not None else self.model
        nll = F.cross_entropy(net(codes, self._labels(labels), validated=True), codes)
        self.log("val/nll", nll, batch_size=bs, sync_dist=True, prog_bar=True)
        self.log("val/bits_per_code", nll / LN2, batch_size=bs, sync_dist=True)
        if self.model.num_classes > 0:
            nll_u = F.cross_entropy(net(codes, None, validated=True), codes)
            self.log("val/nll_uncond", nll_u, batch_size=bs, sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        sched = warmup_cosine(opt, lr_schedule(self, self.hparams.warmup_steps, self.hparams.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": sched}

    def save_pretrained(self, folder: str | os.PathLike, *, vqvae: str = "", vqvae_sha256: str = "",
                        card: str | None = None, source: dict | None = None,
                        training: dict | None = None) -> dict:
        """Write this prior as a pretrained folder (see :mod:`stage1_vqvae.runtime.pretrained`):
        the averaged weights when it has them. ``vqvae``: where its VQ-VAE is, relative to
        ``folder`` (``"../vqvae"`` in a pair), with that model's ``vqvae_sha256``; default: the
        recorded checkpoint and sha256. Returns the config."""
        hparams = dict(self.hparams)
        if vqvae:
            hparams.update(vqvae_checkpoint=vqvae, vqvae_sha256=vqvae_sha256)
        net = self.ema if self.ema is not None else self.model
        return write_model(folder, kind="prior", hparams=hparams, weights=net.state_dict(),
                           source=source, training=training, card=card)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> LitPrior:
        """:func:`load_prior` of a pretrained folder, a pair, a shipped name or a checkpoint."""
        return load_prior(name_or_path, map_location)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vqgen"] = checkpoint_stamp("prior")
        save_lr_schedule(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_lr_schedule(self, checkpoint)


def _prior_hparams_problem(hp: dict, state: dict) -> str | None:
    """What is wrong with a checkpoint's prior hyper-parameters given its weights (checked
    before building): sizes must match the weights' shapes, the rest be in range."""
    blocks = {k.split(".")[2] for k in state if k.startswith("model.blocks.")}
    implied = {
        "num_codes": (dim(state, "model.embed.weight", 0), "model.embed"),
        "hidden": (dim(state, "model.embed.weight", 1), "model.embed"),
        "num_layers": (len(blocks), "the gated blocks"),
        "kernel_size": (dim(state, "model.blocks.0.v_conv.conv.weight", 3),
                        "model.blocks.0.v_conv"),
        "head_hidden": (dim(state, "model.head.1.weight", 0), "model.head.1"),
    }
    k = hp.get("num_classes")
    if is_int(k) and k > 0:
        rows = dim(state, "model.class_embed.0.weight", 0)
        implied["num_classes"] = (None if rows is None else rows - 1, "model.class_embed")
    why = hparams_mismatch(hp, implied)
    if why:
        return why
    shape = hp.get("code_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 2
            or not all(is_int(v) and 1 <= v <= MAX_CODE_SIDE for v in shape)):
        return f"hyper-parameter code_shape={shape!r} is not two sizes in [1, {MAX_CODE_SIDE}]"
    return classes_problem(hp)


def load_prior(path: str | os.PathLike, map_location: str | torch.device = "cpu",
              checkpoint: dict | None = None, averaged: bool = True) -> LitPrior:
    """Rebuild a trained :class:`LitPrior` (eval mode) from its checkpoint alone (``checkpoint``:
    the dict already read from ``path``, if the caller has it). ``path`` may also be a
    pretrained folder, a pair's folder or a shipped name (``"mnist"``).

    ``averaged``: a prior trained with ``ema_decay > 0`` gets its averaged weights in ``.model``
    (what validation measured) and no second copy; False keeps both as trained (resume)."""
    if checkpoint is None:
        path = resolve_model(path)
        if path.is_dir():  # a pretrained folder (or pair), or a shipped name: averaged weights only
            lit = build_model(path, "prior", lambda hp: LitPrior, map_location)
            lit.ema = None
            recorded = str(lit.hparams.vqvae_checkpoint or "")
            if recorded and not os.path.isabs(recorded):  # "../vqvae": beside this folder
                lit.hparams.vqvae_checkpoint = str((Path(lit.checkpoint_path) / recorded).resolve())
            return lit
    lit = rebuild_module(LitPrior, path, "prior", map_location, checkpoint)
    if averaged and lit.ema is not None:
        lit.model.load_state_dict(lit.ema.state_dict())
        lit.ema = None
    return lit


LitPrior.hparams_problem = staticmethod(_prior_hparams_problem)
