"""The Lightning Trainer both stages use: checkpoints, loggers, progress, devices."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .checkpoint import check_resumable, migrate_checkpoint
from .errors import UserError
from .fsutil import atomic_file
from .progress import PlainProgress, is_tty
from .run_dir import record_run_files


def _has_tensorboard() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def make_trainer(
    out_dir: str | os.PathLike,
    *,
    monitor: str,
    mode: str = "min",
    max_epochs: int = 10,
    max_time: str | None = None,
    max_steps: int = -1,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str = "32-true",
    limit_train_batches: int | float | None = None,
    limit_val_batches: int | float | None = None,
    log_every_n_steps: int = 20,
    checkpoint_every_steps: int = 0,
    checkpoint_every_minutes: float = 10.0,
    quiet: bool = False,
    callbacks: list[pl.Callback] | None = None,
) -> pl.Trainer:
    """A Trainer writing ``out_dir/last.ckpt`` and ``out_dir/best.ckpt`` (best by ``monitor``),
    CSV logs under ``out_dir/logs`` (TensorBoard too when installed), and a progress bar on a
    TTY or plain lines otherwise. ``max_time`` is "DD:HH:MM:SS" or seconds.

    ``last.ckpt`` is rewritten at every epoch end and also mid-epoch every
    ``checkpoint_every_steps`` optimizer steps and every ``checkpoint_every_minutes`` of
    training (0 turns either off), so a killed run loses at most that much work; it resumes
    at the next unseen batch (see :class:`~stage1_vqvae.sampler.ResumableLoader`). Lightning
    writes checkpoints through a temporary file and a rename, so a kill mid-write leaves
    the previous checkpoint whole. Under DDP, :class:`RankAgreement` checks at the end that
    every rank holds the same weights.
    """
    out_dir = Path(out_dir)
    best = ModelCheckpoint(
        dirpath=out_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    # a separate callback: Lightning's save_last only refreshes last.ckpt when "best" improves
    last = ModelCheckpoint(
        dirpath=out_dir, filename="last", monitor=None, save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    loggers: list = [CSVLogger(out_dir, name="logs")]
    if _has_tensorboard():
        loggers.append(TensorBoardLogger(out_dir, name="tensorboard"))
    callbacks = [best, last, *(callbacks or [])]
    # Lightning wants the triggers in separate callbacks; all three write the same file
    if checkpoint_every_steps and checkpoint_every_steps > 0:
        callbacks.append(ModelCheckpoint(
            dirpath=out_dir, filename="last", monitor=None, save_top_k=1,
            every_n_train_steps=int(checkpoint_every_steps), auto_insert_metric_name=False,
            enable_version_counter=False,
        ))
    if checkpoint_every_minutes and checkpoint_every_minutes > 0:
        callbacks.append(ModelCheckpoint(
            dirpath=out_dir, filename="last", monitor=None, save_top_k=1,
            train_time_interval=timedelta(minutes=float(checkpoint_every_minutes)),
            auto_insert_metric_name=False, enable_version_counter=False,
        ))
    callbacks.append(RankAgreement(out_dir))
    tty = is_tty() and not quiet
    if tty:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    elif not quiet:
        callbacks.append(PlainProgress())
    return pl.Trainer(
        default_root_dir=out_dir,
        max_epochs=max_epochs,
        max_steps=max_steps,
        max_time=_parse_max_time(max_time),
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        precision=precision,
        logger=loggers,
        callbacks=callbacks,
        enable_progress_bar=tty,
        enable_model_summary=tty,
        log_every_n_steps=log_every_n_steps,
        limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0,
        # our samplers shard by rank themselves and keep their (seed, epoch) order and
        # mid-epoch resume; Lightning's DistributedSampler wrapper would lose both
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file in the same folder, fsynced, then renamed.

    Lightning's own "atomic" save stages the bytes in the system temp folder and moves them
    into place; when that is another file system (tmpfs /tmp, a network mount for runs) the
    move is a copy, and a kill during it leaves a truncated ``last.ckpt``. A rename within
    one folder is atomic: a killed run keeps its previous checkpoint whole.
    """

    def load_checkpoint(self, path, *args, **kwargs) -> dict:
        """Lightning's own read (resume): old formats are upgraded as :func:`read_checkpoint`
        does, and one whose weights a migration changed is refused (its optimizer state does
        not fit)."""
        ckpt = super().load_checkpoint(path, *args, **kwargs)
        if isinstance(ckpt, dict) and isinstance(ckpt.get("vqgen"), dict):
            check_resumable(migrate_checkpoint(ckpt), path)
        return ckpt

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them last.ckpt
        record_run_files(Path(path).parent)  # what the run wrote so far (--overwrite removes it)


class RankAgreement(pl.Callback):
    """Under DDP: every rank hashes its weights and buffers (the EMA codebook included) before
    each validation and at the end of training; rank 0 writes ``out_dir/ranks.json``, and the
    run fails as soon as any rank differs, since the saved (rank-0) checkpoint would then not
    be what the others trained.

    Checked before validation because DDP re-broadcasts rank 0's buffers at every forward,
    which would hide a codebook whose statistics were not all-reduced.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.checks = 0

    @staticmethod
    def digest(module: torch.nn.Module) -> str:
        """sha256 over every parameter and buffer (name, dtype, shape, bytes)."""
        h = hashlib.sha256()
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, where: str) -> None:
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return
        digests: list = [None] * trainer.world_size
        torch.distributed.all_gather_object(digests, self.digest(pl_module))
        self.checks += 1
        agree = len(set(digests)) == 1
        if trainer.is_global_zero and (not agree or where == "end of training"):
            report = {"world_size": trainer.world_size, "global_step": trainer.global_step,
                      "checks": self.checks, "agree": agree, "where": where, "digests": digests}
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "ranks.json").write_text(json.dumps(report, indent=2) + "\n")
        if not agree:
            torch.distributed.barrier()  # rank 0 has written the report before anyone exits
            raise RuntimeError(
                f"DDP ranks hold different weights at step {trainer.global_step} ({where}; "
                f"{len(set(digests))} distinct digests among {len(digests)} ranks); "
                "this is a bug in vqgen, please report it"
            )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._check(trainer, pl_module, "before validation")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, "end of training")


def _parse_max_time(value: str | None) -> str | dict | None:
    """Accept Lightning's "DD:HH:MM:SS" or a plain number of seconds ("180")."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise UserError(f"--max-time {value!r}: expected DD:HH:MM:SS or seconds, e.g. 00:00:03:00")
        return text
    try:
        seconds = float(text)
    except ValueError:
        raise UserError(
            f"--max-time {value!r}: expected DD:HH:MM:SS or seconds, e.g. 180"
        ) from None
    if seconds <= 0:
        raise UserError(f"--max-time must be positive, got {value!r}")
    return {"seconds": seconds}


def quiet_lightning() -> None:
    """Silence Lightning's banner lines ("GPU available: False ...") on every run."""
    import logging
    import warnings

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    # a run folder that was moved or copied and then resumed: nothing is lost, only noisy
    warnings.filterwarnings("ignore", message=".*The dirpath has changed.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: float, warmup_steps: int, floor: float
) -> dict:
    """Lightning's scheduler dict: linear warm-up over ``warmup_steps``, then cosine decay to
    ``floor`` x the base lr at ``total_steps`` (constant when the total is unknown, e.g.
    training bounded only by --max-time)."""
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not math.isfinite(total_steps) or total_steps <= warmup:
            return 1.0
        t = min(1.0, (step - warmup) / (total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"scheduler": sched, "interval": "step"}
