"""Editing images in code space: inpainting with known codes anywhere, and repair.

The prior is raster-ordered, so a masked position can only be *drawn* from the codes before
it. Known codes after it must still count. ``inpaint`` therefore draws ``candidates``
completions per image from the proposal q (known codes teacher-forced, masked ones sampled
by the cached sampler with the given temperature / top-k / top-p / guidance), scores every
candidate grid z under the prior in one batched forward pass, and keeps ``num`` of them by
importance resampling (one draw from each of ``num`` equal groups of candidates, so the
kept completions are independent) with weights

    w(z) = p(z) / q(z_masked),

where p(z) is the whole grid's probability under the prior (the class's, or the null
class's), and q(z_masked) the probability of the masked codes *as they were drawn*: the
sampler's own logits at each drawn position (read through its logits hook), filtered the
same way (``filter_logits``). With plain sampling (temperature 1, no filtering, no
guidance) the masked codes' conditionals cancel, and w(z) is the product of the known
codes' conditionals after the first masked position. The kept completions approach draws
from p(z_masked | z_known) as ``candidates`` grows; ``effective sample size``
(sum w)^2 / sum w^2 says how many of the candidates the weights really use.
``select="best"`` keeps the ``num`` highest p(z) instead; ``select="proposal"`` keeps the
first ``num`` draws unweighted (prefix-only completion, the baseline).

A class-conditional prior used without a class treats the class as unknown (the default;
``class_mixture=False`` uses its null class): p(z) = mean over classes y of p(z | y), the
candidates are drawn under classes of their own (spread evenly, then following the class
posterior the first ones estimate) and weighted against that mixture of proposals, so the
known codes pick the class as well as the completion (``_draw_mixture``).

``surprisal`` is -log2 p(z_i | z_<i) per position (one forward pass); ``repair_mask``
turns it into a code mask, and repair is then the same inpainting path.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vqgen.pipeline.evaluation.stage2 import prior_nll
from vqgen.pipeline.generate import save_codes
from vqgen.pipeline.masks import code_to_pixel_mask, feather_weights
from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage1_vqvae.runtime.grid import save_grid, save_png
from vqgen.stage1_vqvae.runtime.outputs import owned_output_dir
from vqgen.stage2_prior.sampling import filter_logits, guide, validate_sampling_args
from vqgen.stage2_prior.sampling import sample as sample_codes

SELECT = ("importance", "best", "proposal")
LN2 = math.log(2.0)

INPAINT_MANIFEST = "inpaint.json"


@dataclass
class Candidates:
    """The M candidate completions of B inputs, as drawn and scored."""
    codes: Tensor       # int64 (B, M, h, w)
    log_p: Tensor       # float64 (B, M): log p(whole grid) in nats under the prior
    log_q: Tensor       # float64 (B, M): log q(masked codes as drawn) in nats
    drawn: Tensor       # bool (B, M, h, w): positions drawn (masked) in that row
    class_log_post: Tensor | None = None  # float64 (B, M, C): log p(y | z) (class mixture)
    class_share: Tensor | None = None  # float64 (B, C): the proposal's mixture weights alpha_y

    @property
    def log_weight(self) -> Tensor:
        """float64 (B, M): log p - log q (unnormalised importance weights)."""
        return self.log_p - self.log_q


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


def _labels_index(labels: Tensor | None, n: int) -> Tensor | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels).long()
    if labels.shape != (n,):
        raise UserError(f"labels must have shape ({n},) (one per input), got {tuple(labels.shape)}")
    return labels


@torch.inference_mode()
def draw_candidates(
    prior,
    codes: Tensor,
    code_mask: Tensor,
    num_candidates: int,
    *,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
    mixture: bool = False,
    groups: int = 1,
) -> Candidates:
    """Draw and score ``num_candidates`` completions of each of B code grids.

    codes int (B, h, w) in [0, K): the known codes (masked positions are ignored);
    code_mask bool (B, h, w), True = draw; labels int (B,) class per input or None (null
    class / unconditional). ``mixture`` (class-conditional prior, labels None): the class
    is a latent variable instead of the null class: p(z) is the uniform mixture of the
    classes' p(z | y), each candidate is drawn under a class of its own (half of each of
    ``groups`` groups spread over the classes, half following the class posterior those
    estimate; see :func:`_draw_mixture`), q is the matching mixture of the classes'
    proposals, and ``class_log_post`` holds log p(y | z) per candidate.
    Inputs run ``batch_size // num_candidates`` (>= 1) at a time through the cached sampler;
    the same generator state and batch size give the same draws. Every kept position keeps
    its code exactly.
    """
    model = prior.model.eval()
    device = model.embed.weight.device
    b, h, w = codes.shape
    m = int(num_candidates)
    if code_mask.shape != codes.shape or code_mask.dtype != torch.bool:
        raise UserError(f"code_mask must be bool {tuple(codes.shape)}, got {code_mask.dtype} "
                        f"{tuple(code_mask.shape)}")
    labels = _labels_index(labels, b)
    if mixture and (labels is not None or model.num_classes == 0):
        raise UserError("a class mixture needs a class-conditional prior and no labels")
    per_call = max(1, batch_size // m)
    knobs = dict(temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance)
    parts: list[Candidates] = []
    for s in range(0, b, per_call):
        n = min(per_call, b - s)
        known, draw = codes[s : s + n].to(device).long(), code_mask[s : s + n].to(device)
        if mixture:
            parts.append(_draw_mixture(model, known, draw, m, groups, knobs, generator,
                                       max(1, batch_size)))
            continue
        lab = None if labels is None else labels[s : s + n].to(device).repeat_interleave(m, 0)
        grids, log_q = _draw_scored(model, known.repeat_interleave(m, 0),
                                    draw.repeat_interleave(m, 0), lab, knobs, generator)
        nll = prior_nll(prior, grids, lab, batch_size=max(1, batch_size), device=str(device))
        parts.append(Candidates(grids.cpu().reshape(n, m, h, w), (-nll.sum((1, 2))).reshape(n, m),
                                log_q.reshape(n, m), draw.cpu()[:, None].expand(n, m, h, w)))

    def cat(field: str) -> Tensor | None:
        got = [getattr(c, field) for c in parts]
        return None if got[0] is None else torch.cat(got)

    return Candidates(*(cat(f) for f in ("codes", "log_p", "log_q", "drawn", "class_log_post",
                                         "class_share")))  # type: ignore[arg-type]


def _draw_scored(model, known: Tensor, draw: Tensor, labels: Tensor | None, knobs: dict,
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One cached-sampler call: known int (N, h, w), draw bool (N, h, w), labels (N,) or
    None -> (grids int64 (N, h, w) on the model's device, log q of the drawn codes float64
    (N,) on the CPU (no float64 on the device: MPS has none), read from the sampler's own
    logits: exactly the distribution each code was drawn from)."""
    seen: list[tuple[int, int, Tensor]] = []
    grids = sample_codes(model, known.shape[0], labels=labels, **knobs, generator=generator,
                         prefix=known, known=~draw, sampler="cached",
                         on_logits=lambda i, j, logits: seen.append((i, j, logits.clone())))
    log_q = torch.zeros(known.shape[0], dtype=torch.float64)
    if seen:
        ii = torch.tensor([p[0] for p in seen], device=known.device)
        jj = torch.tensor([p[1] for p in seen], device=known.device)
        logits = torch.stack([p[2] for p in seen])  # (P, N, K) guided, unfiltered
        k = logits.shape[-1]
        # exactly the sampler's arithmetic (sampling.draw): filter, float softmax (its log)
        logq_all = filter_logits(logits.reshape(-1, k), knobs["temperature"], knobs["top_k"],
                                 knobs["top_p"])
        logq_all = logq_all.float().log_softmax(dim=1).reshape(logits.shape)
        got = grids[:, ii, jj].T  # (P, N): the codes drawn there
        per_pos = logq_all.gather(2, got.unsqueeze(2)).squeeze(2)
        # rows that keep a position discarded its draw; their kept code may even lie
        # outside the top-k (-inf), so select rather than multiply by the mask
        drawn_here = draw[:, ii, jj].T
        log_q = torch.where(drawn_here, per_pos, torch.zeros_like(per_pos)).sum(0).cpu().double()
    return grids, log_q


# share of each group's candidates drawn under the uniform class mixture (the rest follow
# the class posterior those first ones estimate), and the uniform part kept in the second
# stage so that no class's proposal vanishes
PILOT_SHARE = 0.5
DEFENSIVE = 0.1


def _draw_mixture(model, known: Tensor, draw: Tensor, m: int, groups: int, knobs: dict,
                  generator: torch.Generator | None, batch_size: int) -> Candidates:
    """The class mixture's candidates for n inputs: known int (n, h, w), draw bool (n, h, w).

    Two stages in every group of candidates (groups as :func:`select_candidates` splits
    them): its first half is drawn under classes spread uniformly (a random permutation of
    the classes, repeated); their whole-grid likelihoods under every class estimate the
    class posterior p(y | known codes) ~ mean over them of p(z | y) / q(z); the second half
    draws its classes from that estimate, mixed with ``DEFENSIVE`` uniform. Every candidate
    is weighted against the overall mixture q(z) = sum_y alpha_y q_y(z) (alpha_y: the share
    of candidates drawn under y in expectation; the "deterministic mixture" weights of
    multiple importance sampling), so candidates of both stages form one pool.
    """
    c = model.num_classes
    n, h, w = known.shape
    device = known.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    group = torch.arange(m) * groups // m
    first = torch.zeros(m, dtype=torch.bool)
    for g in range(groups):
        idx = (group == g).nonzero().squeeze(1)
        first[idx[: max(1, math.ceil(len(idx) * PILOT_SHARE))]] = True
    classes = torch.empty(n, m, dtype=torch.long)
    for i in range(n):
        for g in range(groups):
            idx = ((group == g) & first).nonzero().squeeze(1)
            perm = torch.randperm(c, generator=generator, device=gen_device).cpu()
            classes[i, idx] = perm[torch.arange(len(idx)) % c]
    grids = torch.empty(n, m, h, w, dtype=torch.long, device=device)
    log_py = torch.empty(c, n, m, dtype=torch.float64)  # log p(z | y), on the CPU
    log_qy = torch.empty(c, n, m, dtype=torch.float64)  # log q_y(drawn codes)

    def run(cols: Tensor) -> None:
        """Draw and score the candidates in columns ``cols`` under ``classes[:, cols]``."""
        mm = len(cols)
        lab = classes[:, cols].reshape(-1).to(device)
        dr = draw.repeat_interleave(mm, 0)
        z, own_q = _draw_scored(model, known.repeat_interleave(mm, 0), dr, lab, knobs, generator)
        per_pos, lq = class_log_likelihoods(model, z, drawn=dr, batch_size=batch_size, **knobs)
        assert lq is not None
        # a candidate's own class: the sampler's exact log q rather than the forward's
        lq = lq.scatter(0, lab.cpu()[None], own_q[None])
        grids[:, cols] = z.reshape(n, mm, h, w)
        log_py[:, :, cols] = per_pos.sum((2, 3)).reshape(c, n, mm)
        log_qy[:, :, cols] = lq.reshape(c, n, mm)

    pilot = first.nonzero().squeeze(1)
    run(pilot)
    log_uniform = -math.log(c)
    q_pilot = torch.logsumexp(log_qy[:, :, pilot] + log_uniform, 0)  # (n, m1)
    evidence = torch.logsumexp(log_py[:, :, pilot] - q_pilot, 2).T  # (n, C): ~ p(known | y)
    posterior = DEFENSIVE / c + (1 - DEFENSIVE) * evidence.softmax(1)  # (n, C)
    rest = (~first).nonzero().squeeze(1)
    if len(rest):
        classes[:, rest] = torch.multinomial(posterior.float().to(gen_device), len(rest),
                                             replacement=True, generator=generator).cpu()
        run(rest)
    alpha = (len(pilot) / c + len(rest) * posterior) / m  # (n, C): expected class shares
    log_q = torch.logsumexp(log_qy + alpha.T.log()[:, :, None], 0)
    log_p = torch.logsumexp(log_py, 0) + log_uniform
    post = (log_py + log_uniform - log_p).permute(1, 2, 0)  # (n, m, C): log p(y | z)
    return Candidates(grids.cpu(), log_p.cpu(), log_q.cpu(),
                      draw.cpu()[:, None].expand(n, m, h, w), post.cpu(), alpha.cpu())


@torch.inference_mode()
def class_log_likelihoods(model, grids: Tensor, *, drawn: Tensor | None = None,
                          temperature: float = 1.0, top_k: int | None = None,
                          top_p: float | None = None, guidance: float = 1.0,
                          batch_size: int = 512) -> tuple[Tensor, Tensor | None]:
    """Per-class scores of code grids under a class-conditional prior, one forward pass per
    class: grids int (N, h, w) -> (log p(z_i | z_<i, y) float64 (C, N, h, w) in nats, and
    with ``drawn`` bool (N, h, w) the log-probability of the drawn codes under the sampling
    distribution of class y (guided, tempered, filtered as :func:`draw` does), float64
    (C, N), else None)."""
    c = model.num_classes
    n, h, w = grids.shape
    # float64 on the CPU (MPS has no float64); each pass's float32 numbers are moved there
    per_pos = torch.empty(c, n, h, w, dtype=torch.float64)
    log_q = None if drawn is None else torch.empty(c, n, dtype=torch.float64)
    # plain sampling draws from the prior's own conditionals: q's terms are p's
    plain = temperature == 1 and top_k is None and top_p is None and guidance == 1
    for s in range(0, n, batch_size):
        z = grids[s : s + batch_size]
        uncond = model(z, None) if drawn is not None and guidance != 1 else None
        for y in range(c):
            logits = model(z, torch.full((z.shape[0],), y, device=z.device)).float()
            lp = -F.cross_entropy(logits, z, reduction="none")
            per_pos[y, s : s + batch_size] = lp.cpu().double()
            if log_q is None:
                continue
            d = drawn[s : s + batch_size]
            if plain:
                lq = torch.where(d, lp, torch.zeros_like(lp))
                log_q[y, s : s + batch_size] = lq.sum((1, 2)).cpu().double()
                continue
            if uncond is not None:
                logits = guide(logits, uncond.float(), guidance)
            k = logits.shape[1]
            flat = logits.permute(0, 2, 3, 1).reshape(-1, k)
            lq = filter_logits(flat, temperature, top_k, top_p).float().log_softmax(dim=1)
            lq = lq.gather(1, z.reshape(-1, 1)).reshape(z.shape)
            # select, not multiply: a kept code may lie outside class y's top-k (-inf)
            lq = torch.where(d, lq, torch.zeros_like(lq))
            log_q[y, s : s + batch_size] = lq.sum((1, 2)).cpu().double()
    return per_pos, log_q


def effective_sample_size(log_weight: Tensor) -> Tensor:
    """log_weight (B, M) -> (sum w)^2 / sum w^2 per row, float64 (B,), in [1, M]."""
    lw = log_weight.double()
    lw = lw - lw.max(dim=1, keepdim=True).values
    wt = lw.exp()
    return wt.sum(1) ** 2 / (wt**2).sum(1)


def select_candidates(cands: Candidates, num: int, select: str = "importance",
                      generator: torch.Generator | None = None) -> Tensor:
    """Indices int64 (B, num) of the kept candidates.

    importance: the M candidates are split into ``num`` consecutive groups of (nearly)
    equal size, and each group gives one draw with probability proportional to p/q
    (sampling importance resampling), so the ``num`` completions are independent draws
    (resampling ``num`` times from one pool would repeat its few heaviest candidates);
    best: the ``num`` highest log p, best first; proposal: the first ``num`` (prefix-only
    completion: known codes after a masked one ignored).
    """
    b, m = cands.log_p.shape
    if select == "proposal":
        return torch.arange(num).expand(b, num).clone()
    if select == "best":
        return cands.log_p.topk(num, dim=1).indices
    group = torch.arange(m) * num // m  # (M,): the group of each candidate, 0..num-1
    in_group = group[None, :] == torch.arange(num)[:, None]  # (num, M)
    lw = cands.log_weight[:, None, :].masked_fill(~in_group, float("-inf"))  # (B, num, M)
    probs = (lw - lw.amax(dim=2, keepdim=True)).exp().reshape(b * num, m)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.multinomial(probs.float().to(gen_device), 1, generator=generator)
    return idx.reshape(b, num).cpu()


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
    labels = _labels_index(labels, n)
    mixture = uses_class_mixture(prior, labels, class_mixture, select)
    m = _check_knobs(prior, num, num_candidates, select, temperature, top_k, top_p, guidance,
                     labels, mixture)
    h, w = prior.code_shape
    code_mask = torch.as_tensor(code_mask, dtype=torch.bool).cpu()
    if code_mask.shape not in ((h, w), (n, h, w)):
        raise UserError(f"code_mask must be bool ({h}, {w}) or ({n}, {h}, {w}), "
                        f"got {tuple(code_mask.shape)}")
    code_mask = code_mask.expand(n, h, w).clone()
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
