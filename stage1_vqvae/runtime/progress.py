"""Progress that reads well both on a terminal and in a log file.

On a TTY: tqdm bars (Lightning's own bar while training). Elsewhere (CI, ``> log``):
plain periodic lines, because carriage-return bars turn into unreadable walls of text.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import pytorch_lightning as pl

T = TypeVar("T")


def is_tty() -> bool:
    return sys.stdout.isatty()


def progress(items: Iterable[T], total: int, desc: str, every_s: float = 10.0) -> Iterator[T]:
    """Yield ``items`` while showing progress (``total`` items expected)."""
    if is_tty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s and done < total:
            last = now
            print(f"{desc}: {done}/{total} ({done / (now - start):.1f}/s)", flush=True)


class PlainProgress(pl.Callback):
    """Plain-line training progress for non-TTY stdout: one line every ``every_s`` seconds
    and one per validation epoch with the logged metrics."""

    def __init__(self, every_s: float = 15.0) -> None:
        self.every_s = every_s
        self._last = 0.0
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s or trainer.global_rank != 0:
            return
        self._last = now
        loss = trainer.callback_metrics.get("train/loss")
        loss_s = f" loss {float(loss):.4f}" if loss is not None else ""
        total = trainer.num_training_batches
        print(
            f"epoch {trainer.current_epoch} batch {batch_idx + 1}/{total} "
            f"step {trainer.global_step}{loss_s} ({now - self._start:.0f}s)",
            flush=True,
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # validation has run by now (it runs inside the epoch), so its metrics are fresh
        if trainer.global_rank != 0:
            return
        shown = {
            k: float(v)
            for k, v in sorted(trainer.callback_metrics.items())
            if k.startswith("val/") and v.numel() == 1
        }
        text = " ".join(f"{k[4:]} {v:.4g}" for k, v in shown.items())
        elapsed = time.monotonic() - self._start
        print(f"epoch {trainer.current_epoch} val: {text} ({elapsed:.0f}s)", flush=True)
