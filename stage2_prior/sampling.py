"""Drawing code grids from a :class:`GatedPixelCNN`: argument checks, classifier-free guidance,
temperature / top-k / top-p filtering, and the two samplers.

- ``sampler="cached"`` (default): :class:`stage2_prior.cached.IncrementalState` keeps each
  layer's activations and computes only what each new position needs (about one forward
  pass of work per grid).
- ``sampler="naive"``: the reference; the full forward pass at every drawn position.

Both go through the same :func:`guide` and :func:`draw` (one implementation of the
guidance formula, the filters and the draw), so they consume the generator identically and
give the same grids (see ``cached.py`` on float rounding). Arguments are checked once per
call by :func:`prepare_sampling`, never per position.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage2_prior.cached import IncrementalState
from vqgen.stage2_prior.model import GatedPixelCNN

SAMPLERS = ("cached", "naive")

# on_logits(i, j, logits): the guided logits (num, K) before filtering at a drawn position
LogitsHook = Callable[[int, int, Tensor], None]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_sampling_args(
    num_codes: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float = 1.0,
) -> None:
    """Raise ``UserError`` (one line naming the value and the allowed range) on a bad knob.

    - ``temperature``: finite, > 0.
    - ``top_k``: None or an int in [1, num_codes].
    - ``top_p``: None or in (0, 1].
    - ``guidance``: finite, >= 0. 0 samples the unconditional model, 1 the conditional one
      (no guidance, the default), > 1 sharpens towards the class. Negative values would
      push samples *away* from the class, which is never what "sample class c" means.
    """
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise UserError(f"temperature={temperature!r} must be a finite number > 0")
    if top_k is not None and (not _is_int(top_k) or not 1 <= top_k <= num_codes):
        raise UserError(f"top_k={top_k!r} must be None or an int in [1, {num_codes}]")
    if top_p is not None and (not _is_real(top_p) or not 0 < top_p <= 1):
        raise UserError(f"top_p={top_p!r} must be None or a number in (0, 1]")
    if not _is_real(guidance) or not math.isfinite(guidance) or guidance < 0:
        raise UserError(f"guidance={guidance!r} must be a finite number >= 0 (1 = no guidance)")


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering.

    logits (B, K) finite -> (B, K): ``logits / temperature`` with removed entries set to
    -inf. top-k keeps exactly the k largest (ties broken by ``torch.topk``); top-p then keeps
    the smallest set of most likely codes whose probability (after temperature and top-k)
    sums to >= top_p. At least one code always survives. The knobs must already have
    passed :func:`validate_sampling_args` (this runs once per drawn position).
    """
    out = logits / temperature
    k_all = logits.shape[1]
    if top_k is not None and top_k < k_all:
        # scatter the top-k indices rather than thresholding, so ties cannot keep more than k
        keep = torch.zeros_like(out, dtype=torch.bool)
        keep.scatter_(1, out.topk(top_k, dim=1).indices, True)
        out = out.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = out.sort(dim=1, descending=True)
        probs = sorted_logits.float().softmax(dim=1)
        mass_before = probs.cumsum(dim=1) - probs
        drop_sorted = mass_before >= top_p  # the first code has mass_before 0, always kept
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def guide(cond: Tensor, uncond: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance: ``uncond + guidance * (cond - uncond)`` (logits, same shape)."""
    return uncond + guidance * (cond - uncond)


def draw(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
         generator: torch.Generator | None, uniform: Tensor | None = None) -> Tensor:
    """One code per row from (guided) logits (B, K): filter, softmax in float32, then either
    one ``torch.multinomial(probs, 1, generator)`` or, given ``uniform`` float (B,) in
    [0, 1) (one number per row, from that row's own generator), the inverse CDF: the first
    code whose cumulative probability exceeds ``uniform``. -> int64 (B,).

    The inverse CDF makes a row's draw depend on that row alone, so samples do not change
    with the batch they are drawn in."""
    probs = filter_logits(logits, temperature, top_k, top_p).float().softmax(dim=1)
    if uniform is None:
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    cdf = probs.cumsum(dim=1)
    target = (uniform.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    # right=True skips codes of probability 0 (a flat cdf step), even at uniform 0
    idx = torch.searchsorted(cdf.contiguous(), target, right=True).squeeze(1)
    return idx.clamp_(max=probs.shape[1] - 1)


def row_uniforms(generators: list[torch.Generator], positions: int,
                 device: torch.device) -> Tensor:
    """float32 (len(generators), positions) in [0, 1): row r's numbers from generator r
    alone, one per grid position, drawn up front (no generator calls per position)."""
    return torch.stack([torch.rand(positions, generator=g, device=device) for g in generators])


def prepare_sampling(
    model: GatedPixelCNN,
    num: int,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    prefix: Tensor | None = None,
    known: Tensor | None = None,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """Check every sampling argument once (``UserError`` on bad input) ->
    (label ids int64 (num,) or None, codes int64 (num, h, w), known bool (num, h, w)),
    all on the model's device. Shared by both samplers, so they refuse the same input.

    ``prefix`` int (num, h, w) with ``known`` bool (h, w) or (num, h, w): where known is
    True the prefix code is kept, never drawn.
    """
    validate_sampling_args(model.num_codes, temperature, top_k, top_p, guidance)
    if not _is_int(num) or num < 1:
        raise UserError(f"num={num!r} must be an int >= 1")
    label_ids = model.label_index(labels, num, allow_null=False)
    if labels is None and guidance != 1:
        raise UserError(f"guidance={guidance} needs labels (classifier-free guidance "
                        "mixes conditional and unconditional logits); pass labels")
    device = model.device
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    if isinstance(generator, (list, tuple)) and len(generator) != num:
        raise UserError(f"{len(generator)} generators for num={num} rows; pass one per row")
    for g in gens:
        if g is not None and g.device.type != device.type:
            raise UserError(f"generator is on {g.device} but the model is on "
                            f"{device}; make the generator on the model's device")
    h, w = model.code_shape
    if prefix is None and known is None:
        return (label_ids, torch.zeros(num, h, w, dtype=torch.long, device=device),
                torch.zeros(num, h, w, dtype=torch.bool, device=device))
    if prefix is None or known is None:
        raise UserError("prefix and known go together: prefix (num, h, w) gives the codes, "
                        "known (h, w) or (num, h, w) bool says which are kept")
    if tuple(prefix.shape) != (num, h, w):
        raise UserError(f"prefix must have shape ({num}, {h}, {w}) (num, *code_shape), "
                        f"got {tuple(prefix.shape)}")
    if known.dtype != torch.bool or tuple(known.shape) not in ((h, w), (num, h, w)):
        raise UserError(f"known must be bool ({h}, {w}) or ({num}, {h}, {w}), "
                        f"got {known.dtype} {tuple(known.shape)}")
    known = known.to(device).expand(num, h, w)
    # only known positions must be valid codes; the rest are overwritten
    codes = torch.where(known, prefix.to(device), torch.zeros((), dtype=prefix.dtype,
                                                              device=device))
    codes = model.check_codes(codes, "prefix (where known is True)")
    return label_ids, codes.clone(), known.clone()


def _network_labels(model: GatedPixelCNN, label_ids: Tensor | None, guided: bool
                    ) -> Tensor | None:
    """Labels the network runs on: label_ids, or [label_ids; null] for classifier-free
    guidance (conditional rows first, then their unconditional twins)."""
    if not guided:
        return label_ids
    assert label_ids is not None
    return torch.cat([label_ids, torch.full_like(label_ids, model.null_label)])


@torch.no_grad()
def sample_prepared(
    model: GatedPixelCNN,
    codes: Tensor,
    known: Tensor,
    label_ids: Tensor | None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    on_logits: LogitsHook | None = None,
    sampler: str = "cached",
) -> Tensor:
    """Fill the unknown positions of ``codes`` in raster order; arguments as returned by
    :func:`prepare_sampling` (already checked). Returns ``codes`` (filled in place).

    A position known in every row is skipped without a draw; otherwise every row draws (so
    the generator advances the same way whatever is known) and known rows discard it.
    ``on_logits(i, j, logits)`` sees the guided logits (num, K) before filtering at every
    drawn position.
    """
    num, h, w = codes.shape
    uniforms = None
    if isinstance(generator, (list, tuple)):  # one generator per row: batch-independent
        uniforms = row_uniforms(list(generator), h * w, codes.device)
        generator = None
    guided = label_ids is not None and guidance != 1
    net_labels = _network_labels(model, label_ids, guided)
    # positions drawn (not known in every row), decided up front: no per-position sync
    drawn = (~known.all(dim=0)).tolist()  # (h, w) nested lists of bool

    def net_batch(x: Tensor) -> Tensor:
        """Codes (num, ...) as the network's batch holds them: twice when guided."""
        return torch.cat([x, x]) if guided else x

    def emit(i: int, j: int, logits: Tensor) -> None:
        if guided:
            logits = guide(*logits.chunk(2), guidance)
        if on_logits is not None:
            on_logits(i, j, logits)
        u = None if uniforms is None else uniforms[:, i * w + j]
        codes[:, i, j] = torch.where(known[:, i, j], codes[:, i, j],
                                     draw(logits, temperature, top_k, top_p, generator, u))

    if sampler == "naive":
        for i in range(h):
            for j in range(w):
                if drawn[i][j]:
                    emit(i, j, model(net_batch(codes), net_labels)[:, :, i, j])
        return codes
    rows = [i for i in range(h) if any(drawn[i])]
    if not rows:
        return codes
    state = IncrementalState(model, net_labels, 2 * num if guided else num, w)
    for i in range(rows[-1] + 1):
        state.begin_row(i, net_batch(codes[:, i - 1]) if i else None)
        if not any(drawn[i]):
            continue  # nothing drawn in this row: its horizontal stack feeds nothing
        last_j = max(j for j in range(w) if drawn[i][j])
        for j in range(last_j + 1):
            state.step(j)
            if drawn[i][j]:
                emit(i, j, state.logits())
            if j < last_j:
                state.set_code(j, net_batch(codes[:, i, j]))
    return codes


@torch.no_grad()
def sample(
    model: GatedPixelCNN,
    num: int,
    *,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    prefix: Tensor | None = None,
    known: Tensor | None = None,
    sampler: str = "cached",
    on_logits: LogitsHook | None = None,
) -> Tensor:
    """Draw ``num`` code grids of shape ``model.code_shape`` -> int64 (num, h, w) on the
    model's device.

    labels int (num,) in [0, num_classes) or None (unconditional: the null class).
    guidance != 1 needs labels. ``generator`` must live on the model's device; the same
    seed gives the same grids, with either sampler. A list of ``num`` generators (one per
    row) draws row r from generator r alone (inverse CDF), so a row's grid does not depend
    on the other rows drawn with it (batch size). Completion: ``prefix`` int (num, h, w)
    with ``known`` bool (h, w) or (num, h, w); where known is True the prefix code is kept.
    ``on_logits(i, j, logits)`` sees the guided logits (num, K) before filtering.
    """
    if sampler not in SAMPLERS:
        raise UserError(f"sampler={sampler!r} must be one of {', '.join(SAMPLERS)}")
    label_ids, codes, known = prepare_sampling(model, num, labels, temperature, top_k, top_p,
                                               guidance, generator, prefix, known)
    return sample_prepared(model, codes, known, label_ids, temperature=temperature, top_k=top_k,
                           top_p=top_p, guidance=guidance, generator=generator,
                           on_logits=on_logits, sampler=sampler)
