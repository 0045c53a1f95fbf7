"""Masks for editing in code space: pixel masks from files and boxes, pixel -> code masks,
code -> pixel masks, and the feathered blend weights of ``--paste``.

Conventions: a pixel mask is bool (H, W) or (N, H, W), True = regenerate; a code mask is
bool (h, w) or (N, h, w) over the VQ-VAE's code grid. Pixel y of an H-pixel image lies in
code row ``y * h // H`` (for the usual H = f * h that is the cell of f pixels it belongs to).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vqgen.stage1_vqvae.runtime.errors import MissingInputError, UserError


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` (pixels, x1/y1 exclusive) -> four ints; UserError when malformed."""
    try:
        box = tuple(int(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise UserError(f"--box {text!r}: expected four integers x0,y0,x1,y1 in pixels, "
                        "e.g. --box 0,14,28,28 for the bottom half of a 28x28 image")
    return box  # type: ignore[return-value]


def box_mask(box: tuple[int, int, int, int], image_size: tuple[int, int]) -> Tensor:
    """Pixel mask bool (H, W): True on columns x0..x1-1 of rows y0..y1-1.

    The box is in pixels of the model-size image (``image_size`` = (H, W)) and must lie in
    it with x0 < x1 and y0 < y1.
    """
    x0, y0, x1, y1 = box
    h, w = image_size
    where = f"--box {x0},{y0},{x1},{y1}"
    if x0 >= x1 or y0 >= y1:
        raise UserError(f"{where}: needs x0 < x1 and y0 < y1 (x1, y1 exclusive)")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise UserError(f"{where} is outside the {w}x{h} image (W x H) the models work on; "
                        f"give 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def load_mask(path: str | os.PathLike, image_size: tuple[int, int]) -> Tensor:
    """A mask image -> pixel mask bool (H, W): non-zero (white) = regenerate.

    Any size and mode: brought to ``image_size`` by the same cover-resize and centre crop as
    the images (``stage1_vqvae.data.convert_image``), but with nearest neighbour so the mask
    stays binary. Transparent pixels count as zero.
    """
    from vqgen.stage1_vqvae.data.images import _cover_size, check_pixels
    from vqgen.stage1_vqvae.data.spec import DataError

    if not os.path.exists(path):
        raise MissingInputError(f"--mask {path} does not exist; give a mask image "
                                "(white = regenerate)")
    try:
        with Image.open(path) as img:
            try:
                check_pixels(img, f"--mask {path}")
            except DataError as e:
                raise UserError(str(e).removeprefix("image ")) from None
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            grey = img.convert("L") if img.mode not in ("I", "I;16", "F") else img
            arr = np.asarray(grey)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        if isinstance(e, UserError):  # too many pixels: already said in one line
            raise
        raise UserError(f"--mask {path} is not an image ({' '.join(str(e).split())[:80]}); "
                        "expected a PNG/JPEG/... where white (non-zero) = regenerate") from None
    h, w = image_size
    pil = Image.fromarray((arr != 0).astype(np.uint8) * 255)
    if pil.size != (w, h):
        cw, ch = _cover_size(pil.size, (h, w))
        pil = pil.resize((cw, ch), Image.Resampling.NEAREST)
        left, top = (cw - w) // 2, (ch - h) // 2
        pil = pil.crop((left, top, left + w, top + h))
    return torch.from_numpy(np.asarray(pil) > 0)


def _cells(size: int, cells: int) -> Tensor:
    """int64 (size,): the code cell of each pixel along one axis."""
    return torch.arange(size) * cells // size


def pixel_to_code_mask(pixel_mask: Tensor, code_shape: tuple[int, int], grow: int = 0) -> Tensor:
    """pixel_mask bool (..., H, W) -> code mask bool (..., h, w).

    A code is masked when any pixel of its cell is, then the mask is dilated by ``grow``
    cells (a (2*grow+1)^2 square), because the decoder's receptive field reaches past a cell.
    """
    if grow < 0:
        raise UserError(f"--grow {grow} must be >= 0 (cells)")
    h, w = code_shape
    big_h, big_w = pixel_mask.shape[-2:]
    rows = F.one_hot(_cells(big_h, h), h).T.float()  # (h, H)
    cols = F.one_hot(_cells(big_w, w), w).float()  # (W, w)
    mask = (rows @ pixel_mask.float() @ cols) > 0  # (..., h, w)
    if grow:
        flat = mask.reshape(-1, 1, h, w).float()
        mask = (F.max_pool2d(flat, 2 * grow + 1, stride=1, padding=grow) > 0).reshape(mask.shape)
    return mask


def code_to_pixel_mask(code_mask: Tensor, image_size: tuple[int, int]) -> Tensor:
    """code_mask bool (..., h, w) -> pixel mask bool (..., H, W): each cell's pixels."""
    h, w = code_mask.shape[-2:]
    big_h, big_w = image_size
    return code_mask[..., _cells(big_h, h)[:, None], _cells(big_w, w)[None, :]]


def feather_weights(pixel_mask: Tensor, feather: int) -> Tensor:
    """pixel_mask bool (..., H, W) -> blend weight float (..., H, W) in [0, 1] of the new
    image: exactly 0 outside the mask, rising inside it as d / (feather + 1) with d the
    (chessboard) distance in pixels to the nearest unmasked pixel, 1 from d > feather on.
    ``feather=0`` is a hard paste."""
    if feather < 0:
        raise UserError(f"--feather {feather} must be >= 0 (pixels)")
    shape = pixel_mask.shape
    m = pixel_mask.reshape(-1, 1, *shape[-2:]).float()
    dist = m.clone()  # 1 on masked pixels: distance >= 1
    outside = 1 - m
    for _ in range(feather):
        # grow the unmasked region one pixel; masked pixels it has not reached are farther
        outside = F.max_pool2d(outside, 3, stride=1, padding=1)
        dist = dist + (1 - outside)
    return (dist / (feather + 1)).clamp(max=1).reshape(shape)
