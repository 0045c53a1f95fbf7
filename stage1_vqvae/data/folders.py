"""Image folders: an ImageFolder tree (class subfolders) or a flat folder, read lazily."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from .datasets import ImageDataset, _pick_split
from .spec import DataError, DataInfo


def _is_image_file(name: str) -> bool:
    # Hidden files (".DS_Store", macOS "._x.png" resource forks) are never images.
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _scan_folder(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """List the images under ``root``: (paths, labels, class_names), sorted by path.

    Class subfolders (searched recursively) -> labels by sorted folder name; a flat
    folder -> labels -1 and no class names.
    """
    accepted = " ".join(IMG_EXTENSIONS)
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    top_images = [Path(e.path) for e in entries if e.is_file() and _is_image_file(e.name)]
    if not class_dirs:
        if not top_images:
            raise DataError(
                f"no image files in {root} (accepted extensions: {accepted}); "
                "put images there, or class subfolders of images"
            )
        return top_images, [-1] * len(top_images), ()
    if top_images:
        raise DataError(
            f"{root} has both class subfolders and loose images (e.g. {top_images[0].name}); "
            "put every image in a class subfolder, or use a flat folder without subfolders"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, d in enumerate(class_dirs):
        found = sorted(
            Path(dirpath) / f
            for dirpath, _, files in os.walk(d.path, followlinks=True)
            for f in files
            if _is_image_file(f)
        )
        if not found:
            raise DataError(
                f"class folder {d.path} has no image files (accepted extensions: {accepted}); "
                "add images to it or remove it"
            )
        paths += found
        labels += [label] * len(found)
    return paths, labels, tuple(d.name for d in class_dirs)


def _build_folder(
    data: str, path: str, split: str, channels: int, image_size: tuple[int, int],
    val_fraction: float, seed: int,
) -> ImageDataset:
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist; pass folder:PATH of a directory")
    if not root.is_dir():
        raise DataError(
            f"{root} is not a directory; pass folder:PATH of a directory of images "
            "(or of class subfolders)"
        )
    paths, labels_list, class_names = _scan_folder(root)
    labels = np.asarray(labels_list, dtype=np.int64)
    idx = _pick_split(
        labels if class_names else None, len(paths), split, val_fraction, seed, f"folder {root}"
    )
    kind = f"{len(class_names)} classes, stratified" if class_names else "unlabelled, random"
    info = DataInfo(
        data=data, split=split, num_classes=len(class_names), class_names=class_names,
        channels=channels, image_size=image_size,
        source=(
            f"folder {root} ({kind}), split {split}: {len(idx)} of {len(paths)}, "
            f"val_fraction {val_fraction:g} seed {seed}"
        ),
    )
    return ImageDataset(info, labels[idx], paths=[paths[i] for i in idx], indices=idx)
