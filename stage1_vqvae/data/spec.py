"""Data specs and their validation: which data, which split, channels, size, held-out fraction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..runtime.errors import UserError


class DataError(UserError):
    """A data problem the user caused (bad spec, missing or unreadable files).

    The message is one line: what was wrong, what was expected, what to do.
    """


DATA_CHOICES = ("mnist5k", "mnist", "fashion-mnist", "cifar10", "folder:PATH")
SPLITS = ("train", "val")
MAX_IMAGE_SIDE = 4096  # larger images make every batch of activations many GB: refused


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
    if max(h, w) > MAX_IMAGE_SIDE:
        raise DataError(f"image_size {h}x{w} is larger than vqgen handles (sides up to "
                        f"{MAX_IMAGE_SIDE}); pass a smaller size, e.g. (64, 64)")
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
