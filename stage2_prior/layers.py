"""Causal building blocks of the gated PixelCNN (van den Oord et al. 2016).

Causality comes from padding and shifting alone; no weight is masked or edited, so every
kernel entry is a free parameter and the layers stay plain ``nn.Conv2d``.

Two stacks run side by side over a (B, C, h, w) feature map, with ``s = kernel_size // 2``:

- the **vertical stack** sees a (s + 1) x (2s + 1) window that ends at the current row:
  output (r, c) reads input rows r-s..r, columns c-s..c+s. Its output includes the
  current row, so it is only ever handed to the horizontal stack *shifted down one row*,
  where (r, c) then reads rows < r only.
- the **horizontal stack** sees a 1 x (s + 1) window that ends at the current column:
  output (r, c) reads row r, columns c-s..c ("mask B"). The first layer reads the raw
  code embedding and must not see the current code, so its window is shifted one column
  left: columns c-s-1..c-1 ("mask A").

Because the vertical stack covers columns to the *right* as well as the left of every
row above, the two stacks together have no blind spot. Receptive field of the logits at
(i, j) after ``L`` layers (``R = L * s``), see :func:`dependency_mask`:

- row i: columns j-R-1 .. j-1;
- rows i-1-R .. i-1: columns j-R .. j+R.

What the incremental sampler (``stage2_prior.cached``) relies on: the vertical features of
row r depend only on rows <= r (per layer, on the s rows above plus the current one of
that layer's input), and the horizontal features of (r, c) only on the vertical features
of row r-1 and on columns <= c of row r (per layer, on the s columns to the left plus the
current one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqgen.stage1_vqvae.runtime.errors import UserError


def check_kernel_size(kernel_size: int) -> None:
    """Raise ``ValueError`` unless ``kernel_size`` is an odd int >= 3."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise UserError(f"kernel_size={kernel_size!r} must be an odd int >= 3")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise UserError(f"kernel_size={kernel_size} must be an odd int >= 3")


def down_shift(x: Tensor) -> Tensor:
    """Shift (B, C, h, w) down by one row: row 0 becomes zeros, the last row drops out."""
    return F.pad(x, (0, 0, 1, -1))


def gate(x: Tensor) -> Tensor:
    """Gated unit tanh(a) * sigmoid(b); x (B, 2C, h, w) -> (B, C, h, w), a/b = channel halves."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class VerticalConv(nn.Module):
    """Conv whose output (r, c) reads input rows r-s..r, columns c-s..c+s (s = k // 2).

    (B, in_channels, h, w) -> (B, out_channels, h, w) for any h, w >= 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        self.s = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, (self.s + 1, kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        # pad s rows on top only (nothing below is ever read), s columns on each side
        return self.conv(F.pad(x, (self.s, self.s, self.s, 0)))


class HorizontalConv(nn.Module):
    """Conv along the row: output (r, c) reads row r, columns c-s..c (``include_current``)
    or c-s-1..c-1 (not ``include_current``, the first layer's "mask A"); s = k // 2.

    (B, in_channels, h, w) -> (B, out_channels, h, w) for any h, w >= 1.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, include_current: bool
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        self.s = kernel_size // 2
        self.include_current = include_current
        self.conv = nn.Conv2d(in_channels, out_channels, (1, self.s + 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.include_current:
            return self.conv(F.pad(x, (self.s, 0)))
        # one more zero column on the left and the last column cropped: a right shift by one
        return self.conv(F.pad(x, (self.s + 1, -1)))


class GatedBlock(nn.Module):
    """One gated layer with a vertical and a horizontal stack.

    ``forward(v, h, cond)``: v, h (B, hidden, H, W); cond (B, 2*hidden, 1, 1) or None, the
    class bias added to the gate pre-activations of both stacks. Returns
    (v_out, h_out, skip), each (B, hidden, H, W).

    The horizontal stack gets the vertical features through ``down_shift`` and a 1x1 conv,
    so it sees every row above. Its output has a residual connection, except in the first
    layer, whose input (the code embedding) includes the current code. The last layer has no
    horizontal output (only its skip feeds the head) and returns its input ``h`` there:
    a parameter with no gradient would make DDP fail.
    """

    def __init__(self, hidden: int, kernel_size: int, first: bool, last: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.first, self.last = first, last
        # on the gated horizontal features, before the skip and residual 1x1s (training only:
        # evaluation and sampling, the cached sampler included, see the full network)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.v_conv = VerticalConv(hidden, 2 * hidden, kernel_size)
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.h_conv = HorizontalConv(hidden, 2 * hidden, kernel_size, include_current=not first)
        self.h_out = None if last else nn.Conv2d(hidden, hidden, 1)
        self.skip = nn.Conv2d(hidden, hidden, 1)

    def forward(
        self, v: Tensor, h: Tensor, cond: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        v_feat = self.v_conv(v)
        # the link takes the features before the class bias, so the bias enters h once
        h_pre = self.h_conv(h) + self.v_to_h(down_shift(v_feat))
        if cond is not None:
            v_feat = v_feat + cond
            h_pre = h_pre + cond
        v_out = gate(v_feat)
        h_gated = self.dropout(gate(h_pre))
        skip = self.skip(h_gated)
        if self.h_out is None:
            return v_out, h, skip
        h_out = self.h_out(h_gated)
        if not self.first:
            h_out = h_out + h
        return v_out, h_out, skip


def receptive_extent(num_layers: int, kernel_size: int) -> int:
    """R = num_layers * (kernel_size // 2): how far the receptive field reaches (see module doc)."""
    check_kernel_size(kernel_size)
    return num_layers * (kernel_size // 2)


def dependency_mask(
    i: int, j: int, code_shape: tuple[int, int], num_layers: int, kernel_size: int
) -> Tensor:
    """Bool (h, w): the positions whose codes the logits at (i, j) depend on.

    Strictly before (i, j) in raster order, and within the receptive field of the stacks:
    row i columns j-R-1..j-1, rows i-1-R..i-1 columns j-R..j+R, with R from
    :func:`receptive_extent`. Used by the tests; documents the incremental-sampling window.
    """
    h, w = code_shape
    r = receptive_extent(num_layers, kernel_size)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[i, max(0, j - r - 1) : j] = True
    mask[max(0, i - 1 - r) : i, max(0, j - r) : j + r + 1] = True
    return mask
