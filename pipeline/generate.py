"""Compose both stages: load a fitting (prior, VQ-VAE) pair, sample code grids, decode.

This is the only module that knows both models.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stage1_vqvae.lit import LitVQVAE, load_vqvae, require_codes
from stage1_vqvae.runtime.checkpoint import file_sha256
from stage1_vqvae.runtime.errors import MissingInputError, UserError
from stage1_vqvae.runtime.fsutil import atomic_dir
from stage1_vqvae.runtime.grid import save_grid, save_png
from stage2_prior.lit import LitPrior, load_prior
from stage2_prior.sampling import sample as sample_codes
from stage2_prior.sampling import validate_sampling_args


class MismatchError(UserError):
    """The prior's codes and the VQ-VAE do not fit each other."""


def check_compatible(prior: LitPrior, vqvae: LitVQVAE) -> None:
    """Refuse a pair whose codebook size or code grid differ, naming both values."""
    if prior.num_codes != vqvae.num_codes:
        raise MismatchError(
            f"prior was trained on num_codes={prior.num_codes} but the VQ-VAE has "
            f"num_codes={vqvae.num_codes}; pass the VQ-VAE that made the prior's codes (--vqvae)"
        )
    if tuple(prior.code_shape) != tuple(vqvae.code_shape):
        ph, pw = prior.code_shape
        vh, vw = vqvae.code_shape
        raise MismatchError(
            f"prior was trained on {ph}x{pw} code grids but the VQ-VAE makes {vh}x{vw}; "
            "pass the VQ-VAE that made the prior's codes (--vqvae)"
        )


def load_pair(
    prior_path: str | os.PathLike, vqvae_path: str | os.PathLike | None = None,
    device: str = "cpu",
) -> tuple[LitPrior, LitVQVAE]:
    """Load the prior and its VQ-VAE (recorded in the prior unless ``vqvae_path``)."""
    prior = load_prior(prior_path, device)
    if vqvae_path is None:
        recorded = prior.hparams.vqvae_checkpoint
        if not recorded:
            raise UserError(f"{prior_path} records no VQ-VAE checkpoint; pass --vqvae")
        if not Path(recorded).is_file():
            raise MissingInputError(
                f"the VQ-VAE this prior was trained with, {recorded}, is gone; pass --vqvae"
            )
        vqvae_path = recorded
    vqvae = load_vqvae(vqvae_path, device)
    require_codes(vqvae, vqvae_path)
    check_compatible(prior, vqvae)
    want = prior.hparams.vqvae_sha256
    if want and file_sha256(vqvae_path) != want:
        print(f"note: {vqvae_path} is not the exact VQ-VAE file the prior's codes were made "
              "with (sha256 differs); samples may look wrong", file=sys.stderr)
    return prior, vqvae


@dataclass
class Samples:
    codes: torch.Tensor | None   # int64 (N, h, w); None for a Gaussian VAE's samples
    images: torch.Tensor         # float (N, C, H, W) in [0, 1]
    labels: torch.Tensor | None  # int64 (N,) or None (unconditional)


def make_labels(prior: LitPrior, num: int, class_index: int | None,
                per_class: int | None) -> torch.Tensor | None:
    """Labels for ``--class`` (num copies), ``--per-class`` (each class per_class times), or
    None (unconditional)."""
    k = prior.model.num_classes
    names = list(prior.hparams.class_names)
    if class_index is not None or per_class is not None:
        if k == 0:
            raise UserError("this prior is unconditional (its codes had no labels); "
                             "drop --class / --per-class")
    if class_index is not None:
        if not 0 <= class_index < k:
            shown = f" ({', '.join(names[:10])}{'...' if k > 10 else ''})" if names else ""
            raise UserError(f"--class {class_index} is out of range; this prior has classes "
                             f"0..{k - 1}{shown}")
        return torch.full((num,), class_index, dtype=torch.long)
    if per_class is not None:
        return torch.arange(k).repeat_interleave(per_class)
    return None


def resolve_class(prior: LitPrior, value: str | None) -> int | None:
    """``--class`` accepts an index or a class name."""
    if value is None:
        return None
    names = [str(n) for n in prior.hparams.class_names]
    if value.lstrip("-").isdigit():
        return int(value)
    if value in names:
        return names.index(value)
    raise UserError(f"--class {value!r} is neither an index nor a class name "
                     f"({', '.join(names[:10]) or 'no classes'})")


@torch.inference_mode()
def sample(
    prior: LitPrior,
    vqvae: LitVQVAE,
    num: int,
    *,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    sampler: str = "cached",
) -> Samples:
    """Draw ``num`` code grids from the prior and decode them. Same seed and options ->
    identical codes and images (on the same device and batch size)."""
    if num <= 0:
        raise UserError(f"--num {num} must be positive")
    validate_sampling_args(prior.num_codes, temperature, top_k, top_p, guidance)
    if guidance != 1.0 and labels is None:
        raise UserError("--guidance needs a class (--class or --per-class)")
    model = prior.model.to(device).eval()
    dec = vqvae.model.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    out_codes, out_images = [], []
    for s in range(0, num, batch_size):
        n = min(batch_size, num - s)
        lab = None if labels is None else labels[s : s + n].to(device)
        codes = sample_codes(model, n, labels=lab, temperature=temperature, top_k=top_k, top_p=top_p,
                             guidance=guidance, generator=gen, sampler=sampler)
        out_codes.append(codes.cpu())
        out_images.append(dec.decode_codes(codes).cpu())
    return Samples(torch.cat(out_codes), torch.cat(out_images), labels)


@torch.inference_mode()
def sample_gaussian(vae: LitVQVAE, num: int, *, seed: int = 0, batch_size: int = 64,
                    device: str = "cpu") -> Samples:
    """``num`` images of a Gaussian VAE (a :class:`~stage1_vqvae.lit.LitGaussianVAE`) decoded
    from z ~ N(0, I); same seed, device and batch size -> the same images."""
    if num <= 0:
        raise UserError(f"--num {num} must be positive")
    model = vae.model.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    images = [model.sample(min(batch_size, num - s), generator=gen, device=device).cpu()
              for s in range(0, num, batch_size)]
    return Samples(None, torch.cat(images), None)


def write_samples(
    out: str | os.PathLike, samples: Samples, *, class_names: list[str], nrow: int,
    settings: dict,
) -> Path:
    """Write ``grid.png`` (rows labelled by class when there are classes), one PNG per
    image, ``codes.npy`` (uint16/int32, when there are codes), ``labels.npy`` and
    ``samples.json``, atomically."""
    out = Path(out)
    n = samples.images.shape[0]
    with atomic_dir(out) as tmp:
        for i in range(n):
            save_png(samples.images[i], tmp / f"{i:06d}.png")
        row_labels = None
        if samples.labels is not None and class_names:
            lab = samples.labels.tolist()
            row_labels = [str(class_names[lab[r * nrow]]) for r in range((n + nrow - 1) // nrow)
                          if len({*lab[r * nrow:(r + 1) * nrow]}) == 1] or None
            if row_labels is not None and len(row_labels) != (n + nrow - 1) // nrow:
                row_labels = None
        save_grid(samples.images, tmp / "grid.png", nrow=nrow, row_labels=row_labels)
        if samples.codes is not None:
            dtype = np.uint16 if int(samples.codes.max()) < 65536 else np.int32
            np.save(tmp / "codes.npy", samples.codes.numpy().astype(dtype))
        if samples.labels is not None:
            np.save(tmp / "labels.npy", samples.labels.numpy().astype(np.int64))
        (tmp / "samples.json").write_text(json.dumps({**settings, "count": n}, indent=2) + "\n")
    return out
