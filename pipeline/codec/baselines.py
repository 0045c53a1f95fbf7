"""Standard image codecs as a yardstick for ours: PNG (lossless), and JPEG / WebP at the
lowest quality whose PSNR reaches a target (ours), per image, through Pillow."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vqgen.pipeline import metrics as M

# qualities tried in order; the first whose PSNR reaches the target wins (PSNR rises with
# quality almost always; a non-monotone step only makes the baseline a little larger)
QUALITIES = (1, 2, 3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95, 100)


@dataclass
class Baseline:
    codec: str            # "png", "jpeg" or "webp"
    bits: int | None      # file size in bits; None when no quality reaches the target
    psnr_db: float        # PSNR of the decoded image (inf for lossless)
    quality: int | None   # None for PNG


def _pil(u8: np.ndarray) -> Image.Image:
    """uint8 (H, W, C), C in {1, 3} -> a grey or RGB PIL image."""
    return Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8)


def roundtrip(u8: np.ndarray, fmt: str, **kw) -> tuple[int, np.ndarray]:
    """uint8 (H, W, C) through a Pillow format -> (whole-file bits, decoded uint8 (H, W, C))."""
    buf = io.BytesIO()
    _pil(u8).save(buf, format=fmt, **kw)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        back = np.asarray(img.convert("L" if u8.shape[-1] == 1 else "RGB"))
    return 8 * buf.tell(), back.reshape(u8.shape)


def psnr_u8(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of one shape (peak 255); inf when equal."""
    diff = (reference.astype(np.float64) - decoded.astype(np.float64)) / 255.0
    return M.psnr_from_mse(float((diff**2).mean()))


def png_baseline(u8: np.ndarray) -> Baseline:
    """u8 uint8 (H, W, C) -> PNG size (optimize=True), lossless."""
    bits, _ = roundtrip(u8, "PNG", optimize=True)
    return Baseline("png", bits, float("inf"), None)


def lossy_at_psnr(u8: np.ndarray, codec: str, target_db: float) -> Baseline:
    """The smallest JPEG / WebP (over :data:`QUALITIES`) of u8 uint8 (H, W, C) whose PSNR
    is >= ``target_db``; ``bits=None`` when even the best quality falls short."""
    fmt = {"jpeg": "JPEG", "webp": "WEBP"}[codec]
    best = Baseline(codec, None, float("-inf"), None)
    for q in QUALITIES:
        bits, back = roundtrip(u8, fmt, quality=q)
        p = psnr_u8(u8, back)
        if p >= target_db:
            return Baseline(codec, bits, p, q)
        if p > best.psnr_db:
            best = Baseline(codec, None, p, q)
    return best
