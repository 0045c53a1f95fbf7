"""The LightningDataModule serving stage one's train and val splits."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from ..runtime.data_order import make_loader
from .build import build_dataset
from .datasets import ImageDataset
from .spec import (
    SPLITS,
    DataError,
    DataInfo,
    _check_channels,
    _check_image_size,
    _check_split,
    _check_val_fraction,
    parse_data_spec,
)
from .torchvision_sets import TORCHVISION_SETS, _open_torchvision


class VQDataModule(pl.LightningDataModule):
    """Train / val loaders over :func:`build_dataset` for the VQ-VAE.

    Batches are ``(images, labels)``: float32 (B, C, H, W) in [0, 1] and int64 (B,).
    Training order is shuffled by a generator seeded from ``seed`` (same seed, same
    order); validation and :meth:`dataloader` keep dataset order unless asked.
    """

    def __init__(
        self,
        data: str = "mnist5k",
        data_root: str = "data",
        download: bool = False,
        channels: int = 1,
        image_size: tuple[int, int] = (28, 28),
        batch_size: int = 128,
        num_workers: int | str = "auto",
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # Validate now so a bad argument fails before any training starts.
        self.kind, _ = parse_data_spec(data)
        self.data = data
        self.data_root = str(data_root)
        self.download = bool(download)
        self.channels = _check_channels(channels)
        self.image_size = _check_image_size(image_size)
        self.batch_size = self._check_batch_size(batch_size)
        if num_workers != "auto" and (isinstance(num_workers, bool)
                                      or not isinstance(num_workers, int) or num_workers < 0):
            raise DataError(f"num_workers must be 'auto' or an int >= 0, got {num_workers!r}; "
                            "pass e.g. auto or 0")
        self.num_workers = num_workers
        self.val_fraction = _check_val_fraction(val_fraction)
        self.seed = int(seed)
        self._datasets: dict[str, ImageDataset] = {}
        # a resumed run's loader position (sampler.saved_loader_state), set by the trainer
        self.resume_state: dict[str, int] | None = None

    @staticmethod
    def _check_batch_size(batch_size: int) -> int:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be an int >= 1, got {batch_size!r}; pass e.g. 128")
        return batch_size

    def prepare_data(self) -> None:
        # Lightning runs this once per machine: the place to download.
        if self.download and self.kind in TORCHVISION_SETS:
            for split in SPLITS:
                _open_torchvision(self.kind, split, self.data_root, download=True)

    def setup(self, stage: str | None = None) -> None:
        splits = ("val",) if stage == "validate" else SPLITS
        for split in splits:
            self.dataset(split)

    def dataset(self, split: str) -> ImageDataset:
        """The split's dataset, built on first use and cached."""
        split = _check_split(split)
        if split not in self._datasets:
            self._datasets[split] = build_dataset(
                self.data, split, data_root=self.data_root, download=self.download,
                channels=self.channels, image_size=self.image_size,
                val_fraction=self.val_fraction, seed=self.seed,
            )
        return self._datasets[split]

    @property
    def info(self) -> DataInfo:
        """DataInfo of the train split (num_classes, class_names, channels, ...)."""
        return self.dataset("train").info

    def _loader(self, split: str, batch_size: int, shuffle: bool, drop_last: bool,
                training: bool = False, trainer: pl.Trainer | None = None) -> DataLoader:
        # order depends on (seed, epoch, rank) only, so --resume replays the same batches
        return make_loader(
            self.dataset(split), batch_size=batch_size, seed=self.seed, training=training,
            trainer=trainer, shuffle=shuffle, resume_state=self.resume_state, drop_last=drop_last,
            num_workers=self.num_workers,
        )

    def dataloader(
        self, split: str, batch_size: int | None = None, shuffle: bool = False
    ) -> DataLoader:
        """A loader over ``split`` for encoding / reconstruction: every item, dataset
        order unless ``shuffle`` (then seeded like training), no dropped batch."""
        size = self.batch_size if batch_size is None else self._check_batch_size(batch_size)
        return self._loader(split, size, shuffle=shuffle, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        # Drop the ragged last batch only when there is more than one batch: a tiny
        # dataset must still give one (smaller) batch.
        n = len(self.dataset("train"))
        return self._loader("train", self.batch_size, shuffle=True, drop_last=n > self.batch_size,
                            training=True, trainer=self.trainer)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.batch_size, shuffle=False, drop_last=False,
                            trainer=self.trainer)
