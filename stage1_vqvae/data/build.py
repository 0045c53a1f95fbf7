"""``build_dataset``: a data spec and split -> the :class:`ImageDataset` of that source."""

from __future__ import annotations

from .datasets import ImageDataset
from .folders import _build_folder
from .mnist5k import _build_mnist5k
from .spec import _check_channels, _check_image_size, _check_split, _check_val_fraction, parse_data_spec
from .torchvision_sets import _build_torchvision


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
