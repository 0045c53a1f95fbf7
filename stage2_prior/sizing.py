"""Prior defaults that follow the code grid and the data: enough depth for the receptive field
to cover the whole grid above and to the left of every position, and a wider model when the
data set is large or a GPU trains it.

Receptive field (see :mod:`stage2_prior.layers`): after ``L`` layers of kernel ``k`` the
logits at (i, j) see rows i-1-R..i-1 at columns j-R..j+R and row i at columns j-R-1..j-1,
with ``R = L * (k // 2)``. Every earlier position of an (h, w) grid is inside it for every
(i, j) exactly when ``R >= max(h - 2, w - 1)`` (the bottom-right code must see the first row,
h-2 rows above the one just above it; a code in column 0 must see column w-1 of the row above).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .layers import receptive_extent

# At least this many training maps count as "large": the CPU demo's 4,500 maps are not.
LARGE_DATA_MAPS = 20_000
# Widths for a large data set on a CPU, and on a GPU (head_hidden follows at 2x).
HIDDEN_LARGE_CPU = 64
HIDDEN_GPU = 128
GPU_BATCH_SIZE = 128
# Deepest kernel-3 stack before a 5x5 kernel is used instead (fewer, wider-reaching layers).
MAX_KERNEL3_LAYERS = 12


def needed_extent(code_shape: tuple[int, int]) -> int:
    """The smallest R with the whole grid above and to the left in view: max(h - 2, w - 1)."""
    h, w = int(code_shape[0]), int(code_shape[1])
    return max(h - 2, w - 1, 0)


def sees_whole_grid(num_layers: int, kernel_size: int, code_shape: tuple[int, int]) -> bool:
    """True when ``num_layers`` layers of ``kernel_size`` see every earlier position."""
    return receptive_extent(num_layers, kernel_size) >= needed_extent(code_shape)


def layers_for(kernel_size: int, code_shape: tuple[int, int], at_least: int = 1) -> int:
    """Fewest layers (>= ``at_least``) of ``kernel_size`` that see the whole grid."""
    return max(at_least, math.ceil(needed_extent(code_shape) / (kernel_size // 2)))


def prior_defaults(base: Mapping[str, Any], code_shape: tuple[int, int], num_maps: int,
                   gpu: bool, given: Mapping[str, Any] | None = None
                   ) -> tuple[dict[str, Any], list[str]]:
    """(config, reasons): ``base`` (the CPU demo's defaults) adapted to the data.

    ``given``: the values the user chose (they are kept as they are; depth or kernel is
    still completed when only one of the two is given). Depth: ``base``'s when it already
    sees the whole (h, w) grid, else the fewest kernel-3 layers that do, or kernel 5 when
    that would take more than ``MAX_KERNEL3_LAYERS``. Width: ``HIDDEN_LARGE_CPU`` from
    ``LARGE_DATA_MAPS`` training maps, ``HIDDEN_GPU`` (and batch ``GPU_BATCH_SIZE``) on a GPU,
    never below ``base``'s. A reason is returned for each change, and a warning (prefixed
    "warning:") when the user's depth and kernel do not see the whole grid.
    """
    given = dict(given or {})
    cfg = {**dict(base), **given}
    reasons: list[str] = []
    h, w = int(code_shape[0]), int(code_shape[1])
    need = needed_extent(code_shape)
    layers_given, kernel_given = "num_layers" in given, "kernel_size" in given
    if not sees_whole_grid(cfg["num_layers"], cfg["kernel_size"], code_shape):
        if kernel_given and not layers_given:
            cfg["num_layers"] = layers_for(cfg["kernel_size"], code_shape, base["num_layers"])
        elif layers_given and not kernel_given:
            k = 2 * math.ceil(need / cfg["num_layers"]) + 1
            cfg["kernel_size"] = max(int(base["kernel_size"]), k)
        elif not layers_given:
            k3 = layers_for(3, code_shape, base["num_layers"])
            cfg["kernel_size"], cfg["num_layers"] = ((3, k3) if k3 <= MAX_KERNEL3_LAYERS
                                                     else (5, layers_for(5, code_shape)))
        if sees_whole_grid(cfg["num_layers"], cfg["kernel_size"], code_shape):
            reasons.append(
                f"{cfg['num_layers']} layers of kernel {cfg['kernel_size']} (R="
                f"{receptive_extent(cfg['num_layers'], cfg['kernel_size'])}) so every code of the "
                f"{h}x{w} grid sees all codes above and to its left (needs R >= {need})")
    if not sees_whole_grid(cfg["num_layers"], cfg["kernel_size"], code_shape):
        r = receptive_extent(cfg["num_layers"], cfg["kernel_size"])
        reasons.append(
            f"warning: --num-layers {cfg['num_layers']} --kernel-size {cfg['kernel_size']} reach "
            f"R={r} codes back, but the {h}x{w} grid needs R >= {need}: later codes cannot see "
            f"the top or far side of the grid; use --num-layers "
            f"{layers_for(cfg['kernel_size'], code_shape)} (or a larger --kernel-size)")
    if "hidden" not in given:
        width = HIDDEN_GPU if gpu else HIDDEN_LARGE_CPU if num_maps >= LARGE_DATA_MAPS else 0
        if width > int(cfg["hidden"]):
            cfg["hidden"] = width
            if "head_hidden" not in given:
                cfg["head_hidden"] = max(int(cfg["head_hidden"]), 2 * width)
            reasons.append(f"hidden {width}: " + ("a GPU trains it" if gpu else
                           f"{num_maps} training maps (>= {LARGE_DATA_MAPS})"))
    if gpu and "batch_size" not in given and int(cfg["batch_size"]) < GPU_BATCH_SIZE:
        cfg["batch_size"] = GPU_BATCH_SIZE
        reasons.append(f"batch size {GPU_BATCH_SIZE} on a GPU")
    return cfg, reasons
