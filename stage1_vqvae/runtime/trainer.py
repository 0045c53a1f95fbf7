"""The Lightning Trainer both stages use: checkpoints, loggers, progress, devices."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import time
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
    if max_time:
        callbacks.append(BudgetSchedule())
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


class LRSchedule:
    """Linear warm-up over ``warmup_steps``, then cosine decay from the base lr to ``floor`` x
    it as progress goes from 0 to 1 over the steps up to ``total_steps``.

    The total can be re-targeted mid-run (a time budget's estimate, see
    :class:`BudgetSchedule`) without a jump in the lr: progress continues from its value at
    the re-target step and reaches 1 at the new total. The state (total, anchor) is saved in
    every checkpoint, so a resumed run continues the same schedule. ``total_steps`` infinite
    (no estimate yet) holds the lr at its peak after warm-up.
    """

    def __init__(self, warmup_steps: int, floor: float, total_steps: float = math.inf,
                 source: str = "steps") -> None:
        self.warmup = max(1, int(warmup_steps))
        self.floor = float(floor)
        self.total = float(total_steps)
        self.source = source  # "steps" (epochs / --max-steps) or "time" (--max-time's estimate)
        self.anchor_step, self.anchor_progress = self.warmup, 0.0
        self.last_step = 0

    def progress(self, step: int) -> float:
        """Where ``step`` is in the decay, in [0, 1]."""
        if step <= self.anchor_step or not math.isfinite(self.total):
            return self.anchor_progress
        if self.total <= self.anchor_step:
            return 1.0
        frac = (step - self.anchor_step) / (self.total - self.anchor_step)
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * frac)

    def factor(self, step: int) -> float:
        """The lr multiplier at optimizer step ``step`` (LambdaLR's lambda)."""
        self.last_step = int(step)
        if step < self.warmup:
            return (step + 1) / self.warmup
        p = self.progress(step)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * p))

    def retarget(self, step: int, total_steps: float, source: str) -> None:
        """From ``step`` on, end the decay at ``total_steps`` (continuous in the lr)."""
        if step > self.anchor_step:
            self.anchor_progress, self.anchor_step = self.progress(step), int(step)
        self.total, self.source = float(total_steps), source

    def state_dict(self) -> dict:
        return {"total": self.total, "source": self.source, "anchor_step": self.anchor_step,
                "anchor_progress": self.anchor_progress, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.source = float(state["total"]), str(state["source"])
        self.anchor_step, self.anchor_progress = int(state["anchor_step"]), float(state["anchor_progress"])
        self.last_step = int(state.get("last_step", 0))


def lr_schedule(module: pl.LightningModule, warmup_steps: int, floor: float) -> LRSchedule:
    """The schedule ``module.configure_optimizers`` steps: its total from the trainer's epochs
    and ``--max-steps`` (infinite when only ``--max-time`` bounds the run: then
    :class:`BudgetSchedule` sets it), or, on resume, the state the checkpoint saved (see
    :func:`save_lr_schedule`). Kept as ``module.lr_schedule``."""
    total = module.trainer.estimated_stepping_batches if module._trainer is not None else math.inf
    sched = LRSchedule(warmup_steps, floor, total)
    saved = getattr(module, "_saved_lr_schedule", None)
    if saved:
        sched.load_state_dict(saved)
        if sched.source == "steps" and sched.total != float(total):
            sched.retarget(sched.last_step, total, "steps")  # resumed with other --max-epochs
    module.lr_schedule = sched
    module._fit_clock = time.monotonic()  # configure_optimizers runs once, at the start of fit
    return sched


def hardware_name() -> str:
    """What trained (or ran) a model, for model cards: the GPU's name, or the CPU threads."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple MPS"
    n = torch.get_num_threads()
    return f"CPU, {n} thread{'s' if n != 1 else ''}"


def save_lr_schedule(module: pl.LightningModule, checkpoint: dict) -> None:
    """on_save_checkpoint: keep the schedule's state (the budget's estimate) with the weights,
    and ``checkpoint["training"]``: seconds of fit so far (summed over resumes) and hardware,
    which exported model cards quote."""
    sched = getattr(module, "lr_schedule", None)
    if isinstance(sched, LRSchedule):
        checkpoint["lr_schedule"] = sched.state_dict()
    before = getattr(module, "_saved_training", None) or {}
    clock = getattr(module, "_fit_clock", None)
    if clock is not None:
        checkpoint["training"] = {
            "seconds": float(before.get("seconds", 0.0)) + time.monotonic() - clock,
            "hardware": hardware_name(),
        }


def load_lr_schedule(module: pl.LightningModule, checkpoint: dict) -> None:
    """on_load_checkpoint: hold the saved state for :func:`lr_schedule` (Lightning restores
    modules before it calls configure_optimizers); older checkpoints have none."""
    module._saved_lr_schedule = checkpoint.get("lr_schedule")
    module._saved_training = checkpoint.get("training")


def warmup_cosine(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> dict:
    """Lightning's scheduler dict stepping ``schedule`` once per optimizer step."""
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step))
    return {"scheduler": sched, "interval": "step"}


class BudgetSchedule(pl.Callback):
    """With ``--max-time``: the lr schedule ends when the time budget does.

    After ``skip`` steps in this process (first batches are slow) the step rate is measured,
    and every ``probe`` steps and after every validation the schedule's total is set to the
    steps done plus that rate (since the measure began, validation included) times the
    remaining budget (``margin`` of it, left for the last validation and checkpoint), capped
    by what the epochs / --max-steps allow. The run stops when
    the schedule is finished, so "train for 20 minutes" gives a finished schedule. A resumed
    run continues the saved schedule and measures its own rate (Lightning's Timer keeps the
    elapsed time across resumes).
    """

    def __init__(self, skip: int = 3, probe: int = 20, margin: float = 0.97) -> None:
        self.skip, self.probe, self.margin = skip, probe, margin
        self._start: tuple[int, float] | None = None
        self._first = 0

    @staticmethod
    def _step(trainer: pl.Trainer) -> int:
        return int(trainer.lr_scheduler_configs[0].scheduler.last_epoch)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._first = None, self._step(trainer)

    def _estimate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        from pytorch_lightning.callbacks import Timer

        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if self._start is None or remaining is None or step <= self._start[0]:
            return
        s0, t0 = self._start
        rate = (step - s0) / max(1e-9, time.perf_counter() - t0)
        total = min(step + rate * max(0.0, remaining) * self.margin,
                    float(trainer.estimated_stepping_batches))
        # DDP: every rank follows rank 0's estimate, or their lrs (and weights) would differ
        total = float(trainer.strategy.broadcast(math.floor(total), src=0))
        pl_module.lr_schedule.retarget(step, total, "time")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        step = self._step(trainer)
        if self._start is None:
            if step - self._first >= self.skip:
                self._start = (step, time.perf_counter())
        elif (step - self._start[0]) % self.probe == 0:  # every `probe` steps: cheap, and
            self._estimate(trainer, pl_module, step)      # a slower machine is caught early
        sched = pl_module.lr_schedule
        if sched.source == "time" and step >= sched.total:
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._start is not None:
            self._estimate(trainer, pl_module, self._step(trainer))
