"""Code-map folders as training data for the prior.

Reads only stage one's code-map files (``stage1_vqvae.codes``): ``num_codes``,
``code_shape``, ``num_classes`` and class names come from ``meta.json``, never from flags.

Memory stays flat in the number of code maps: the files stay memory-mapped (uint16 codes),
and only the rows of a batch are read and widened to int64, as the batch is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vqgen.stage1_vqvae.codes import CodeMapError, CodeMaps, read_code_maps
from vqgen.stage1_vqvae.runtime.data_order import make_loader
from vqgen.stage1_vqvae.runtime.errors import MissingInputError

SPLITS = ("train", "val")
# facts both splits must share, or the prior would learn one thing and be judged on another
_MUST_MATCH = ("num_codes", "code_shape", "num_classes", "class_names", "vqvae_sha256")


class CodeDataset(Dataset):
    """Items (codes (h, w) as stored, uint16 for K <= 65536; label int, -1 when unlabelled)
    read from the (memory-mapped) arrays of ``maps``; :func:`collate_codes` makes int64
    batches. Values were range-checked when the folder was read (``read_code_maps``)."""

    def __init__(self, maps: CodeMaps) -> None:
        self.codes, self.labels = maps.codes, maps.labels

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.codes[i], -1 if self.labels is None else int(self.labels[i])

    def __getstate__(self) -> dict[str, Any]:
        # a worker started by spawn (macOS, Windows) gets the file names, not a pickled copy
        # of every code map (which is what pickling a np.memmap does)
        return {name: (_Mapped(arr.filename) if isinstance(arr, np.memmap) else arr)
                for name, arr in (("codes", self.codes), ("labels", self.labels))}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, arr in state.items():
            setattr(self, name, arr.open() if isinstance(arr, _Mapped) else arr)


class _Mapped:
    def __init__(self, filename: str) -> None:
        self.filename = filename

    def open(self) -> np.ndarray:
        return np.load(self.filename, mmap_mode="r", allow_pickle=False)


def collate_codes(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(codes (h, w) uint16, label)] -> (codes int64 (B, h, w), labels int64 (B,))."""
    codes = torch.from_numpy(np.stack([c for c, _ in items]).astype(np.int64))
    return codes, torch.tensor([label for _, label in items], dtype=torch.long)


def open_code_splits(codes_dir: str | os.PathLike) -> dict[str, CodeMaps]:
    """Open ``codes_dir/train`` and ``codes_dir/val`` and check they describe the same codes."""
    root = Path(codes_dir)
    if not root.exists():
        raise MissingInputError(f"code folder {root} does not exist; run `vqgen encode` first")
    if (root / "meta.json").is_file():
        raise CodeMapError(
            f"{root} is a single split; pass its parent folder, which must hold train/ and val/"
        )
    maps = {}
    for split in SPLITS:
        if not (root / split).is_dir():
            raise CodeMapError(
                f"no {split}/ code maps in {root}; expected {root}/train and {root}/val "
                "written by `vqgen encode`"
            )
        if not (root / split / "meta.json").is_file():
            raise CodeMapError(
                f"{root / split} holds no complete code maps (no meta.json); run `vqgen encode "
                f"--out {root}` again"
            )
        maps[split] = read_code_maps(root / split)
    a, b = maps["train"].meta, maps["val"].meta
    for key in _MUST_MATCH:
        if a.get(key) != b.get(key):
            raise CodeMapError(
                f"{root}/train and {root}/val disagree on {key} ({a.get(key)} vs {b.get(key)}); "
                "re-encode both splits with the same VQ-VAE"
            )
    if len(maps["train"]) == 0:
        raise CodeMapError(f"{root}/train holds no code maps")
    if len(maps["val"]) == 0:
        raise CodeMapError(f"{root}/val holds no code maps, so the prior could not be validated "
                           "(no val/nll, no best.ckpt); re-encode with images in the val split")
    return maps


class CodeMapDataModule(pl.LightningDataModule):
    """Batches (codes (B, h, w) int64, labels (B,) int64) from a code folder's splits."""

    def __init__(self, codes_dir: str, batch_size: int = 64, num_workers: int | str = "auto",
                 seed: int = 0) -> None:
        super().__init__()
        self.codes_dir, self.batch_size = codes_dir, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.maps = open_code_splits(codes_dir)
        # a resumed run's loader position (sampler.saved_loader_state), set by the trainer
        self.resume_state: dict[str, int] | None = None
        self._sets: dict[str, CodeDataset] = {}

    @property
    def meta(self) -> dict[str, Any]:
        return self.maps["train"].meta

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self._sets:
                self._sets[split] = CodeDataset(self.maps[split])

    def train_dataloader(self) -> DataLoader:
        self.setup()
        ds = self._sets["train"]
        # order depends on (seed, epoch, rank) only, so --resume replays the same batches
        return make_loader(ds, batch_size=self.batch_size, seed=self.seed, training=True,
                           trainer=self.trainer, resume_state=self.resume_state,
                           drop_last=len(ds) > self.batch_size, num_workers=self.num_workers,
                           collate_fn=collate_codes)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return make_loader(self._sets["val"], batch_size=max(self.batch_size, 256), seed=self.seed,
                           training=False, trainer=self.trainer, num_workers=self.num_workers,
                           collate_fn=collate_codes)
