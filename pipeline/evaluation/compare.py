"""Stage-one models side by side (``vqgen evaluate --compare``): VQ-VAE, VQ-GAN and Gaussian
VAE checkpoints scored on the same held-out images by the same functions.

Per model (:func:`model_row`): PSNR and SSIM of the reconstruction (a VQ model decodes its
codes, the VAE its posterior mean), the sharpness ratio (:func:`sharpness_ratio`), the
reconstruction Fréchet distance (rFD: the project classifier's features of the
reconstructions vs of the originals), bits/dim and codebook usage.

bits/dim, one definition for all three (an upper bound on -log2 p(x) / (C*H*W) with a latent
prior that has no context): -log2 p(x | z) under the discretized Gaussian the report uses
(one sigma on the grid, chosen per model on the evaluated split) plus the latent's cost --
for a VQ model -log2 of the unigram code frequencies of its training split (add-one
smoothed) at every grid position, for the VAE KL(q(z | x) || N(0, I)) / ln 2 with z one
seeded draw from q. A trained prior (``--prior``) lowers a VQ model's latent cost: the report's
"whole model" section gives that bound for the main model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from vqgen.pipeline import metrics as M
from vqgen.pipeline.evaluation.classifier import classify
from vqgen.pipeline.generate import sample_gaussian
from vqgen.stage1_vqvae.likelihood import SIGMA_GRID

BITS_PER_DIM_DEFINITION = (
    "(-log2 p(x | z) under the discretized Gaussian, one sigma per model chosen on the grid, "
    "+ the latent's cost: VQ: -log2 of the add-one smoothed unigram code frequencies of the "
    "training split at every position; VAE: KL(q(z|x) || N(0, I)) / ln 2, z one seeded draw) "
    "/ (C*H*W)")


def gradient_energy(images: Tensor) -> Tensor:
    """Sum of squared horizontal and vertical neighbour differences per image:
    (N, C, H, W) -> float64 (N,)."""
    x = images.double()
    dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).sum(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).sum(1)
    return dx + dy


def sharpness_ratio(recon: Tensor, originals: Tensor) -> float:
    """Image-gradient energy of the reconstructions over that of the originals (summed over
    the whole set): 1 is as sharp as the data, below 1 blurrier, above 1 noisier."""
    return float(gradient_energy(recon).sum() / gradient_energy(originals).sum().clamp(min=1e-12))


@torch.inference_mode()
def reconstruct_all(lit, dataset, *, batch_size: int = 256, device: str = "cpu",
                    seed: int = 0, sigmas: Sequence[float] = SIGMA_GRID) -> dict:
    """One pass over ``dataset``: 8-bit originals and clamped reconstructions (N, C, H, W) on
    the CPU, per-image -log2 p(x | z) for each sigma (N, S), and the latent: codes (N, h, w)
    for a VQ model, KL bits per image (N,) for a Gaussian VAE."""
    from vqgen.stage1_vqvae.lit import has_codes

    model = lit.model.to(device).eval()
    discrete = has_codes(lit)
    gen = torch.Generator(device=device).manual_seed(seed)
    xs, rs, bits, latent = [], [], [], []
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = M.quantize_8bit(images.to(device))
        if discrete:
            codes = model.encode(x)
            mean = model.decoder(model.quantizer.lookup(codes))
            recon, lik_mean = mean, mean
            latent.append(codes.cpu())
        else:
            mu, logvar = model.posterior(x)
            recon = model.decoder(mu)
            noise = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
            lik_mean = model.decoder(mu + (0.5 * logvar).exp() * noise)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
            latent.append(kl.double().cpu() / M.LN2)
        xs.append(x.cpu())
        rs.append(recon.clamp(0, 1).cpu())
        bits.append(M.recon_bits(x.cpu(), lik_mean.cpu(), sigmas))
    return {"originals": torch.cat(xs), "recon": torch.cat(rs), "recon_bits": torch.cat(bits),
            "codes" if discrete else "kl_bits": torch.cat(latent), "sigmas": tuple(sigmas)}


def unigram_code_bits(train_codes: np.ndarray | Tensor, codes: Tensor, num_codes: int) -> Tensor:
    """-log2 of each code's add-one smoothed frequency in ``train_codes``, summed over each
    map of ``codes`` (N, h, w) -> float64 (N,)."""
    counts = np.bincount(np.asarray(train_codes).astype(np.int64).ravel(), minlength=num_codes)
    p = torch.from_numpy((counts + 1.0) / (counts.sum() + num_codes))
    return -torch.log2(p)[codes.long()].flatten(1).sum(1)


def model_row(name: str, lit, path: str, passed: dict, *, train_codes: np.ndarray | None = None,
              classifier=None, real_features: np.ndarray | None = None,
              device: str = "cpu", num_samples: int = 0, seed: int = 0) -> dict:
    """The comparison row of one model from its :func:`reconstruct_all` pass (JSON-ready).

    A Gaussian VAE's row also has ``sample_fd``: the Fréchet distance of ``num_samples``
    decodes of z ~ N(0, I) (its own prior; seed ``seed``) to the held-out originals'
    classifier features. A VQ model's samples need a stage-two prior (``evaluate --prior``
    scores the main model's), so its ``sample_fd`` is None."""
    x, r = passed["originals"], passed["recon"]
    n, dims = x.shape[0], int(x[0].numel())
    mse = float((r.double() - x.double()).pow(2).mean())
    h, w = x.shape[-2:]
    row = {"name": name, "checkpoint": str(path), "kind": kind_of(lit), "num_images": n,
           "psnr_db": M.psnr_from_mse(mse), "mse": mse,
           "ssim": float(M.ssim(x, r).mean()) if min(h, w) >= 11 else None,
           "sharpness_ratio": sharpness_ratio(r, x), "rfd": None,
           "codebook_usage": None, "codes_used": None, "num_codes": None, "sample_fd": None}
    if classifier is not None and real_features is not None:
        feats, _ = classify(classifier, M.quantize_8bit(r), device=device)
        row["rfd"] = M.frechet_distance(feats, real_features)
        if "codes" not in passed and num_samples > 0:
            drawn = sample_gaussian(lit, num_samples, seed=seed, device=device).images
            feats, _ = classify(classifier, M.quantize_8bit(drawn), device=device)
            row["sample_fd"] = M.frechet_distance(feats, real_features)
            row["sample_fd_of"] = f"{num_samples} decodes of z ~ N(0, I)"
    if "codes" in passed:
        k = int(lit.num_codes)
        counts = np.bincount(passed["codes"].numpy().ravel(), minlength=k)
        row.update(codebook_usage=M.usage(counts), codes_used=int((counts > 0).sum()), num_codes=k)
        latent = unigram_code_bits(train_codes, passed["codes"], k)
        row["latent_cost"] = "unigram code frequencies of the training split"
    else:
        latent = passed["kl_bits"]
        row["latent_cost"] = "KL(q(z|x) || N(0, I))"
    curve = (passed["recon_bits"].mean(0) + latent.mean()) / dims
    best = int(torch.argmin(curve))
    row.update(bits_per_dim=float(curve[best]), sigma=float(passed["sigmas"][best]),
               latent_bits_per_dim=float(latent.mean() / dims))
    return row


def kind_of(lit) -> str:
    hp = lit.hparams
    if hp.get("bottleneck", "vq") == "gaussian":
        return "Gaussian VAE"
    return "VQ-GAN" if hp.get("gan", False) else "VQ-VAE"


def comparison_figure_rows(passes: Sequence[dict], names: Sequence[str], num: int = 12
                           ) -> tuple[Tensor, list[str]]:
    """The same first ``num`` held-out images: a row of originals, then one row per model.
    -> (images (rows * num, C, H, W), row labels)."""
    n = min(num, passes[0]["originals"].shape[0])
    rows = [passes[0]["originals"][:n]] + [p["recon"][:n] for p in passes]
    return torch.cat(rows), ["original", *names]


def comparison_table(rows: Sequence[dict]) -> str:
    """The comparison as aligned text lines (what the CLI prints)."""
    def f(v, spec):
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    head = (f"  {'model':<22} {'PSNR':>6} {'SSIM':>6} {'sharp':>6} {'rFD':>8} {'bits/dim':>8} "
            f"{'usage':>6} {'sampleFD':>8}")
    lines = [head]
    for r in rows:
        lines.append(f"  {r['name'][:22]:<22} {f(r['psnr_db'], '.2f'):>6} {f(r['ssim'], '.3f'):>6} "
                     f"{f(r['sharpness_ratio'], '.3f'):>6} {f(r['rfd'], '.2f'):>8} "
                     f"{f(r['bits_per_dim'], '.3f'):>8} {f(r['codebook_usage'], '.1%'):>6} "
                     f"{f(r.get('sample_fd'), '.2f'):>8}")
    return "\n".join(lines)
