"""Folder-aware defaults: look at a seeded sample of an image folder (modes and sizes, read
from the file headers only) and choose channels, image size and a stage-one preset.

``vqgen train-vqvae --data folder:PATH`` without ``--preset`` calls :func:`infer_folder_settings`
and prints :func:`describe`; every chosen value stays overridable on the command line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .folders import _scan_folder
from .spec import DataError

# Pillow modes without colour (alpha-only extras included); everything else counts as colour.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Image sizes the presets are built for (side in pixels) -> preset name; see stage1_vqvae.lit.
SIZE_PRESETS: tuple[tuple[int, str], ...] = ((32, "cifar"), (64, "px64"), (128, "px128"))
# At least this fraction of colour images makes the model colour (grey ones are repeated over
# RGB, which loses nothing; the reverse would drop the colour of most of the data).
COLOUR_FRACTION = 0.1
SAMPLE_SIZE = 512


@dataclass
class FolderScan:
    """What a seeded sample of a folder's image headers shows."""

    root: Path
    num_images: int
    class_names: tuple[str, ...]
    sampled: int
    modes: Counter = field(default_factory=Counter)   # Pillow mode -> count in the sample
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (W, H) of readable samples
    unreadable: int = 0

    @property
    def colour_fraction(self) -> float:
        n = sum(self.modes.values())
        return sum(c for m, c in self.modes.items() if m not in GREY_MODES) / max(n, 1)

    def short_sides(self) -> np.ndarray:
        return np.array([min(w, h) for w, h in self.sizes], dtype=np.int64)


@dataclass
class FolderChoice:
    """Channels, image size (H, W) and preset chosen for a folder, with the reasons."""

    channels: int
    image_size: tuple[int, int]
    preset: str
    downsample: int
    reasons: list[str]


def scan_folder(path: str | Path, *, sample: int = SAMPLE_SIZE, seed: int = 0) -> FolderScan:
    """List the folder (as training will) and open up to ``sample`` images chosen with
    ``seed``; only headers are read (Pillow opens lazily), so a 4000 px photo costs no decode."""
    root = Path(path).expanduser().resolve()
    if not root.exists():  # the same messages as building the data set gives
        raise DataError(f"image folder {root} does not exist; pass folder:PATH of a directory")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass folder:PATH of a directory of images "
                        "(or of class subfolders)")
    paths, _, class_names = _scan_folder(root)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(paths))[: min(sample, len(paths))])
    scan = FolderScan(root=root, num_images=len(paths), class_names=tuple(class_names),
                      sampled=len(pick))
    for i in pick:
        try:
            with Image.open(paths[int(i)]) as img:
                scan.modes[img.mode] += 1
                scan.sizes.append((int(img.size[0]), int(img.size[1])))
        except (OSError, ValueError, Image.DecompressionBombError):
            scan.unreadable += 1
    if not scan.sizes:
        raise DataError(f"none of the {scan.sampled} sampled images in {root} could be read; "
                        "check the files are images Pillow can open")
    return scan


def choose_settings(scan: FolderScan, preset_downsample: Mapping[str, int],
                    downsample: int | None = None) -> FolderChoice:
    """Channels, square image size and preset for ``scan``.

    Channels: 3 when at least ``COLOUR_FRACTION`` of the sampled images are colour, else 1.
    Size: the median short side picks the preset tier (32, 64, 128 px: the largest tier at most
    15% above it, so images are not blown up much; smaller images go to 32 px, larger ones are
    resized down to 128 px, because the prior's cost grows with the code grid). Small grey
    images (median short side <= 30) use the MNIST preset at 28 px. The size is rounded to a
    multiple of ``downsample`` (None: the chosen preset's, from ``preset_downsample``).
    """
    reasons: list[str] = []
    colour = scan.colour_fraction
    channels = 3 if colour >= COLOUR_FRACTION else 1
    if 0 < colour < 1:
        reasons.append(
            f"{colour:.0%} of the sampled images are colour: "
            + ("3 channels (grey images are repeated over RGB, which loses nothing)"
               if channels == 3 else
               f"1 channel (fewer than {COLOUR_FRACTION:.0%}; the colour ones are converted to grey)"))
    sides = scan.short_sides()
    med = int(np.median(sides))
    if channels == 1 and med <= 30:
        side, preset = 28, "mnist"
        reasons.append(f"small grey images (median short side {med} px): the MNIST preset, 28 px")
    else:
        tiers = [t for t in SIZE_PRESETS if t[0] <= 1.15 * med]
        side, preset = tiers[-1] if tiers else SIZE_PRESETS[0]
        if med < side:
            reasons.append(f"median short side {med} px: scaled up to {side} px, the smallest preset")
        elif med > SIZE_PRESETS[-1][0]:
            reasons.append(f"median short side {med} px: resized down to {side} px, the largest "
                           "preset (the prior's cost grows with the code grid; pass --image-size "
                           "and --downsample for more)")
    if sides.min() * 2 < sides.max():
        reasons.append(f"sizes disagree ({sides.min()} to {sides.max()} px short side): every "
                       f"image is resized to cover {side}x{side} and centre-cropped")
    downsample = int(downsample or preset_downsample[preset])
    rounded = max(downsample, int(round(side / downsample)) * downsample)
    if rounded != side:
        reasons.append(f"{side} px rounded to {rounded} px, a multiple of --downsample {downsample}")
    if scan.unreadable:
        reasons.append(f"{scan.unreadable} of {scan.sampled} sampled files could not be opened "
                       "and were left out of this summary")
    return FolderChoice(channels=channels, image_size=(rounded, rounded), preset=preset,
                        downsample=downsample, reasons=reasons)


def describe(scan: FolderScan, choice: FolderChoice) -> str:
    """The lines ``train-vqvae`` prints: what was seen and what was chosen."""
    modes = ", ".join(f"{m} {c}" for m, c in scan.modes.most_common())
    sizes = Counter(scan.sizes)
    sides = scan.short_sides()
    if len(sizes) <= 3:
        size_text = ", ".join(f"{w}x{h} {c}" for (w, h), c in sizes.most_common())
    else:
        size_text = (f"{len(sizes)} distinct, short side {sides.min()}..{sides.max()} px "
                     f"(median {int(np.median(sides))})")
    classes = (f"{len(scan.class_names)} classes" if scan.class_names else "no class folders")
    h, w = choice.image_size
    downsample = choice.downsample
    lines = [
        f"folder {scan.root}: {scan.num_images} images, {classes}; "
        f"{scan.sampled} sampled: modes {modes}; sizes {size_text}",
        f"inferred: channels {choice.channels}, image size {h}x{w}, codes "
        f"{h // downsample}x{w // downsample} (downsample {downsample}), preset {choice.preset} "
        "(override with --channels/--image-size/--downsample/--preset)",
    ]
    lines += [f"  because {r}" for r in choice.reasons]
    return "\n".join(lines)
