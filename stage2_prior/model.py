"""Gated PixelCNN prior over grids of VQ-VAE code indices, and its reference sampler.

``GatedPixelCNN.forward(codes, labels)`` gives, at every position of a (h, w) grid, the
logits of the code there given the codes before it in raster order (row by row, left to
right). ``sample`` draws grids one position at a time with the full forward pass (the
slow, obviously correct reference); the per-position logits come from ``_step_logits`` so
that a cached incremental sampler can be checked against it.

Class conditioning (``num_classes > 0``): a per-layer embedding of the label is added to
the gate pre-activations of both stacks. Row ``num_classes`` of that embedding is the
*null* class, used when ``labels`` is None; training with some labels replaced by it
(``drop_labels``) makes classifier-free guidance possible at sampling time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stage1_vqvae.runtime.errors import UserError
from stage2_prior.layers import GatedBlock, check_kernel_size, dependency_mask

SAMPLERS = ("cached", "naive")


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
    """Raise ``ValueError`` (one line naming the value and the allowed range) on a bad knob.

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
    sums to >= top_p. At least one code always survives. Raises ``ValueError`` on bad knobs.
    """
    if logits.dim() != 2:
        raise UserError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    k_all = logits.shape[1]
    validate_sampling_args(k_all, temperature, top_k, top_p)
    out = logits / temperature
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


class GatedPixelCNN(nn.Module):
    """Autoregressive prior p(codes | label) over (h, w) grids of code indices.

    Embedding -> ``num_layers`` gated blocks (vertical + horizontal stacks, see
    ``stage2_prior.layers``) -> sum of the blocks' skip outputs -> ReLU -> 1x1 conv
    (head_hidden) -> ReLU -> 1x1 conv (num_codes). The last conv starts at zero, so an
    untrained model predicts the uniform distribution (NLL = log num_codes).

    ``code_shape`` is recorded for ``sample`` and checkpoints; ``forward`` accepts any grid.
    Receptive field of the logits at (i, j), with R = num_layers * (kernel_size // 2):
    row i columns j-R-1..j-1 and rows i-1-R..i-1 columns j-R..j+R (``dependency_mask``).
    """

    def __init__(
        self,
        num_codes: int,
        code_shape: tuple[int, int],
        num_classes: int = 0,
        hidden: int = 128,
        num_layers: int = 12,
        kernel_size: int = 3,
        head_hidden: int = 256,
    ) -> None:
        super().__init__()
        if not _is_int(num_codes) or num_codes < 2:
            raise UserError(f"num_codes={num_codes!r} must be an int >= 2")
        shape = tuple(code_shape)
        if len(shape) != 2 or not all(_is_int(s) and s >= 1 for s in shape):
            raise UserError(f"code_shape={code_shape!r} must be two ints >= 1 (h, w)")
        if not _is_int(num_classes) or num_classes < 0:
            raise UserError(f"num_classes={num_classes!r} must be an int >= 0 (0 = unconditional)")
        for name, value in (("hidden", hidden), ("num_layers", num_layers),
                            ("head_hidden", head_hidden)):
            if not _is_int(value) or value < 1:
                raise UserError(f"{name}={value!r} must be an int >= 1")
        check_kernel_size(kernel_size)

        self.num_codes = num_codes
        self.code_shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.num_classes = num_classes
        self.hidden = hidden
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.head_hidden = head_hidden

        self.embed = nn.Embedding(num_codes, hidden)
        self.blocks = nn.ModuleList(
            GatedBlock(hidden, kernel_size, first=(n == 0), last=(n == num_layers - 1))
            for n in range(num_layers)
        )
        self._register_load_state_dict_pre_hook(self._drop_unused_weights)
        if num_classes > 0:
            # zero init: the label starts as a no-op and is learned, like the null class
            self.class_embed = nn.ModuleList(
                nn.Embedding(num_classes + 1, 2 * hidden) for _ in range(num_layers)
            )
            for emb in self.class_embed:
                nn.init.zeros_(emb.weight)
        else:
            self.class_embed = None
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(hidden, head_hidden, 1),
            nn.ReLU(),
            nn.Conv2d(head_hidden, num_codes, 1),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    # ----------------------------------------------------------------- labels and checks
    @property
    def null_label(self) -> int:
        """Label index meaning "no class" (= num_classes); only when num_classes > 0."""
        return self.num_classes

    def _device(self) -> torch.device:
        return self.embed.weight.device

    def _label_index(self, labels: Tensor | None, batch: int, allow_null: bool) -> Tensor | None:
        """labels (B,) int -> int64 (B,) on the model's device; None -> all null (or None)."""
        if self.num_classes == 0:
            if labels is not None:
                raise UserError("labels were given but the model is unconditional "
                                 "(num_classes=0); pass labels=None")
            return None
        if labels is None:
            return torch.full((batch,), self.null_label, dtype=torch.long, device=self._device())
        if not isinstance(labels, Tensor):
            raise UserError(f"labels must be an int64 tensor of shape ({batch},), "
                             f"got {type(labels).__name__}")
        if labels.shape != (batch,) or labels.is_floating_point() or labels.is_complex():
            raise UserError(f"labels must be an integer tensor of shape ({batch},), "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        top = self.num_classes if allow_null else self.num_classes - 1
        if batch > 0 and (int(labels.min()) < 0 or int(labels.max()) > top):
            raise UserError(f"labels must be in [0, {top}] (num_classes={self.num_classes}), "
                             f"got min {int(labels.min())} max {int(labels.max())}")
        return labels.to(device=self._device(), dtype=torch.long)

    def _check_codes(self, codes: Tensor, name: str = "codes") -> Tensor:
        if (not isinstance(codes, Tensor) or codes.dim() != 3 or codes.is_floating_point()
                or codes.is_complex() or codes.dtype == torch.bool):
            got = (f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, Tensor)
                   else type(codes).__name__)
            raise UserError(f"{name} must be an integer tensor (B, h, w), got {got}")
        if codes.numel() > 0:
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.num_codes:
                raise UserError(f"{name} must be in [0, {self.num_codes - 1}], "
                                 f"got min {lo} max {hi}")
        return codes.to(device=self._device(), dtype=torch.long)

    def drop_labels(self, labels: Tensor, p: float, generator: torch.Generator | None = None
                    ) -> Tensor:
        """Replace each label by the null class with probability p (conditioning dropout).

        labels int (B,) in [0, num_classes) -> int64 (B,) in [0, num_classes].
        """
        if self.num_classes == 0:
            raise UserError("drop_labels needs a class-conditional model (num_classes > 0)")
        if not _is_real(p) or not 0 <= p <= 1:
            raise UserError(f"p={p!r} must be a number in [0, 1]")
        if not isinstance(labels, Tensor) or labels.dim() != 1:
            raise UserError(f"labels must be a 1-D integer tensor (B,), got {labels!r:.60}")
        idx = self._label_index(labels, labels.shape[0], allow_null=False)
        if p == 0:
            return idx
        u = torch.rand(idx.shape, generator=generator, device=idx.device)
        return torch.where(u < p, torch.full_like(idx, self.null_label), idx)

    def _drop_unused_weights(self, state_dict: dict, prefix: str, *args) -> None:
        # checkpoints of vqgen <= 0.1.0 carry the last layer's horizontal output conv, which
        # never reached the logits: dropping it loads them unchanged
        for name in ("weight", "bias"):
            state_dict.pop(f"{prefix}blocks.{self.num_layers - 1}.h_out.{name}", None)

    def dependency_mask(self, i: int, j: int, code_shape: tuple[int, int] | None = None) -> Tensor:
        """Bool (h, w): positions whose codes the logits at (i, j) depend on (see layers)."""
        return dependency_mask(i, j, code_shape or self.code_shape, self.num_layers,
                               self.kernel_size)

    # ----------------------------------------------------------------------- forward
    def forward(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """codes int (B, h, w) in [0, num_codes), any h, w >= 1; labels int (B,) in
        [0, num_classes] (num_classes = null class) or None (all null; required when
        num_classes == 0) -> logits float (B, num_codes, h, w).

        logits[:, :, i, j] depends only on codes strictly before (i, j) in raster order.
        """
        codes = self._check_codes(codes)
        idx = self._label_index(labels, codes.shape[0], allow_null=True)
        x = self.embed(codes).permute(0, 3, 1, 2).contiguous()  # (B, hidden, h, w)
        v, h = x, x
        skips = None
        for n, block in enumerate(self.blocks):
            cond = None
            if idx is not None:
                cond = self.class_embed[n](idx)[:, :, None, None]  # (B, 2*hidden, 1, 1)
            v, h, skip = block(v, h, cond)
            skips = skip if skips is None else skips + skip
        return self.head(skips)

    # ---------------------------------------------------------------------- sampling
    def _step_logits(self, codes: Tensor, labels: Tensor | None, i: int, j: int) -> Tensor:
        """Logits (B, num_codes) at position (i, j) from the full forward pass.

        codes int64 (B, h, w) on the model's device (only positions before (i, j) matter);
        labels int64 (B,) in [0, num_classes] or None. The reference an incremental
        sampler must reproduce.
        """
        return self.forward(codes, labels)[:, :, i, j]

    def _guided_logits(self, codes: Tensor, labels: Tensor | None, i: int, j: int,
                       guidance: float) -> Tensor:
        """Logits (B, num_codes) at (i, j) with classifier-free guidance.

        With labels and guidance != 1: uncond + guidance * (cond - uncond), where uncond
        uses the null class; cond and uncond run as one batch [codes; codes].
        """
        if labels is None or guidance == 1:
            return self._step_logits(codes, labels, i, j)
        null = torch.full_like(labels, self.null_label)
        both = self._step_logits(torch.cat([codes, codes]), torch.cat([labels, null]), i, j)
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    def _prepare_completion(self, num: int, prefix: Tensor | None, mask: Tensor | None
                            ) -> tuple[Tensor, Tensor]:
        """-> (codes int64 (num, h, w), keep bool (num, h, w)) on the model's device."""
        h, w = self.code_shape
        device = self._device()
        if prefix is None and mask is None:
            return (torch.zeros(num, h, w, dtype=torch.long, device=device),
                    torch.zeros(num, h, w, dtype=torch.bool, device=device))
        if prefix is None or mask is None:
            raise UserError("prefix and mask go together: prefix (num, h, w) gives the codes, "
                             "mask (h, w) or (num, h, w) bool says which to keep")
        if tuple(prefix.shape) != (num, h, w):
            raise UserError(f"prefix must have shape ({num}, {h}, {w}) (num, *code_shape), "
                             f"got {tuple(prefix.shape)}")
        if mask.dtype != torch.bool or tuple(mask.shape) not in ((h, w), (num, h, w)):
            raise UserError(f"mask must be bool ({h}, {w}) or ({num}, {h}, {w}), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        keep = mask.to(device).expand(num, h, w)
        # only kept positions must be valid codes; the rest are overwritten
        codes = torch.where(keep, prefix.to(device), torch.zeros((), dtype=prefix.dtype,
                                                                 device=device))
        codes = self._check_codes(codes, "prefix (where mask is True)")
        return codes.clone(), keep.clone()

    @torch.no_grad()
    def sample(
        self,
        num: int,
        *,
        labels: Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance: float = 1.0,
        generator: torch.Generator | None = None,
        prefix: Tensor | None = None,
        mask: Tensor | None = None,
        sampler: str = "cached",
    ) -> Tensor:
        """Draw ``num`` code grids of shape ``code_shape`` -> int64 (num, h, w), model's device.

        ``sampler="naive"`` is the reference: positions in raster order; at each one the full
        forward runs, the logits there get guidance (``_guided_logits``), then
        ``filter_logits``, then one ``torch.multinomial(probs, 1, generator=generator)`` for
        all ``num`` rows. ``sampler="cached"`` (the default, ``stage2_prior.cached``) keeps
        each layer's activations and computes only what each new position needs; it makes
        the same calls on the generator in the same order, so it gives the same grids.

        labels int (num,) in [0, num_classes) or None (unconditional: the null class).
        guidance != 1 needs labels. ``generator`` must live on the model's device; the same
        seed gives the same grids. Completion: ``prefix`` int (num, h, w) with ``mask`` bool
        (h, w) or (num, h, w); where mask is True the prefix code is kept and never drawn.
        A position kept in every row is skipped without a draw; otherwise every row draws
        (so the generator advances the same way whatever the mask), and kept rows discard it.
        """
        if sampler not in SAMPLERS:
            raise UserError(f"sampler={sampler!r} must be one of {', '.join(SAMPLERS)}")
        idx, codes, keep = self._prepare_sampling(num, labels, temperature, top_k, top_p,
                                                  guidance, generator, prefix, mask)
        if sampler == "cached":
            from stage2_prior.cached import sample_prepared  # cached.py imports this module

            return sample_prepared(self, codes, keep, idx, temperature=temperature, top_k=top_k,
                                   top_p=top_p, guidance=guidance, generator=generator)
        h, w = self.code_shape
        for i in range(h):
            for j in range(w):
                keep_ij = keep[:, i, j]
                if bool(keep_ij.all()):
                    continue
                logits = self._guided_logits(codes, idx, i, j, guidance)
                logits = filter_logits(logits, temperature, top_k, top_p)
                probs = logits.float().softmax(dim=1)
                draw = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                codes[:, i, j] = torch.where(keep_ij, codes[:, i, j], draw)
        return codes

    def _prepare_sampling(
        self,
        num: int,
        labels: Tensor | None,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        guidance: float,
        generator: torch.Generator | None,
        prefix: Tensor | None,
        mask: Tensor | None,
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """Check the arguments of ``sample`` (``ValueError`` on bad input) ->
        (label index int64 (num,) or None, codes int64 (num, h, w), keep bool (num, h, w)),
        all on the model's device. Shared by every sampler, so they refuse the same input.
        """
        validate_sampling_args(self.num_codes, temperature, top_k, top_p, guidance)
        if not _is_int(num) or num < 1:
            raise UserError(f"num={num!r} must be an int >= 1")
        idx = self._label_index(labels, num, allow_null=False)
        if labels is None and guidance != 1:
            raise UserError(f"guidance={guidance} needs labels (classifier-free guidance "
                             "mixes conditional and unconditional logits); pass labels")
        device = self._device()
        if generator is not None and generator.device.type != device.type:
            raise UserError(f"generator is on {generator.device} but the model is on "
                             f"{device}; make the generator on the model's device")
        codes, keep = self._prepare_completion(num, prefix, mask)
        return idx, codes, keep
