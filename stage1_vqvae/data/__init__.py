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

from .build import build_dataset
from .datasets import ImageDataset
from .images import _convert_array, convert_image, load_image
from .module import VQDataModule
from .preview import balanced_pick
from .spec import DATA_CHOICES, SPLITS, DataError, DataInfo, parse_data_spec
from .torchvision_sets import TORCHVISION_SETS

__all__ = [
    "DATA_CHOICES", "SPLITS", "TORCHVISION_SETS", "DataError", "DataInfo", "ImageDataset",
    "VQDataModule", "_convert_array", "balanced_pick", "build_dataset", "convert_image", "load_image",
    "parse_data_spec",
]
