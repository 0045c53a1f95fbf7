"""Image folders: an ImageFolder tree (class subfolders) or a flat folder, read lazily."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from .datasets import ImageDataset, _pick_split
from .spec import DataError, DataInfo


def _readable_extensions() -> tuple[str, ...]:
    """Every file extension Pillow can open here (``.png``, ``.jpg``, ``.gif``, ``.tga``, ...)."""
    Image.init()
    exts = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return tuple(sorted(exts | set(IMG_EXTENSIONS)))


IMAGE_EXTENSIONS = _readable_extensions()


def _is_image_file(name: str) -> bool:
    # Hidden files (".DS_Store", macOS "._x.png" resource forks) are never images.
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class _Listing:
    """Files under a folder, each real file once: symlinked folders are followed but a
    folder already visited (a loop such as ``again -> .``) is not entered again; a file
    reached twice through links is kept at its first path (sorted order); broken and
    self-referencing links and non-image files are recorded as skipped."""

    def __init__(self) -> None:
        self.seen_dirs: set[tuple[int, int]] = set()
        self.seen_files: set[tuple[int, int]] = set()
        self.skipped: list[Path] = []

    def images(self, folder: Path) -> list[Path]:
        try:
            st = folder.stat()
        except OSError:
            self.skipped.append(folder)
            return []
        if (st.st_dev, st.st_ino) in self.seen_dirs:
            return []
        self.seen_dirs.add((st.st_dev, st.st_ino))
        found: list[Path] = []
        for e in sorted(os.scandir(folder), key=lambda e: e.name):
            if e.name.startswith("."):
                continue
            path = Path(e.path)
            try:
                st = path.stat()  # follows links; a loop or dangling link raises
            except OSError:
                self.skipped.append(path)
                continue
            if stat.S_ISDIR(st.st_mode):
                found += self.images(path)
            elif not _is_image_file(e.name) or not stat.S_ISREG(st.st_mode):
                self.skipped.append(path)
            elif (st.st_dev, st.st_ino) not in self.seen_files:
                self.seen_files.add((st.st_dev, st.st_ino))
                found.append(path)
        return found


def _note_skipped(root: Path, skipped: list[Path]) -> None:
    """Say once per process what a folder holds that is not read as an image."""
    if not skipped or root in _NOTED:
        return
    _NOTED.add(root)
    shown = ", ".join(str(p.relative_to(root)) for p in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    print(f"note: {root}: skipped {len(skipped)} file(s) that are not images Pillow reads, "
          f"or are broken links ({shown}{more})", file=sys.stderr)


_NOTED: set[Path] = set()


def _skipped(root: Path, listing: _Listing) -> str:
    if not listing.skipped:
        return ""
    names = ", ".join(str(p.relative_to(root)) for p in listing.skipped[:3])
    return f"; skipped {len(listing.skipped)} ({names}{', ...' if len(listing.skipped) > 3 else ''})"


def _scan_folder(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """List the images under ``root``: (paths, labels, class_names), sorted by path.

    Class subfolders (searched recursively) -> labels by sorted folder name; a flat
    folder -> labels -1 and no class names. Each real file appears once (see
    :class:`_Listing`); what is skipped is counted and named on stderr.
    """
    accepted = "any format Pillow reads (" + " ".join(IMG_EXTENSIONS) + " .gif ...)"
    listing = _Listing()
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    # a link back to the folder itself or above it (``again -> .``) is a loop, not a class
    loops = {e.name for e in entries if e.is_dir() and e.is_symlink()
             and (Path(e.path).resolve() == root or Path(e.path).resolve() in root.parents)}
    class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")
                  and e.name not in loops]
    top = [Path(e.path) for e in entries if not e.is_dir() and not e.name.startswith(".")]
    listing.skipped += [root / n for n in sorted(loops)]
    top_images = [p for p in top if _is_image_file(p.name) and p.is_file()]
    if not class_dirs:
        paths = listing.images(root)
        if not paths:
            raise DataError(
                f"no image files in {root} (accepted: {accepted}){_skipped(root, listing)}; "
                "put images there, or class subfolders of images"
            )
        _note_skipped(root, listing.skipped)
        return paths, [-1] * len(paths), ()
    if top_images:
        raise DataError(
            f"{root} has both class subfolders and loose images (e.g. {top_images[0].name}); "
            "put every image in a class subfolder, or use a flat folder without subfolders"
        )
    listing.skipped += [p for p in top if not _is_image_file(p.name) or not p.is_file()]
    listing.seen_dirs.add((root.stat().st_dev, root.stat().st_ino))
    paths: list[Path] = []
    labels: list[int] = []
    for label, d in enumerate(class_dirs):
        found = listing.images(Path(d.path))
        if not found:
            raise DataError(
                f"class folder {d.path} has no image files (accepted: {accepted}), or only "
                f"files already listed through a link{_skipped(root, listing)}; add images to "
                "it or remove it"
            )
        paths += found
        labels += [label] * len(found)
    _note_skipped(root, listing.skipped)
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
    return ImageDataset(info, labels[idx], paths=[paths[i] for i in idx], indices=idx, root=root)
