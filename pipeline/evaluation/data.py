"""The evaluated data: the VQ-VAE's own split of a data set, and its images as one tensor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def load_images(dataset, indices: Sequence[int] | np.ndarray | None = None) -> Tensor:
    """Items of an ImageDataset -> float (n, C, H, W) in [0, 1] (all items when no indices)."""
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    if getattr(dataset, "images", None) is not None:  # in memory: one indexing op
        return dataset.images[torch.from_numpy(idx)].float().div_(255.0)
    return torch.stack([dataset[int(i)][0] for i in idx])


def eval_datasets(lit, data: str | None = None, *, split: str = "val", data_root: str | None = None,
                  download: bool = False):
    """(train split, evaluated split) of ``data`` (default: the VQ-VAE's), split exactly as the
    VQ-VAE's training split it (its channels, image size, val_fraction and seed)."""
    from vqgen.stage1_vqvae.data import build_dataset

    hp = lit.hparams
    kw = dict(data_root=data_root or hp.data_root, download=download, channels=int(hp.channels),
              image_size=tuple(hp.image_size), val_fraction=float(hp.val_fraction),
              seed=int(hp.seed))
    spec = data or hp.data
    return build_dataset(spec, "train", **kw), build_dataset(spec, split, **kw)
