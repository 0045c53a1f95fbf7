"""The dataset every source becomes (:class:`ImageDataset`) and the train/val split rule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import load_image
from .spec import (
    DataError,
    DataInfo,
)


class ImageDataset(Dataset):
    """Items are ``(image, label)``: image float32 (C, H, W) in [0, 1], label int
    (-1 when unlabelled).

    Either in memory (``images`` uint8 (N, C, H, W), converted once) or lazy over
    ``paths`` (each file read and converted per item). ``indices`` gives each item's
    position in the full source (npz row, torchvision index, or sorted file list), so
    splits can be checked and items traced back; ``root`` is the folder of ``paths``.
    """

    def __init__(
        self,
        info: DataInfo,
        labels: Sequence[int] | np.ndarray,
        *,
        images: torch.Tensor | None = None,
        paths: Sequence[Path] | None = None,
        indices: np.ndarray | None = None,
        root: Path | None = None,
    ) -> None:
        assert (images is None) != (paths is None), "give exactly one of images / paths"
        self.info = info
        self.labels = np.asarray(labels, dtype=np.int64)
        self.images = images
        self.paths = tuple(paths) if paths is not None else None
        self.root = root  # the folder ``paths`` are relative to (image folders)
        n = len(images) if images is not None else len(self.paths)  # type: ignore[arg-type]
        assert len(self.labels) == n, (len(self.labels), n)
        if images is not None:
            assert images.dtype == torch.uint8
            assert tuple(images.shape[1:]) == (info.channels, *info.image_size), images.shape
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def reads_files(self) -> bool:
        """True when items are decoded from files as they are read (worth loader workers)."""
        return self.paths is not None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        label = int(self.labels[i])
        if self.images is not None:
            return self.images[i].float().div_(255.0), label
        return load_image(self.paths[i], self.info.channels, self.info.image_size), label

    def __repr__(self) -> str:
        return f"ImageDataset({self.info.source}, {len(self)} images)"


def _split_indices(
    labels: np.ndarray | None, n: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random train/val split of range(n), stratified by ``labels`` when given.

    The val size is round(n * val_fraction); per class it is the class's share, with
    the rounding leftovers going to the classes with the largest remainders (so many
    tiny classes still add up to the right total). Both index arrays come back sorted,
    so order within a split follows the source order.
    """
    rng = np.random.default_rng(seed)
    n_val = int(np.floor(n * val_fraction + 0.5))
    if labels is None:
        val = rng.permutation(n)[:n_val]
    else:
        classes = np.unique(labels)
        members = [np.flatnonzero(labels == c) for c in classes]
        quota = np.array([len(m) for m in members], dtype=np.float64) * val_fraction
        take = np.floor(quota + 1e-9).astype(np.int64)  # 1e-9: 500 * 0.1 must give 50
        leftover = n_val - int(take.sum())
        assert 0 <= leftover <= len(classes), leftover
        take[np.argsort(-(quota - take), kind="stable")[:leftover]] += 1
        val = np.concatenate(
            [rng.permutation(m)[:k] for m, k in zip(members, take, strict=True)]
        )
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _pick_split(
    labels: np.ndarray | None, n: int, split: str, val_fraction: float, seed: int, what: str
) -> np.ndarray:
    train, val = _split_indices(labels, n, val_fraction, seed)
    chosen = train if split == "train" else val
    if len(chosen) == 0:
        raise DataError(
            f"{what} has {n} image(s), so split {split!r} would be empty with val_fraction "
            f"{val_fraction}; add images or change val_fraction"
        )
    return chosen
