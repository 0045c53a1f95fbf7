"""Gated PixelCNN prior over grids of VQ-VAE code indices.

``GatedPixelCNN.forward(codes, labels)`` gives, at every position of a (h, w) grid, the
logits of the code there given the codes before it in raster order (row by row, left to
right). Drawing grids from it is :mod:`stage2_prior.sampling`'s job.

Class conditioning (``num_classes > 0``): a per-layer embedding of the label is added to
the gate pre-activations of both stacks. Row ``num_classes`` of that embedding is the
*null* class, used when ``labels`` is None; training with some labels replaced by it
(``drop_labels``) makes classifier-free guidance possible at sampling time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage2_prior.layers import GatedBlock, check_kernel_size, dependency_mask


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class GatedPixelCNN(nn.Module):
    """Autoregressive prior p(codes | label) over (h, w) grids of code indices.

    Embedding -> ``num_layers`` gated blocks (vertical + horizontal stacks, see
    ``stage2_prior.layers``) -> sum of the blocks' skip outputs -> ReLU -> 1x1 conv
    (head_hidden) -> ReLU -> 1x1 conv (num_codes). The last conv starts at zero, so an
    untrained model predicts the uniform distribution (NLL = log num_codes).

    ``dropout`` applies to each block's gated horizontal features while training.
    ``code_shape`` is recorded for sampling (``stage2_prior.sampling.sample(model, ...)``)
    and checkpoints; ``forward`` accepts any grid.
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
        dropout: float = 0.0,
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
        if not _is_real(dropout) or not 0.0 <= dropout < 1.0:
            raise UserError(f"dropout={dropout!r} must be a number in [0, 1)")

        self.num_codes = num_codes
        self.code_shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.num_classes = num_classes
        self.hidden = hidden
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.head_hidden = head_hidden
        self.dropout = float(dropout)

        self.embed = nn.Embedding(num_codes, hidden)
        self.blocks = nn.ModuleList(
            GatedBlock(hidden, kernel_size, first=(n == 0), last=(n == num_layers - 1),
                       dropout=dropout)
            for n in range(num_layers)
        )
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

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return self.embed.weight.device

    def label_index(self, labels: Tensor | None, batch: int, allow_null: bool,
                    validated: bool = False) -> Tensor | None:
        """labels (B,) int -> int64 (B,) on the model's device; None -> all null (or None).

        ``validated``: the values are known to be in range (the training loop's code maps
        were checked when read), so skip reading them on the host (a GPU sync per call)."""
        if self.num_classes == 0:
            if labels is not None:
                raise UserError("labels were given but the model is unconditional "
                                 "(num_classes=0); pass labels=None")
            return None
        if labels is None:
            return torch.full((batch,), self.null_label, dtype=torch.long, device=self.device)
        if not isinstance(labels, Tensor):
            raise UserError(f"labels must be an int64 tensor of shape ({batch},), "
                             f"got {type(labels).__name__}")
        if labels.shape != (batch,) or labels.is_floating_point() or labels.is_complex():
            raise UserError(f"labels must be an integer tensor of shape ({batch},), "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        top = self.num_classes if allow_null else self.num_classes - 1
        if not validated and batch > 0 and (int(labels.min()) < 0 or int(labels.max()) > top):
            raise UserError(f"labels must be in [0, {top}] (num_classes={self.num_classes}), "
                             f"got min {int(labels.min())} max {int(labels.max())}")
        return labels.to(device=self.device, dtype=torch.long)

    def check_codes(self, codes: Tensor, name: str = "codes", validated: bool = False) -> Tensor:
        """codes int (B, h, w) -> int64 on the model's device; ``validated`` as in
        :meth:`label_index` (dtype and shape are always checked, values only when False)."""
        if (not isinstance(codes, Tensor) or codes.dim() != 3 or codes.is_floating_point()
                or codes.is_complex() or codes.dtype == torch.bool):
            got = (f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, Tensor)
                   else type(codes).__name__)
            raise UserError(f"{name} must be an integer tensor (B, h, w), got {got}")
        if not validated and codes.numel() > 0:
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.num_codes:
                raise UserError(f"{name} must be in [0, {self.num_codes - 1}], "
                                 f"got min {lo} max {hi}")
        return codes.to(device=self.device, dtype=torch.long)

    def drop_labels(self, labels: Tensor, p: float, generator: torch.Generator | None = None,
                    validated: bool = False) -> Tensor:
        """Replace each label by the null class with probability p (conditioning dropout).

        labels int (B,) in [0, num_classes) -> int64 (B,) in [0, num_classes].
        ``validated``: as in :meth:`label_index`.
        """
        if self.num_classes == 0:
            raise UserError("drop_labels needs a class-conditional model (num_classes > 0)")
        if not _is_real(p) or not 0 <= p <= 1:
            raise UserError(f"p={p!r} must be a number in [0, 1]")
        if not isinstance(labels, Tensor) or labels.dim() != 1:
            raise UserError(f"labels must be a 1-D integer tensor (B,), got {labels!r:.60}")
        label_ids = self.label_index(labels, labels.shape[0], allow_null=False, validated=validated)
        if p == 0:
            return label_ids
        u = torch.rand(label_ids.shape, generator=generator, device=label_ids.device)
        return torch.where(u < p, torch.full_like(label_ids, self.null_label), label_ids)

    def dependency_mask(self, i: int, j: int, code_shape: tuple[int, int] | None = None) -> Tensor:
        """Bool (h, w): positions whose codes the logits at (i, j) depend on (see layers)."""
        return dependency_mask(i, j, code_shape or self.code_shape, self.num_layers,
                               self.kernel_size)

    # ----------------------------------------------------------------------- forward
    def forward(self, codes: Tensor, labels: Tensor | None = None, validated: bool = False
                ) -> Tensor:
        """codes int (B, h, w) in [0, num_codes), any h, w >= 1; labels int (B,) in
        [0, num_classes] (num_classes = null class) or None (all null; required when
        num_classes == 0) -> logits float (B, num_codes, h, w).

        logits[:, :, i, j] depends only on codes strictly before (i, j) in raster order.
        ``validated``: the values of codes and labels are known to be in range (training on
        code maps checked when read): no host read of them, so no GPU sync.
        """
        codes = self.check_codes(codes, validated=validated)
        label_ids = self.label_index(labels, codes.shape[0], allow_null=True, validated=validated)
        x = self.embed(codes).permute(0, 3, 1, 2).contiguous()  # (B, hidden, h, w)
        v, h = x, x
        skips = None
        for n, block in enumerate(self.blocks):
            cond = None
            if label_ids is not None:
                cond = self.class_embed[n](label_ids)[:, :, None, None]  # (B, 2*hidden, 1, 1)
            v, h, skip = block(v, h, cond)
            skips = skip if skips is None else skips + skip
        return self.head(skips)
