"""Stage-one metrics: one pass of the VQ-VAE over a split (:func:`run_stage1`) and the held-out
MSE, PSNR, SSIM, codebook usage, perplexity and -log2 p(x | z) per sigma (:func:`stage1_metrics`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from vqgen.pipeline import metrics as M
from vqgen.stage1_vqvae.data.preview import balanced_pick
from vqgen.stage1_vqvae.likelihood import SIGMA_GRID
from vqgen.stage1_vqvae.runtime.errors import UserError


@dataclass
class Stage1Pass:
    """Everything one pass of the VQ-VAE over a split yields (N images, S sigmas)."""

    codes: Tensor        # int64 (N, h, w)
    labels: Tensor       # int64 (N,), -1 when unlabelled
    sse: Tensor          # float64 (N,) sum of squared errors of the clamped reconstruction
    ssim: Tensor | None  # float64 (N,), None when the images are smaller than the window
    recon_bits: Tensor   # float64 (N, S): -log2 p(x | z_q(x)) for each sigma
    sigmas: tuple[float, ...]
    num_codes: int
    dims: int            # C * H * W
    # up to 32 originals and reconstructions (n, C, H, W): a seeded class-balanced pick
    preview: tuple[Tensor, Tensor]


@torch.inference_mode()
def run_stage1(lit, dataset, *, batch_size: int = 256, device: str = "cpu",
               sigmas: Sequence[float] = SIGMA_GRID) -> Stage1Pass:
    """Encode and decode every image of ``dataset`` (items (image (C,H,W) in [0,1], label)).

    Images are taken as 8-bit (k/255), as the data sets store them. The discretized
    Gaussian's mean is the raw decoder output (not clamped: the end levels 0 and 255 own
    the Gaussian's tails, so clamping would only lose probability); MSE, PSNR and SSIM use
    the reconstruction clamped to [0, 1], like training's validation.
    """
    model = lit.model.to(device).eval()
    codes, labels, sse, ssims, rbits = [], [], [], [], []
    h, w = model.image_size
    with_ssim = min(h, w) >= 11
    n_seen = 0
    all_labels = getattr(dataset, "labels", None)
    if all_labels is None:
        all_labels = np.full(len(dataset), -1)
    # the split may be sorted by class: show every class, the same images each time
    pick = balanced_pick(all_labels, 32, seed=0)
    slot = {int(i): k for k, i in enumerate(pick)}
    preview_x, preview_r = [None] * len(pick), [None] * len(pick)
    for images, lab in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = M.quantize_8bit(images.to(device))
        c = model.encode(x)
        mean = model.decoder(model.quantizer.lookup(c))
        recon = mean.clamp(0, 1)
        codes.append(c.cpu())
        labels.append(torch.as_tensor(lab, dtype=torch.long))
        sse.append(((recon - x).cpu().double() ** 2).flatten(1).sum(1))
        if with_ssim:
            ssims.append(M.ssim(x, recon).cpu())
        rbits.append(M.recon_bits(x, mean, sigmas).cpu())
        for j in range(x.shape[0]):
            if n_seen + j in slot:
                preview_x[slot[n_seen + j]], preview_r[slot[n_seen + j]] = x[j].cpu(), recon[j].cpu()
        n_seen += x.shape[0]
    if n_seen == 0:
        raise UserError("the evaluated split holds no images")
    return Stage1Pass(
        codes=torch.cat(codes), labels=torch.cat(labels), sse=torch.cat(sse),
        ssim=torch.cat(ssims) if with_ssim else None, recon_bits=torch.cat(rbits),
        sigmas=tuple(float(s) for s in sigmas), num_codes=int(model.num_codes),
        dims=int(model.in_channels * h * w),
        preview=(torch.stack(preview_x), torch.stack(preview_r)),
    )


def stage1_metrics(lit=None, dataset=None, *, result: Stage1Pass | None = None,
                   batch_size: int = 256, device: str = "cpu") -> dict:
    """Held-out stage-one metrics (JSON-ready). Give (lit, dataset), or a :func:`run_stage1`
    ``result`` to reuse.

    mse: mean over all subpixels (images in [0, 1]); psnr_db = 10 log10(1 / mse) of that
    mean (as training logs val/psnr); ssim: mean over images; codebook_usage: distinct
    codes in the whole split / K; perplexity: exp(entropy) of the split's code histogram.
    """
    if result is None:
        if lit is None or dataset is None:
            raise UserError("stage1_metrics needs (lit, dataset) or result=")
        result = run_stage1(lit, dataset, batch_size=batch_size, device=device)
    n = int(result.codes.shape[0])
    mse = float(result.sse.sum() / (n * result.dims))
    counts = torch.bincount(result.codes.flatten(), minlength=result.num_codes).numpy()
    per_image_psnr = [M.psnr_from_mse(float(s) / result.dims) for s in result.sse]
    return {
        "num_images": n,
        "mse": mse,
        "psnr_db": M.psnr_from_mse(mse),
        "psnr_db_mean_per_image": float(np.mean(per_image_psnr)),
        "ssim": None if result.ssim is None else float(result.ssim.mean()),
        "num_codes": result.num_codes,
        "codes_used": int((counts > 0).sum()),
        "codebook_usage": M.usage(counts),
        "perplexity": M.perplexity(counts),
        "code_counts": [int(c) for c in counts],
    }
