"""Compose both stages: load a fitting (prior, VQ-VAE) pair, sample code grids, decode.

This is the only module that knows both models.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqgen.stage1_vqvae.lit import LitVQVAE, load_vqvae, require_codes
from vqgen.stage1_vqvae.runtime.errors import MissingInputError, UserError
from vqgen.stage1_vqvae.runtime.grid import save_grid, save_png
from vqgen.stage1_vqvae.runtime.memory import available_memory
from vqgen.stage1_vqvae.runtime.outputs import owned_output_dir
from vqgen.stage1_vqvae.runtime.pretrained import model_identities, model_sha256, read_config, resolve_model
from vqgen.stage1_vqvae.runtime.seeds import check_seed
from vqgen.stage2_prior.lit import LitPrior, load_prior
from vqgen.stage2_prior.sampling import sample as sample_codes
from vqgen.stage2_prior.sampling import validate_sampling_args

SAMPLES_MANIFEST = "samples.json"  # settings + the files sample wrote (the completion marker)
SAMPLE_FILES = ("grid.png", "codes.npy", "labels.npy", SAMPLES_MANIFEST)


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
    device: str = "cpu", allow_other_vqvae: bool = False,
) -> tuple[LitPrior, LitVQVAE]:
    """Load the prior and its VQ-VAE (recorded in the prior unless ``vqvae_path``).

    A VQ-VAE whose sha256 differs from the one the prior records is refused, unless it was
    given explicitly (``vqvae_path``) together with ``allow_other_vqvae``.
    """
    if allow_other_vqvae and vqvae_path is None:
        raise UserError("--allow-other-vqvae needs the VQ-VAE to use, given as --vqvae PATH")
    explicit = vqvae_path is not None
    prior = load_prior(prior_path, device)
    where = resolve_model(prior_path)
    config = read_config(where) if where.is_dir() else {}
    if config.get("kind") == "pair":  # its name and card facts
        prior.pair_config = config
    if vqvae_path is None:
        recorded = prior.hparams.vqvae_checkpoint
        if not recorded:
            raise UserError(f"{prior_path} records no VQ-VAE checkpoint; pass --vqvae")
        if not Path(recorded).exists():
            raise MissingInputError(
                f"the VQ-VAE this prior was trained with, {recorded}, is gone; pass --vqvae"
            )
        vqvae_path = recorded
    vqvae = load_vqvae(vqvae_path, device)
    require_codes(vqvae, vqvae_path)
    check_compatible(prior, vqvae)
    want = prior.hparams.vqvae_sha256
    if want and want not in model_identities(vqvae_path):
        # same sizes but other weights: the codes mean other things, samples are noise
        if not (explicit and allow_other_vqvae):
            how = ("pass the VQ-VAE the prior was trained with as --vqvae, or add "
                   "--allow-other-vqvae to decode with this one anyway")
            raise MismatchError(
                f"{vqvae_path} is not the VQ-VAE the prior's codes were made with (sha256 "
                f"{model_sha256(vqvae_path)[:12]}..., the prior records {want[:12]}...); {how}")
        print(f"note: decoding with {vqvae_path}, not the VQ-VAE the prior's codes were made "
              "with (--allow-other-vqvae)", file=sys.stderr)
    return prior, vqvae


def check_memory(num: int, vqvae: LitVQVAE, asked: str | None = None) -> None:
    """Refuse a sample count whose results (held in memory until written) cannot fit,
    naming the memory it would need, before any sampling. ``asked``: how the count was
    asked for, for the message (default ``--num N``)."""
    h, w = vqvae.code_shape
    per = 4 * int(vqvae.hparams.channels) * int(np.prod(vqvae.hparams.image_size)) + 8 * h * w
    need, have = num * per, available_memory()
    if have is not None and need > 0.8 * have:
        raise UserError(f"{asked or f'--num {num}'} would hold {need / 2**30:.1f} GiB of images "
                        f"in memory, "
                        f"more than the {have / 2**30:.1f} GiB available; sample at most "
                        f"{max(1, int(0.8 * have // per))} per run (several --out folders, "
                        "other --seed)")


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
    """``--class`` value -> class index. A class name always wins (with folders named 1, 2,
    3, ``--class 1`` is the class named "1"); an index is written ``#N``. A bare number is
    read as an index only when the prior's classes have no names."""
    if value is None:
        return None
    names = [str(n) for n in prior.hparams.class_names]
    if value in names:
        return names.index(value)
    if value.startswith("#") and value[1:].lstrip("-").isdigit():
        return int(value[1:])
    if value.lstrip("-").isdigit() and not names:
        return int(value)
    k = prior.model.num_classes
    shown = ", ".join(names[:10]) + ("..." if len(names) > 10 else "") if names else "none"
    raise UserError(f"--class {value!r} is neither a class name ({shown}) nor an index "
                    f"(an index is written #N with N in 0..{k - 1}, e.g. --class '#0')")


def grid_columns(num: int) -> int:
    """Images per row of a sample grid: 8 up to 64 images, then near square (1,000 samples
    in rows of 8 made a 466x7252 px strip no viewer shows usefully)."""
    return min(8, num) if num <= 64 else math.ceil(math.sqrt(num))


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s generator: a hash of (seed, index), < 2**63."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def class_frequencies(prior: LitPrior) -> torch.Tensor:
    """float (num_classes,) summing to 1: the share of each class among the prior's training
    maps (its ``class_counts``), uniform for checkpoints that did not record them."""
    k = int(prior.model.num_classes)
    counts = tuple(prior.hparams.get("class_counts", ()) or ())
    if (len(counts) == k and all(isinstance(c, int) and c >= 0 for c in counts)
            and sum(counts) > 0):
        p = torch.tensor([float(c) for c in counts])
    else:
        p = torch.ones(k)
    return p / p.sum()


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
    unconditional: str = "mixture",
) -> Samples:
    """Draw ``num`` code grids from the prior and decode them. Same seed and options ->
    identical codes and images on the same device, whatever ``batch_size`` (image i is
    drawn from a generator seeded by (seed, i); the first n images of --num N equal those
    of --num n).

    ``unconditional`` (no ``labels``, a class-conditional prior): ``"mixture"`` draws each
    image's class from the training class frequencies, then its codes given that class, a
    sample of p(codes) = sum_y p(y) p(codes | y) from the conditional model, which every
    training step teaches; ``"null"`` samples the null-class model, which learns only from
    the ``cond_drop`` share of steps (far weaker: see docs/benchmarks.md)."""
    if num <= 0:
        raise UserError(f"--num {num} must be positive")
    seed = check_seed(seed, "--seed")
    validate_sampling_args(prior.num_codes, temperature, top_k, top_p, guidance)
    if guidance != 1.0 and labels is None:
        raise UserError("--guidance needs a class (--class or --per-class)")
    if unconditional not in ("mixture", "null"):
        raise UserError(f"unconditional={unconditional!r}: expected 'mixture' or 'null'")
    model = prior.model.to(device).eval()
    dec = vqvae.model.to(device).eval()
    mixture = labels is None and unconditional == "mixture" and model.num_classes > 0
    class_p = class_frequencies(prior).to(device) if mixture else None
    out_codes, out_images = [], []
    for s in range(0, num, batch_size):
        n = min(batch_size, num - s)
        lab = None if labels is None else labels[s : s + n].to(device)
        # image i always draws from its own generator seeded by (seed, i): the same seed
        # gives the same images whatever the batch size
        gens = [torch.Generator(device=device).manual_seed(image_seed(seed, s + r))
                for r in range(n)]
        if class_p is not None:  # the class first, from the image's own generator
            lab = torch.cat([torch.multinomial(class_p, 1, generator=g) for g in gens])
        codes = sample_codes(model, n, labels=lab, temperature=temperature, top_k=top_k, top_p=top_p,
                             guidance=guidance, generator=gens, sampler=sampler)
        out_codes.append(codes.cpu())
        out_images.append(dec.decode_codes(codes).cpu())
    return Samples(torch.cat(out_codes), torch.cat(out_images), labels)


def save_codes(path: str | os.PathLike, codes: torch.Tensor) -> None:
    """Write codes int (..., h, w) as ``.npy``: uint16 when every code fits, else int32."""
    dtype = np.uint16 if codes.numel() == 0 or int(codes.max()) < 65536 else np.int32
    np.save(path, codes.cpu().numpy().astype(dtype))


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
    with owned_output_dir(out, SAMPLES_MANIFEST, {**settings, "count": n}) as tmp:
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
            save_codes(tmp / "codes.npy", samples.codes)
        if samples.labels is not None:
            np.save(tmp / "labels.npy", samples.labels.numpy().astype(np.int64))
    return out
