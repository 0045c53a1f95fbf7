"""Train the prior on a code folder (``codes/train`` + ``codes/val``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

from vqgen.stage1_vqvae.codes import read_code_maps, read_meta
from vqgen.stage1_vqvae.runtime.checkpoint import read_checkpoint
from vqgen.stage1_vqvae.runtime.data_order import saved_loader_state
from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage1_vqvae.runtime.run_dir import prepare_run_dir, record_run_files
from vqgen.stage1_vqvae.runtime.trainer import make_trainer, quiet_lightning

from .data import CodeMapDataModule
from .lit import LitPrior, load_prior

PRIOR_DEFAULTS: dict[str, Any] = dict(
    # sized for a CPU: ~6-9 s per epoch of 4,500 7x7 maps on 2 cores (benchmarks/stage2.py).
    # Averaged weights, weight decay 0.3 and dropout 0.05 won at equal epochs on the demo's
    # codes (benchmarks/prior_ablation.py, docs/benchmarks.md): 3.27 bits per code at 14
    # epochs against 3.40 without them; wider or deeper nets lost at equal time
    hidden=48, num_layers=8, kernel_size=3, head_hidden=96, cond_drop=0.1, lr=3e-3,
    ema_decay=0.998, weight_decay=0.3, dropout=0.05, batch_size=64, max_epochs=14,
)


def _inputs(codes_dir: str | os.PathLike) -> list[tuple[str, object]]:
    """The codes and the VQ-VAE they record: a run folder may hold neither (its
    ``--overwrite`` would delete them)."""
    inputs: list[tuple[str, object]] = [("--codes", codes_dir)]
    try:
        recorded = read_meta(Path(codes_dir) / "train").get("vqvae_checkpoint")
    except UserError:
        recorded = None  # the data module names what is wrong with the codes
    if recorded:
        inputs.append(("the codes' VQ-VAE", recorded))
    return inputs


def _class_counts(codes_dir: Path, num_classes: int) -> tuple[int, ...]:
    """Training maps per class (what unconditional sampling draws classes from)."""
    if num_classes <= 0:
        return ()
    labels = read_code_maps(codes_dir / "train").labels
    if labels is None:
        return ()
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return tuple(int(c) for c in counts[:num_classes])


@dataclass
class PriorResult:
    out_dir: Path
    last: Path
    best: Path | None
    metrics: dict[str, float]
    is_global_zero: bool = True  # False on the other DDP ranks, which should stay quiet


def train_prior(
    codes_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_args: dict[str, Any],
    *,
    trainer_args: dict[str, Any],
    batch_size: int = 64,
    seed: int = 0,
    num_workers: int | str = "auto",
    resume: bool = False,
    overwrite: bool = False,
) -> PriorResult:
    """Fit a :class:`LitPrior` on ``codes_dir``; facts about the codes come from meta.json.

    model_args: hidden, num_layers, kernel_size, head_hidden, cond_drop, lr, ... (ignored
    on resume: the checkpoint is the config).
    """
    quiet_lightning()
    out = Path(out_dir)
    ckpt_path = prepare_run_dir(out, resume=resume, overwrite=overwrite, verb="train-prior",
                                inputs=[] if resume else _inputs(codes_dir))
    if ckpt_path is not None:
        ckpt = read_checkpoint(ckpt_path, "prior")  # read once: the model and the loader position
        # load_prior returns eval mode; Lightning keeps module modes as they are
        lit = load_prior(ckpt_path, checkpoint=ckpt, averaged=False).train()
        hp = lit.hparams
        codes_dir, batch_size, seed = hp.codes_dir, hp.batch_size, hp.seed
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = CodeMapDataModule(str(codes_dir), batch_size=batch_size, num_workers=num_workers,
                           seed=seed)
    if ckpt_path is not None:
        dm.resume_state = saved_loader_state(ckpt)
    if ckpt_path is None:
        meta = dm.meta
        reach = 2 * max(meta["code_shape"]) + 1  # a wider kernel sees nothing more
        if int(model_args.get("kernel_size", 3)) > reach:
            raise UserError(f"--kernel-size {model_args['kernel_size']} is wider than the "
                            f"{meta['code_shape'][0]}x{meta['code_shape'][1]} code grid needs "
                            f"(at most {reach})")
        lit = LitPrior(
            **model_args, num_codes=int(meta["num_codes"]),
            code_shape=tuple(int(s) for s in meta["code_shape"]),
            num_classes=int(meta.get("num_classes", 0)),
            class_names=tuple(meta.get("class_names", [])),
            class_counts=_class_counts(Path(codes_dir), int(meta.get("num_classes", 0))),
            batch_size=batch_size, seed=seed,
            codes_dir=str(Path(codes_dir).resolve()),
            vqvae_checkpoint=str(meta.get("vqvae_checkpoint") or ""),
            vqvae_sha256=str(meta.get("vqvae_sha256") or ""),
        )
    trainer = make_trainer(out, monitor="val/nll", mode="min", **trainer_args)
    trainer.fit(lit, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if trainer.is_global_zero:
        record_run_files(out)  # the logs written after the last checkpoint
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best = out / "best.ckpt"
    return PriorResult(out, out / "last.ckpt", best if best.exists() else None, metrics,
                       trainer.is_global_zero)
