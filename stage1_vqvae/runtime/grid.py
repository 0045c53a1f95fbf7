"""PNG writing for images in [0, 1]: single images and labelled grids."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (..., C, H, W) in [0, 1] -> uint8 (..., H, W, C), rounded."""
    arr = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return np.moveaxis(arr, -3, -1)


def save_png(image: torch.Tensor, path: str | os.PathLike) -> None:
    """image (C, H, W) in [0, 1], C in {1, 3} -> PNG (grey or RGB)."""
    arr = to_uint8(image)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path, format="PNG")


MAX_LABEL_CHARS = 32


def printable_label(text: str) -> str:
    """A row label drawable on one line: control characters (a newline in a class folder's
    name) become spaces, and long names are cut to MAX_LABEL_CHARS with an ellipsis."""
    one_line = "".join(ch if ch.isprintable() else " " for ch in str(text)).strip()
    if len(one_line) > MAX_LABEL_CHARS:
        one_line = one_line[:MAX_LABEL_CHARS - 1] + "\u2026"
    return one_line


def make_grid_image(
    images: torch.Tensor, nrow: int, row_labels: Sequence[str] | None = None,
    pad: int = 2, scale: int = 0,
) -> Image.Image:
    """images (N, C, H, W) in [0, 1] -> a PIL grid, ``nrow`` images per row, optional labels
    on the left of each row. Small images are scaled up (x``scale``, default so cells are
    >= 56 px) with nearest neighbour so the pixels stay visible."""
    n, c, h, w = images.shape
    if scale <= 0:
        scale = max(1, 56 // max(h, w))
    rows = (n + nrow - 1) // nrow
    cell_h, cell_w = h * scale, w * scale
    label_w = 0
    font = ImageFont.load_default()
    if row_labels:
        row_labels = [printable_label(t) for t in row_labels]
        label_w = 8 + max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(t, font=font))
                          for t in row_labels)
    width = label_w + nrow * (cell_w + pad) + pad
    height = rows * (cell_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    arr = to_uint8(images)
    for i in range(n):
        r, col = divmod(i, nrow)
        tile = arr[i]
        tile = np.repeat(tile, 3, axis=-1) if c == 1 else tile
        img = Image.fromarray(tile).resize((cell_w, cell_h), Image.NEAREST)
        canvas.paste(img, (label_w + pad + col * (cell_w + pad), pad + r * (cell_h + pad)))
    if row_labels:
        draw = ImageDraw.Draw(canvas)
        for r, text in enumerate(row_labels[:rows]):
            draw.text((4, pad + r * (cell_h + pad) + cell_h // 2 - 5), text, fill=(255, 255, 255),
                      font=font)
    return canvas


def save_grid(
    images: torch.Tensor, path: str | os.PathLike, nrow: int = 8,
    row_labels: Sequence[str] | None = None,
) -> None:
    make_grid_image(images, nrow, row_labels).save(path, format="PNG")
