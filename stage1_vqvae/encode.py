"""Dataset -> code-map folder, streaming and deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from .codes import CodeMapWriter
from .lit import LitVQVAE
from .runtime.checkpoint import file_sha256
from .runtime.data_order import dist_info, on_cuda, resolve_workers
from .runtime.progress import progress
from .runtime.trainer import quiet_lightning


@torch.inference_mode()
def encode_dataset(
    lit: LitVQVAE,
    dataset: Dataset,
    out_folder: str | os.PathLike,
    *,
    num_classes: int,
    class_names: tuple[str, ...] | list[str],
    source: str,
    checkpoint_path: str | os.PathLike | None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int | str = "auto",
    checkpoint_sha256: str | None = None,
) -> Path:
    """Encode ``dataset`` (items (images (C,H,W) in [0,1], label)) in order into a code-map
    folder. Memory stays flat: batches stream from the loader into a memory-mapped file.

    Returns the folder. ``meta.json`` appears only when every row is written.
    ``checkpoint_sha256`` saves re-hashing the checkpoint when several splits are encoded.
    """
    model = lit.model.to(device).eval()
    n = len(dataset)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=resolve_workers(num_workers, dataset),
                        pin_memory=torch.device(device).type == "cuda")
    meta = _meta(model, num_classes, class_names, source, checkpoint_path, checkpoint_sha256)
    has_labels = num_classes > 0
    desc = f"encode {Path(out_folder).name}"
    with CodeMapWriter(
        out_folder, count=n, code_shape=model.code_shape, num_codes=model.num_codes,
        has_labels=has_labels, meta=meta, **row_sources(dataset),
    ) as writer:
        for images, labels in progress(loader, total=len(loader), desc=desc):
            codes = model.encode(images.to(device)).cpu().numpy()
            writer.write(codes, np.asarray(labels, dtype=np.int64) if has_labels else None)
    return Path(out_folder)


def row_sources(dataset: Dataset) -> dict:
    """Where each row comes from, for :class:`CodeMapWriter`: ``index`` (the dataset's
    positions in its full source, when it records them) and, for image folders, each file's
    path relative to the folder (``paths``, ``root``)."""
    index = getattr(dataset, "indices", None)
    paths = getattr(dataset, "paths", None)
    root = getattr(dataset, "root", None)
    rel = None
    if paths is not None and root is not None:
        rel = [Path(os.path.relpath(p, root)).as_posix() for p in paths]
    return dict(index=index, paths=rel, root=None if root is None else str(root))


def _meta(model, num_classes: int, class_names, source: str, checkpoint_path,
          checkpoint_sha256: str | None) -> dict:
    ckpt = Path(checkpoint_path).resolve() if checkpoint_path else None
    return {
        "num_classes": int(num_classes),
        "class_names": list(class_names),
        "vqvae_checkpoint": str(ckpt) if ckpt else None,
        "vqvae_sha256": checkpoint_sha256 or (file_sha256(ckpt) if ckpt else None),
        "source": source,
        "image_size": list(model.image_size),
        "channels": int(model.in_channels),
    }


class _Indexed(Dataset):
    """(index, image, label) items, so rows land at their dataset position on any rank."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return i, image, label


class _EncodeModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def predict_step(self, batch, batch_idx: int):
        index, images, labels = batch
        return index, self.model.encode(images), labels


class _ShardData(pl.LightningDataModule):
    """Rank r encodes the r-th contiguous block of ceil(n / world) items. Contiguous, so
    with a batch size dividing the block the batches hold the same items as a one-process
    run's, which makes the codes bit-identical (the kernels' rounding can depend on the
    batch); and each rank reads its own stretch of the data."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int | str) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.num_workers = _Indexed(dataset), batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        rank, world = dist_info(self.trainer)
        n = len(self.dataset)
        per = -(-n // world)
        block = range(min(n, rank * per), min(n, (rank + 1) * per))
        workers = resolve_workers(self.num_workers, self.dataset.dataset,
                                  int(self.trainer.num_devices) if self.trainer else 1)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=block,
                          num_workers=workers, pin_memory=on_cuda(self.trainer))


class _ShardWriter(BasePredictionWriter):
    """Each rank writes its rows into rank 0's temp arrays; rank 0 commits (meta.json last)
    only when the ranks' row counts add up to the dataset. Needs a file system every rank
    sees (one machine, or a shared mount across nodes)."""

    def __init__(self, folder: Path, writer_args: dict) -> None:
        super().__init__(write_interval="batch")
        self.folder, self.writer_args = folder, writer_args
        self.writer: CodeMapWriter | None = None
        self.rows = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.writer = CodeMapWriter(self.folder, **self.writer_args)
        trainer.strategy.barrier("vqgen-encode-create")
        if not trainer.is_global_zero:
            self.writer = CodeMapWriter(self.folder, attach=True, **self.writer_args)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0) -> None:
        index, codes, labels = prediction
        has_labels = self.writer_args["has_labels"]
        self.writer.write_at(index.cpu().numpy(), codes.cpu().numpy(),
                             labels.cpu().numpy() if has_labels else None)
        self.rows += int(index.shape[0])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer.flush()
        # int64: exact, and on MPS, which has no float64
        total = int(trainer.strategy.reduce(torch.tensor(self.rows, dtype=torch.int64,
                                                         device=pl_module.device), reduce_op="sum"))
        trainer.strategy.barrier("vqgen-encode-written")  # every rank's rows are on disk
        if trainer.is_global_zero:
            if total != self.writer.count:
                self.writer.abort()
                raise RuntimeError(f"ranks wrote {total} rows, expected {self.writer.count}")
            self.writer.commit_rows(total)
            self.writer.close()
        else:
            self.writer.abort()  # an attached writer only lets go of its memory maps
        trainer.strategy.barrier("vqgen-encode-committed")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.writer is not None:
            self.writer.abort()


def encode_dataset_distributed(
    lit: LitVQVAE,
    dataset: Dataset,
    out_folder: str | os.PathLike,
    *,
    num_classes: int,
    class_names: tuple[str, ...] | list[str],
    source: str,
    checkpoint_path: str | os.PathLike | None,
    batch_size: int = 256,
    num_workers: int | str = "auto",
    checkpoint_sha256: str | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "ddp",
    num_nodes: int = 1,
) -> Path:
    """:func:`encode_dataset` split across devices (and nodes) through Lightning's
    ``Trainer.predict``: rank r encodes the r-th contiguous block of the dataset and writes
    it at its dataset positions, so the folder holds the rows in dataset order. With a batch
    size that divides ceil(n / world) it equals the one-process folder byte for byte.

    Memory stays flat (nothing is gathered; rows go straight into the memory-mapped temp
    arrays), and ``meta.json`` appears only after every rank's rows are written.
    """
    quiet_lightning()
    model = lit.model.eval()
    n = len(dataset)  # type: ignore[arg-type]
    writer_args = dict(
        count=n, code_shape=model.code_shape, num_codes=model.num_codes,
        has_labels=num_classes > 0,
        meta=_meta(model, num_classes, class_names, source, checkpoint_path, checkpoint_sha256),
        **row_sources(dataset),
    )
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[_ShardWriter(Path(out_folder), writer_args)],
    )
    trainer.predict(_EncodeModule(model), datamodule=_ShardData(dataset, batch_size, num_workers),
                    return_predictions=False)
    return Path(out_folder)
