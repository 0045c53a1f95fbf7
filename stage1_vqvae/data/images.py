"""Image conversion: any Pillow image or uint8 array -> "L"/"RGB", resized to cover (H, W) and
centre-cropped, as float32 (C, H, W) in [0, 1] (or uint8 for whole arrays)."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps

from .spec import DataError, _check_channels, _check_image_size, _one_line

# Pillow modes that carry an alpha band; composited onto black before dropping it.
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")


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


# the most pixels an input image may decode to (after JPEG's draft scaling): a 48 MP photo
# drafts to 1/8 scale, while a 164 KB PNG of 13000x13000 took 6-8 GB and 15 s to decode for
# a model that reads 28x28 or 32x32 (Pillow's own limit, 179 M pixels, let it through)
MAX_INPUT_PIXELS = 25_000_000


def check_pixels(img: Image.Image, path: str | os.PathLike | str) -> None:
    """DataError unless the opened (not yet decoded) image is within MAX_INPUT_PIXELS."""
    w, h = img.size
    if w * h > MAX_INPUT_PIXELS:
        raise DataError(f"image {path} is {w}x{h} ({w * h / 1e6:.0f} M pixels), over the "
                        f"{MAX_INPUT_PIXELS // 10**6} M-pixel limit for input images; "
                        "shrink it first (the model reads far fewer pixels)")


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
            check_pixels(img, path)
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
