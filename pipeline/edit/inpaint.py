"""Editing images in code space: inpainting with known codes anywhere, and repair.

``inpaint`` encodes the images, draws ``candidates`` completions of the masked codes per
image and keeps ``num`` of them by importance resampling (``pipeline.edit.candidates``: the
weights p(whole grid) / q(masked codes as drawn), so known codes *after* a masked one count
even though the raster-ordered prior can only draw from the codes before it), decodes
them and pastes them into the originals. A class-conditional prior used without a class
treats the class as unknown (the default; ``class_mixture=False`` uses its null class).

``surprisal`` is -log2 p(z_i | z_<i) per position (one forward pass; under the class
mixture without a class); ``repair_mask`` turns it into a code mask, and repair is then
the same inpainting path. ``write_inpainting`` writes a result folder.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vqgen.pipeline.edit.candidates import (
    check_candidate_memory,
    class_log_likelihoods,
    draw_candidates,
    effective_sample_size,
    labels_index,
    select_candidates,
)
from vqgen.pipeline.edit.masks import code_to_pixel_mask, feather_weights
from vqgen.pipeline.evaluation.stage2 import prior_nll
from vqgen.pipeline.generate import save_codes
from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage1_vqvae.runtime.grid import save_grid, save_png
from vqgen.stage1_vqvae.runtime.outputs import owned_output_dir
from vqgen.stage1_vqvae.runtime.seeds import check_seed
from vqgen.stage2_prior.sampling import validate_sampling_args

SELECT = ("importance", "best", "proposal")
LN2 = math.log(2.0)

INPAINT_MANIFEST = "inpaint.json"


@dataclass
class Inpainting:
    """Result of :func:`inpaint` for N inputs and ``num`` kept completions each."""
    codes: Tensor          # int64 (N, num, h, w)
    images: Tensor         # float (N, num, C, H, W) in [0, 1] (pasted when paste=True)
    log_prob: Tensor       # float64 (N, num): log p(whole grid) in nats
    chosen: Tensor         # int64 (N, num): which candidate each completion is
    ess: Tensor            # float64 (N,): effective sample size of the weights (1..M)
    num_candidates: int    # M
    input_codes: Tensor    # int64 (N, h, w): the encoded inputs
    code_mask: Tensor      # bool (N, h, w): True = regenerated
    input_log_prob: Tensor  # float64 (N,): log p(encoded input grid) in nats
    class_prob: Tensor | None = None  # float64 (N, num, C): p(y | completion) (class mixture)


def _check_knobs(prior, num: int, num_candidates: int | None, select: str, temperature: float,
                 top_k: int | None, top_p: float | None, guidance: float,
                 labels: Tensor | None, mixture: bool) -> int:
    if select not in SELECT:
        raise UserError(f"select={select!r} must be one of {', '.join(SELECT)}")
    if not isinstance(num, int) or num < 1:
        raise UserError(f"--num {num} must be a positive integer")
    m = num_candidates if num_candidates is not None else (num if select == "proposal"
                                                           else 8 * num)
    if not isinstance(m, int) or m < num:
        raise UserError(f"--candidates {m} must be an integer >= --num {num} "
                        "(the kept completions are chosen among the candidates)")
    validate_sampling_args(prior.num_codes, temperature, top_k, top_p, guidance)
    if guidance != 1.0 and labels is None and not mixture:
        raise UserError("--guidance needs a class (--class), or the class mixture (not --null-class)")
    return m


def uses_class_mixture(prior, labels: Tensor | None, class_mixture: bool,
                       select: str = "importance") -> bool:
    """Whether the class is marginalised (see :func:`draw_candidates`): a class-conditional
    prior, no labels, ``class_mixture`` on, and candidates that are weighted (not the
    prefix-only ``select="proposal"`` baseline, which draws from the null class)."""
    return (class_mixture and labels is None and prior.model.num_classes > 0
            and select != "proposal")


@torch.inference_mode()
def inpaint(
    prior,
    vqvae,
    images: Tensor,
    code_mask: Tensor,
    *,
    num: int = 8,
    num_candidates: int | None = None,
    select: str = "importance",
    labels: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float = 1.0,
    seed: int = 0,
    pixel_mask: Tensor | None = None,
    paste: bool = True,
    feather: int = 2,
    batch_size: int = 512,
    device: str = "cpu",
    class_mixture: bool = True,
) -> Inpainting:
    """Complete the masked codes of N images, ``num`` completions each.

    images float (N, C, H, W) in [0, 1] (the VQ-VAE's channels and size); code_mask bool
    (h, w) or (N, h, w), True = regenerate; labels int (N,) in [0, num_classes) or None
    (no class). ``num_candidates`` M (default 8 * num) drawn per image; ``select``
    importance / best / proposal (see the module doc). A class-conditional prior without
    labels marginalises the class (``class_mixture``, see :func:`draw_candidates`: the
    weights pick the classes that fit the known codes) unless ``class_mixture=False``
    (the null class). With ``paste``, pixels outside
    ``pixel_mask`` bool (H, W) or (N, H, W) (default: the code mask's cells) are the input's
    own, blended over ``feather`` pixels inside the mask. Same arguments, same result.
    """
    n = images.shape[0]
    labels = labels_index(labels, n)
    mixture = uses_class_mixture(prior, labels, class_mixture, select)
    seed = check_seed(seed, "--seed")
    m = _check_knobs(prior, num, num_candidates, select, temperature, top_k, top_p, guidance,
                     labels, mixture)
    h, w = prior.code_shape
    code_mask = torch.as_tensor(code_mask, dtype=torch.bool).cpu()
    if code_mask.shape not in ((h, w), (n, h, w)):
        raise UserError(f"code_mask must be bool ({h}, {w}) or ({n}, {h}, {w}), "
                        f"got {tuple(code_mask.shape)}")
    code_mask = code_mask.expand(n, h, w).clone()
    check_candidate_memory(prior.model, m, code_mask, batch_size)
    enc = vqvae.model.to(device).eval()
    prior.model.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    per_enc = max(1, batch_size)
    input_codes = torch.cat([enc.encode(images[s : s + per_enc].to(device)).cpu()
                             for s in range(0, n, per_enc)])
    cands = draw_candidates(prior, input_codes, code_mask, m, labels=labels,
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            guidance=guidance, generator=gen, batch_size=batch_size,
                            mixture=mixture, groups=num if select == "importance" else 1)
    chosen = select_candidates(cands, num, select, gen)
    rows = torch.arange(n)[:, None]
    codes = cands.codes[rows, chosen]  # (N, num, h, w)
    log_prob = cands.log_p[rows, chosen]
    class_post = (None if cands.class_log_post is None
                  else cands.class_log_post[rows, chosen].exp())  # (N, num, C)
    flat = codes.reshape(n * num, h, w)
    decoded = torch.cat([enc.decode_codes(flat[s : s + per_enc].to(device)).cpu()
                         for s in range(0, n * num, per_enc)])
    out = decoded.reshape(n, num, *decoded.shape[1:])
    if paste:
        if pixel_mask is None:
            pixel_mask = code_to_pixel_mask(code_mask, tuple(images.shape[-2:]))
        alpha = feather_weights(pixel_mask.bool().expand(n, *images.shape[-2:]), feather)
        alpha = alpha[:, None, None].to(out.dtype)  # (N, 1, 1, H, W)
        orig = images.cpu()[:, None].to(out.dtype)
        # where alpha is 0 the original value itself, not a blend that could round differently
        out = torch.where(alpha > 0, alpha * out + (1 - alpha) * orig, orig.expand_as(out))
    input_bits = surprisal(prior, input_codes, labels, batch_size=per_enc, device=device,
                           class_mixture=mixture)
    return Inpainting(
        codes=codes, images=out, log_prob=log_prob, chosen=chosen,
        ess=effective_sample_size(cands.log_weight), num_candidates=m,
        input_codes=input_codes, code_mask=code_mask,
        input_log_prob=-input_bits.sum((1, 2)) * LN2, class_prob=class_post,
    )


@torch.inference_mode()
def surprisal(prior, codes: Tensor, labels: Tensor | None = None, *, batch_size: int = 256,
              device: str = "cpu", class_mixture: bool = False) -> Tensor:
    """-log2 p(z_i | z_<i) of each position, in bits: codes int (N, h, w) -> float64 (N, h, w).

    One forward pass per batch; labels int (N,) or None (null class / unconditional).
    ``class_mixture`` (class-conditional prior, labels None): under the uniform mixture of
    the classes, p(z_i | z_<i) = sum_y p(y | z_<i) p(z_i | z_<i, y): one forward pass per
    class, and the class inferred from the codes read so far. The sum over positions is
    the grid's code length -log2 p(z).
    """
    if not class_mixture or labels is not None or prior.model.num_classes == 0:
        return prior_nll(prior, codes, labels, batch_size=batch_size, device=device) / LN2
    model = prior.model.to(device).eval()
    grids = torch.as_tensor(codes).long().to(device)
    per_pos, _ = class_log_likelihoods(model, grids, batch_size=batch_size)
    c, n, h, w = per_pos.shape
    # log p(z_<=i) under the mixture at every raster position, then its increments
    joint = torch.logsumexp(per_pos.reshape(c, n, h * w).cumsum(2), 0) - math.log(c)
    prev = torch.cat([torch.zeros(n, 1, dtype=joint.dtype, device=joint.device),
                      joint[:, :-1]], 1)
    return (-(joint - prev) / LN2).reshape(n, h, w).cpu()


def check_repair_args(threshold: float | None, fraction: float | None) -> None:
    """UserError unless exactly one of threshold (finite bits >= 0) and fraction (0, 1]."""
    if (threshold is None) == (fraction is None):
        raise UserError("give one of --threshold (bits) or --fraction")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise UserError(f"--threshold {threshold} must be a finite number of bits >= 0")
    if fraction is not None and not 0 < fraction <= 1:
        raise UserError(f"--fraction {fraction} must be in (0, 1] (share of the code grid)")


def repair_mask(bits: Tensor, *, threshold: float | None = None,
                fraction: float | None = None) -> Tensor:
    """bits float (N, h, w) -> code mask bool (N, h, w): positions above ``threshold`` bits,
    or each grid's ``fraction`` most surprising positions (at least one). Give one."""
    check_repair_args(threshold, fraction)
    if threshold is not None:
        return bits > threshold
    n, h, w = bits.shape
    k = max(1, round(fraction * h * w))
    top = bits.reshape(n, -1).topk(k, dim=1).indices
    mask = torch.zeros(n, h * w, dtype=torch.bool)
    mask.scatter_(1, top, True)
    return mask.reshape(n, h, w)


# ------------------------------------------------------------------------------ writing


def _rgb(images: Tensor) -> Tensor:
    """float (N, C, H, W), C in {1, 3} -> (N, 3, H, W)."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def masked_view(images: Tensor, pixel_mask: Tensor) -> Tensor:
    """images float (N, C, H, W), pixel_mask bool (N, H, W) -> RGB (N, 3, H, W): the image
    with the masked pixels tinted red, so the mask is visible on any content."""
    rgb = _rgb(images.cpu().float())
    red = torch.tensor([1.0, 0.0, 0.0])[None, :, None, None]
    m = pixel_mask.cpu()[:, None].float()
    return rgb * (1 - 0.6 * m) + red * 0.6 * m


def heat_map(bits: Tensor, image_size: tuple[int, int], top: float | None = None) -> Tensor:
    """bits float (N, h, w) -> RGB (N, 3, H, W): black (0) - red - yellow - white (``top``,
    default the largest value), each code cell a block of pixels."""
    top = float(bits.max()) if top is None else top
    v = (bits.float() / max(top, 1e-9)).clamp(0, 1)
    rgb = torch.stack([(3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)], 1)
    big_h, big_w = image_size
    h, w = bits.shape[-2:]
    rows = torch.arange(big_h) * h // big_h
    cols = torch.arange(big_w) * w // big_w
    return rgb[:, :, rows[:, None], cols[None, :]]


def _class_fields(res: Inpainting, i: int, k: int) -> dict:
    """The inferred class of a completion (class mixture): the most probable and p(y | z)."""
    if res.class_prob is None:
        return {}
    probs = res.class_prob[i, k]
    return {"inferred_class": int(probs.argmax()), "class_prob": round(float(probs.max()), 4)}


def write_inpainting(
    out: str | os.PathLike, res: Inpainting, originals: Tensor, pixel_mask: Tensor, *, settings: dict,
    inputs: list[dict], labels: Tensor | None = None, bits: Tensor | None = None,
) -> None:
    """Write a result atomically into the folder ``out``:

    ``grid.png`` (a row per input: original, masked (red), completions), one PNG per
    completion ``{input:06d}_{k}.png``, ``codes.npy`` uint16 (N, num, h, w), ``labels.npy``
    (N,) when ``labels``, ``inpaint.json`` (settings, per input its source, the masked code
    positions, ESS and each completion's log-probability), and with ``bits`` (N, h, w)
    (repair) ``surprisal.npy`` float32 (N, h, w) in bits and ``surprisal.png`` (a row per
    input: original, heat map, chosen mask).
    """
    n, num = res.codes.shape[:2]
    size = tuple(originals.shape[-2:])
    pixel_mask = pixel_mask.bool().expand(n, *size)
    report_inputs = []
    for i in range(n):
        entry = dict(inputs[i])
        entry.update(
            input=i,
            mask_codes=[[int(a), int(b)] for a, b in res.code_mask[i].nonzero().tolist()],
            num_candidates=res.num_candidates, ess=round(float(res.ess[i]), 4),
            input_log_prob=round(float(res.input_log_prob[i]), 4),
            completions=[dict(k=k, file=f"{i:06d}_{k}.png", candidate=int(res.chosen[i, k]),
                              log_prob=round(float(res.log_prob[i, k]), 4),
                              bits=round(float(-res.log_prob[i, k]) / LN2, 3),
                              **_class_fields(res, i, k))
                         for k in range(num)])
        if bits is not None:
            entry["bits_before"] = round(float(bits[i].sum()), 3)
        report_inputs.append(entry)
    doc = {**settings, "count": n, "num": num, "log_prob_unit": "nats (bits = nats / ln 2)",
           "inputs": report_inputs}
    # the manifest inpaint.json (the settings and results, plus the list of files written)
    # lands last: --overwrite later replaces only these files (runtime/outputs.py)
    with owned_output_dir(Path(out), INPAINT_MANIFEST, doc) as tmp:
        tiles = []
        for i in range(n):
            for k in range(num):
                save_png(res.images[i, k], tmp / f"{i:06d}_{k}.png")
            tiles += [_rgb(originals[i : i + 1].cpu().float()),
                      masked_view(originals[i : i + 1], pixel_mask[i : i + 1]),
                      _rgb(res.images[i].float())]
        save_grid(torch.cat(tiles), tmp / "grid.png", nrow=num + 2)
        save_codes(tmp / "codes.npy", res.codes)
        if labels is not None:
            np.save(tmp / "labels.npy", labels.cpu().numpy().astype(np.int64))
        if bits is not None:
            np.save(tmp / "surprisal.npy", bits.cpu().numpy().astype(np.float32))
            heat = heat_map(bits, size)
            rows = torch.stack([_rgb(originals.cpu().float()), heat,
                                masked_view(originals, pixel_mask)], 1)
            save_grid(rows.reshape(-1, *rows.shape[2:]), tmp / "surprisal.png", nrow=3)
