"""Candidate completions of partly known code grids, drawn, scored and resampled.

The prior is raster-ordered, so a masked position can only be *drawn* from the codes before
it. Known codes after it must still count. ``pipeline.edit.inpaint`` therefore draws ``candidates``
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

With ``mixture=True`` (a class-conditional prior used without a class; ``inpaint``'s
default) the class is unknown rather than the null class: p(z) = mean over classes y of p(z | y), the
candidates are drawn under classes of their own (spread evenly, then following the class
posterior the first ones estimate) and weighted against that mixture of proposals, so the
known codes pick the class as well as the completion (``_draw_mixture``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vqgen.pipeline.evaluation.stage2 import prior_nll
from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage2_prior.sampling import filter_logits, guide
from vqgen.stage2_prior.sampling import sample as sample_codes


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


def labels_index(labels: Tensor | None, n: int) -> Tensor | None:
    """labels (n,) int -> int64 (n,) (UserError on another shape); None stays None."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels).long()
    if labels.shape != (n,):
        raise UserError(f"labels must have shape ({n},) (one per input), got {tuple(labels.shape)}")
    return labels


@torch.inference_mode()
def check_candidate_memory(model, num_candidates: int, code_mask: Tensor,
                           batch_size: int = 512) -> None:
    """Refuse a candidate count whose working memory cannot fit, before any drawing (100,000
    candidates ran to ~10 GB). ``code_mask`` bool (B, h, w). Per candidate the sampler keeps
    the logits of every drawn position in four float32 copies (seen, stacked, filtered, log-
    softmax: 16 K bytes a position) plus its cached activations (measured: a 512-code
    7x7 prior holds ~170 KB per candidate for 24 drawn positions; this says ~250 KB)."""
    from vqgen.stage1_vqvae.runtime.memory import available_memory

    b, h, w = code_mask.shape
    m = int(num_candidates)
    drawn = int(code_mask.reshape(b, -1).sum(1).max()) if b else 0
    per = 16 * int(model.num_codes) * drawn + 8 * int(model.hidden) * h * w
    need = min(b, max(1, batch_size // m)) * m * per
    have = available_memory()
    if have is not None and need > 0.8 * have:
        most = max(1, int(0.8 * have // per))
        raise UserError(f"--candidates {m:,} would need about {need / 2**30:.1f} GiB of memory "
                        f"to draw, more than the {have / 2**30:.1f} GiB available; use at most "
                        f"{most:,} candidates (or fewer masked codes)")


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
    labels = labels_index(labels, b)
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
