"""Stage-two metrics: the prior's held-out NLL beside the uniform and unigram baselines
(:func:`prior_nll`, :func:`prior_metrics`) and the VQ-VAE paper's bits/dim bound
(:func:`whole_model_bound`)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from vqgen.pipeline import metrics as M
from vqgen.pipeline.evaluation.stage1 import Stage1Pass

BOUND_FORMULA = "bits/dim = (-log2 p(z_q(x)) - log2 p(x | z_q(x))) / (C*H*W)"


def train_code_maps(lit, vqvae_path: str | os.PathLike, train_ds, *, batch_size: int = 256,
                    device: str = "cpu") -> tuple[np.ndarray, str]:
    """Code maps (N, h, w) of the training split and where they came from.

    ``<run>/codes/train`` is used when it was written by this very checkpoint (sha256) from
    this very split (source and count); otherwise the split is encoded in memory.
    """
    from vqgen.stage1_vqvae.codes import CodeMapError, read_code_maps
    from vqgen.stage1_vqvae.runtime.pretrained import model_sha256

    folder = Path(vqvae_path).parent / "codes" / "train"
    if (folder / "meta.json").is_file():
        try:
            maps = read_code_maps(folder)
            meta = maps.meta
            if (meta.get("vqvae_sha256") == model_sha256(vqvae_path) and len(maps) == len(train_ds)
                    and meta.get("source") == train_ds.info.source
                    and int(maps.num_codes) == int(lit.num_codes)):
                return np.asarray(maps.codes).astype(np.int64), str(folder)
        except CodeMapError:
            pass
    model = lit.model.to(device).eval()
    out = []
    with torch.inference_mode():
        for images, _ in DataLoader(train_ds, batch_size=batch_size, shuffle=False):
            out.append(model.encode(M.quantize_8bit(images.to(device))).cpu())
    return torch.cat(out).numpy(), "encoded in memory"


@torch.inference_mode()
def prior_nll(prior, codes: Tensor | np.ndarray, labels: Tensor | None = None, *,
              batch_size: int = 256, device: str = "cpu") -> Tensor:
    """Per-position NLL in nats: codes int (N, h, w) -> float64 (N, h, w).

    labels int (N,) conditions a class-conditional prior; None means the null class
    (what unconditional sampling draws from), or no label for an unconditional prior.
    """
    model = prior.model.to(device).eval()
    codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, Tensor) else codes).long()
    out = []
    for s in range(0, codes.shape[0], batch_size):
        c = codes[s : s + batch_size].to(device)
        lab = None if labels is None else labels[s : s + batch_size].to(device)
        out.append(F.cross_entropy(model(c, lab), c, reduction="none").cpu().double())
    return torch.cat(out)


def prior_metrics(prior, train_codes: np.ndarray | Tensor, val_codes: np.ndarray | Tensor,
                  val_labels: Tensor | None = None, *, batch_size: int = 256, device: str = "cpu",
                  nll: Tensor | None = None, nll_uncond: Tensor | None = None) -> dict:
    """Held-out NLL of the prior beside the uniform and unigram baselines (JSON-ready).

    train_codes / val_codes int (N, h, w); val_labels int (N,) for a class-conditional
    prior (None: the null class only). ``nll`` / ``nll_uncond`` (from :func:`prior_nll`)
    skip recomputing. Unigram: the training split's code frequencies; its entropy in bits,
    and (the comparable number) the cross-entropy of the held-out codes under those
    frequencies, add-one smoothed so a code unseen in training costs finite bits.
    """
    k = int(prior.num_codes)
    conditional = prior.model.num_classes > 0 and val_labels is not None
    if nll_uncond is None:
        nll_uncond = prior_nll(prior, val_codes, None, batch_size=batch_size, device=device)
    if conditional and nll is None:
        nll = prior_nll(prior, val_codes, val_labels, batch_size=batch_size, device=device)
    main = nll if conditional else nll_uncond
    assert main is not None
    positions = int(np.prod(main.shape[1:]))
    tr = np.bincount(np.asarray(train_codes).astype(np.int64).ravel(), minlength=k)
    va = np.bincount(np.asarray(val_codes).astype(np.int64).ravel(), minlength=k)
    nats = float(main.mean())
    out = {
        "num_codes": k,
        "code_shape": [int(s) for s in main.shape[1:]],
        "num_heldout_maps": int(main.shape[0]),
        "conditional": bool(conditional),
        "nll_nats_per_code": nats,
        "bits_per_code": nats / M.LN2,
        "bits_per_map": nats / M.LN2 * positions,
        "nll_uncond_nats_per_code": float(nll_uncond.mean()),
        "bits_per_code_uncond": float(nll_uncond.mean()) / M.LN2,
        "baselines": {
            "uniform_bits_per_code": math.log2(k),
            "unigram_train_entropy_bits_per_code": M.entropy(tr, base=2),
            "unigram_heldout_cross_entropy_bits_per_code": M.cross_entropy(va, tr + 1.0, base=2),
            "unigram_definition": (
                "p(code) = frequency of the code in the TRAINING split's code maps; "
                "train_entropy = H(p) in bits; heldout_cross_entropy = -mean log2 p(code) over "
                "the held-out codes with add-one smoothed p (the number comparable to the "
                "prior's held-out bits per code)"),
        },
        "per_position_bits": (main.mean(0) / M.LN2).tolist(),
        "per_position_from": "class-conditional NLL" if conditional else "unconditional NLL",
    }
    return out


def whole_model_bound(stage1: Stage1Pass, prior_bits_per_image: Tensor | np.ndarray) -> dict:
    """The VQ-VAE paper's bound on the held-out NLL in bits per dimension.

    q(z | x) is one-hot, so KL(q || p(z)) = -log p(z_q(x)) and
    NLL(x) <= -log p(x | z_q(x)) - log p(z_q(x)); p(x | z) is a discretized Gaussian over the
    256 levels of each subpixel, mean = decoder output, one global sigma picked on
    ``SIGMA_GRID`` to minimise the bound. prior_bits_per_image: (N,) -log2 p(z_q(x)).
    """
    res = M.bits_per_dim_bound(stage1.recon_bits, prior_bits_per_image, stage1.dims, stage1.sigmas)
    res["formula"] = BOUND_FORMULA
    res["dims"] = stage1.dims
    res["sigma_grid"] = f"geomspace({stage1.sigmas[0]:g}, {stage1.sigmas[-1]:g}, {len(stage1.sigmas)})"
    res["sigma_chosen_on"] = "the evaluated split"
    return res
