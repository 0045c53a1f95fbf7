"""Cached incremental activations of ``GatedPixelCNN`` (the machinery of the default sampler).

The naive sampler runs the whole network once per position: h*w forward passes per grid,
nearly all of it recomputing activations that did not change. Following the idea of
Ramachandran et al. 2017 ("Fast Generation for Convolutional Autoregressive Models"), this
sampler keeps, per layer, exactly the activations later positions read, and computes each
activation once (about one forward pass of work per grid):

- **vertical stack, once per row.** When row i starts, row i-1 is complete, so the vertical
  features of row i-1 are computed for every layer at once: the layer's own (s+1, k)
  kernel, as one matmul (im2col), over a window holding that layer's input for rows
  i-1-s..i-1, zero padded like the full conv (``F.conv2d`` on such thin slices costs ~10x
  more per call on CPU). The window is all a layer keeps of the rows above. Row i-1's
  vertical features reach the horizontal stack of row i only through ``v_to_h``, so that
  projection (plus the horizontal conv's bias and the class bias) is stored per row as
  ``v_part[n]`` (B, w, 2*hidden).
- **horizontal stack, position by position.** Each layer keeps its input for the current
  row in a left-zero-padded buffer (B, pad + w, hidden), channels last. At (i, j) layer n
  reads its s+1 column window (one view, one ``addmm`` with the (1, s+1) kernel laid out
  as a matrix), adds ``v_part[n][:, j]``, gates, and writes its output (plus the residual)
  into column j of layer n+1's buffer. Layer 0's buffer holds the code embeddings of the
  row, shifted one column (its "mask A" window ends at j-1). The gated outputs of all
  layers go to one (B, L*hidden) buffer; the skip sum is a single matmul with the stacked
  skip weights, then the head as two matmuls. With a batch of one grid these products are
  matrix-vector products (``addmv``), which stream the weights ~2x faster than a one-row
  ``addmm``; a single grid is bound by that weight traffic (every position reads every
  horizontal, skip and head weight once), a batch amortises it.

Position (i, j)'s horizontal activations do not depend on the code at (i, j), so the code
is drawn after they are computed and its embedding written into layer 0's buffer for
column j+1. Everything lives in local tensors of one call (nothing is kept on the model),
so no state leaks between calls and memory is released when the call returns.

Exactness: the arithmetic is that of the full forward pass, regrouped (slice convs and
matmuls instead of whole-grid convs, the skip sum in one matmul), so logits agree with
``forward`` to float rounding (~1e-6 relative), not bit for bit. Drawing uses the very same
calls as the naive sampler (``filter_logits``, ``softmax``, one ``torch.multinomial(probs,
1, generator)`` of the same shape per drawn position, in the same order), so both consume
the generator identically and give the same grids unless a draw falls within rounding of
a boundary: two codes whose sampling scores (torch draws one sample as the argmax of
``probs / Exponential(1)`` noise) tie to ~1e-7, or a top-p / top-k cut-off that sits on
a float tie. The logits differ by ~1e-7, so such a flip has a probability of the order
of 1e-7 per draw: the tests' configurations match exactly, and a rare flip would still be
a correct sample from the same distribution, just not the naive sampler's one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vqgen.stage2_prior.model import GatedPixelCNN


def _per_position(weight: Tensor, vec: bool) -> Tensor:
    """An (out, in) matrix as the per-position products take it: itself for ``addmv``
    (batch 1), its transpose (a view) as ``addmm``'s second operand."""
    return weight if vec else weight.t()


class IncrementalState:
    """The cached activations of one batch of grids being generated in raster order.

    ``labels`` int64 (B,) in [0, num_classes] or None (unconditional model); B is the batch
    the network runs on (2*num with classifier-free guidance). Usage, for every row i::

        state.begin_row(i, codes_of_row_i_minus_1)   # (B, w) int64; None for row 0
        for j in ...:                                  # 0, 1, 2, ... without gaps
            state.step(j)                              # horizontal stack at (i, j)
            logits = state.logits()                    # (B, K), only where needed
            state.set_code(j, code)                    # (B,) int64, before step(j + 1)

    Weights are read from ``model`` when the state is built (views, except the horizontal
    kernels, copied into matrix layout); the state must not outlive a change of the
    weights. Run it under ``torch.no_grad()`` or ``torch.inference_mode()`` (it writes into
    its buffers with ``out=``, which autograd refuses).
    """

    def __init__(self, model: GatedPixelCNN, labels: Tensor | None, batch: int,
                 width: int) -> None:
        hid = model.hidden
        s = model.kernel_size // 2
        weight = model.embed.weight
        dt, dev = weight.dtype, weight.device
        self.model = model
        self.batch, self.width, self.hid, self.s = batch, width, hid, s
        self.num_layers = nl = model.num_layers
        self.embed_w = weight

        # batch 1 runs matrix-vector products (addmv) on 1-D views: with the weights in L3
        # rather than L2, MKL's gemm with one row is ~2x slower than its gemv
        self.vec = vec = batch == 1
        # per layer, named after the GatedBlock module each comes from
        self.v_conv_w, self.v_conv_b, self.v_to_h_w = [], [], []
        self.h_conv_w, self.h_out_w, self.h_out_b = [], [], []
        self.cond: list[Tensor | None] = []
        self.v_part_bias: list[Tensor] = []
        for n, block in enumerate(model.blocks):
            # (2H, H, s+1, k) viewed as (H*(s+1)*k, 2H): rows ordered (channel, row, column)
            self.v_conv_w.append(block.v_conv.conv.weight.reshape(2 * hid, -1).t())
            self.v_conv_b.append(block.v_conv.conv.bias)
            self.v_to_h_w.append(block.v_to_h.weight[:, :, 0, 0].t())  # (2H in, 2H out)
            # (2H, H, 1, s+1) -> (2H, (s+1)*H) contiguous, columns ordered (column offset,
            # channel) to match a flattened (s+1, H) window of a channels-last buffer.
            # Per-position matrices are kept (out, in) contiguous: addmv takes them as they
            # are, addmm their transpose (also the faster layout for gemm with few rows)
            hw = block.h_conv.conv.weight[:, :, 0, :].permute(0, 2, 1)
            self.h_conv_w.append(_per_position(hw.reshape(2 * hid, (s + 1) * hid), vec))
            last = block.h_out is None  # the last layer has no horizontal output
            self.h_out_w.append(
                None if last else _per_position(block.h_out.weight[:, :, 0, 0], vec))
            self.h_out_b.append(None if last else block.h_out.bias)
            cond = None
            if labels is not None:
                cond = model.class_embed[n](labels)  # (B, 2H)
            self.cond.append(cond)
            bias = block.v_to_h.bias + block.h_conv.conv.bias  # (2H,)
            self.v_part_bias.append(bias if cond is None else bias + cond)  # (2H,) or (B, 2H)
        skip_w = torch.cat([b.skip.weight[:, :, 0, 0] for b in model.blocks], 1)  # (H, L*H)
        self.skip_w = _per_position(skip_w, vec)
        self.skip_b = torch.stack([b.skip.bias for b in model.blocks]).sum(0)
        head1, head2 = model.head[1], model.head[3]
        self.head1_w, self.head1_b = _per_position(head1.weight[:, :, 0, 0], vec), head1.bias
        self.head2_w, self.head2_b = _per_position(head2.weight[:, :, 0, 0], vec), head2.bias

        # vertical: each layer's input for the s+1 rows ending at the last finished row,
        # channels last, zero padded by s columns on both sides (as the full conv is)
        self.v_win = [torch.zeros(batch, s + 1, width + 2 * s, hid, dtype=dt, device=dev)
                      for _ in range(nl)]
        # horizontal: each layer's input for the current row, channels last, left padded;
        # layer 0 (the embeddings, "mask A") by s+1 columns, the others by s
        self.h_in = [torch.zeros(batch, width + s + (n == 0), hid, dtype=dt, device=dev)
                     for n in range(nl)]
        # views made once (at batch 1 the per-op dispatch cost matters), without the batch
        # dimension when vec. Per layer and column j: the (B, (s+1)*H) window read at j,
        # and the (B, H) column where the layer's input at j sits (its residual, and the
        # target its writer, the layer below, fills in place)
        sel = (lambda t: t[0]) if vec else (lambda t: t)
        self.h_win = [[sel(buf[:, j : j + s + 1].reshape(batch, (s + 1) * hid))
                       for j in range(width)] for buf in self.h_in]
        self.h_col = [[sel(buf[:, j + s]) for j in range(width)] for buf in self.h_in]
        self.embed_col = [self.h_in[0][:, j + s + 1] for j in range(width - 1)]
        # the gated outputs of all layers at the current position, for the skip sum
        gated = torch.empty(batch, nl * hid, dtype=dt, device=dev)
        self.gated = sel(gated)
        self.gated_part = [sel(gated[:, n * hid : (n + 1) * hid]) for n in range(nl)]
        # gate pre-activations of the current position and views of their two halves
        pre = torch.empty(batch, 2 * hid, dtype=dt, device=dev)
        self.pre, self.pre_a, self.pre_b = sel(pre), sel(pre[:, :hid]), sel(pre[:, hid:])
        self.v_part: list[list[Tensor]] = []

    # ------------------------------------------------------------------ vertical stack
    def begin_row(self, i: int, prev_codes: Tensor | None) -> None:
        """Start row i: run the vertical stack of row i-1 (its codes ``prev_codes`` (B, w)
        int64, complete) through all layers; None for row 0, where every vertical input of
        the horizontal stack is the zero row of ``down_shift``."""
        w, s = self.width, self.s
        self.v_part = []
        if i == 0:
            assert prev_codes is None
            # down_shift feeds zeros to v_to_h: only the biases (and the class) remain
            self.v_part = [[bias.reshape(-1) if self.vec else bias] * w
                           for bias in self.v_part_bias]
            return
        assert prev_codes is not None and tuple(prev_codes.shape) == (self.batch, w)
        bsz, hid, k = self.batch, self.hid, 2 * s + 1
        x = F.embedding(prev_codes, self.embed_w)  # (B, w, H): layer 0's input row
        last = self.num_layers - 1
        for n in range(self.num_layers):
            row = F.pad(x, (0, 0, s, s)).unsqueeze(1)  # (B, 1, w + 2s, H)
            win = torch.cat([self.v_win[n][:, 1:], row], dim=1)  # rows i-1-s .. i-1
            self.v_win[n] = win
            # im2col: (B, s+1, w, H, k) view -> (B*w, H*(s+1)*k) in the weight's order
            cols = win.unfold(2, k, 1).permute(0, 2, 3, 1, 4).reshape(bsz * w, -1)
            v_feat = torch.addmm(self.v_conv_b[n], cols, self.v_conv_w[n]).view(bsz, w, 2 * hid)
            part = torch.matmul(v_feat, self.v_to_h_w[n])  # (B, w, 2H)
            bias = self.v_part_bias[n]
            part = part + (bias if bias.dim() == 1 else bias[:, None, :])
            self.v_part.append(part[0].unbind(0) if self.vec else part.unbind(1))
            if n < last:
                cond = self.cond[n]
                if cond is not None:
                    v_feat = v_feat + cond[:, None, :]
                x = torch.tanh(v_feat[..., :hid]) * torch.sigmoid(v_feat[..., hid:])

    # ---------------------------------------------------------------- horizontal stack
    def step(self, j: int) -> None:
        """Run the horizontal stack of every layer at column j of the current row (columns
        < j done, the codes before j set); fills the gated outputs used by ``logits``."""
        pre, pre_a, pre_b = self.pre, self.pre_a, self.pre_b
        v_part, h_win, h_conv_w, h_col = self.v_part, self.h_win, self.h_conv_w, self.h_col
        h_out_w, h_out_b, gated_part = self.h_out_w, self.h_out_b, self.gated_part
        last = self.num_layers - 1
        if self.vec:
            for n in range(self.num_layers):
                torch.addmv(v_part[n][j], h_conv_w[n], h_win[n][j], out=pre)  # (2H,)
                g = gated_part[n]
                torch.mul(torch.tanh(pre_a), torch.sigmoid(pre_b), out=g)
                if n < last:
                    # layer n's output at j is layer n+1's input there: written in place
                    out = torch.addmv(h_out_b[n], h_out_w[n], g, out=h_col[n + 1][j])
                    if n > 0:
                        out.add_(h_col[n][j])  # residual
            return
        for n in range(self.num_layers):
            torch.addmm(v_part[n][j], h_win[n][j], h_conv_w[n], out=pre)  # (B, 2H)
            g = gated_part[n]
            torch.mul(torch.tanh(pre_a), torch.sigmoid(pre_b), out=g)
            if n < last:
                out = torch.addmm(h_out_b[n], g, h_out_w[n], out=h_col[n + 1][j])
                if n > 0:
                    out.add_(h_col[n][j])

    def logits(self) -> Tensor:
        """Logits (B, K) at the position of the last ``step``: skip sum -> ReLU -> head."""
        if self.vec:
            skips = torch.addmv(self.skip_b, self.skip_w, self.gated).relu_()
            hidden = torch.addmv(self.head1_b, self.head1_w, skips).relu_()
            return torch.addmv(self.head2_b, self.head2_w, hidden).unsqueeze(0)
        skips = torch.addmm(self.skip_b, self.gated, self.skip_w).relu_()
        hidden = torch.addmm(self.head1_b, skips, self.head1_w).relu_()
        return torch.addmm(self.head2_b, hidden, self.head2_w)

    def set_code(self, j: int, codes: Tensor) -> None:
        """Codes int64 (B,) at column j of the current row: layer 0 reads them from j+1 on."""
        if j < self.width - 1:
            self.embed_col[j].copy_(F.embedding(codes, self.embed_w))


@torch.no_grad()
def scan_codes(model: GatedPixelCNN, label_ids: Tensor | None, batch: int, code_shape: tuple[int, int],
               pick: Callable[[int, int, Tensor], Tensor]) -> Tensor:
    """Walk ``batch`` grids of ``code_shape`` (h, w) in raster order through the cached
    machinery; at each position (i, j), ``pick(i, j, logits)`` gets the logits (B, K) given
    the codes so far and returns that position's codes (B,) int64: the known ones
    (teacher forcing, an entropy encoder) or new ones (an entropy decoder). Returns the
    codes (B, h, w). label_ids: int64 (B,) in [0, num_classes] or None (unconditional model).

    The sequence of operations depends only on the model, ``label_ids``'s presence and the
    batch size, never on the codes' values, so an encoder and a decoder calling this
    with the same batch see bit-identical logits on the same device."""
    h, w = code_shape
    state = IncrementalState(model, label_ids, batch, w)
    codes = torch.empty(batch, h, w, dtype=torch.long, device=model.embed.weight.device)
    for i in range(h):
        state.begin_row(i, codes[:, i - 1] if i else None)
        for j in range(w):
            state.step(j)
            codes[:, i, j] = pick(i, j, state.logits())
            state.set_code(j, codes[:, i, j])
    return codes


@torch.no_grad()
def incremental_logits(model: GatedPixelCNN, codes: Tensor, labels: Tensor | None = None
                       ) -> Tensor:
    """Logits (B, K, h, w) of ``codes`` int (B, h, w) computed by the cached machinery,
    position by position (teacher forcing); equals ``model(codes, labels)`` to float
    rounding. labels as in ``forward`` ([0, num_classes], None = null class)."""
    codes = model.check_codes(codes)
    b, h, w = codes.shape
    label_ids = model.label_index(labels, b, allow_null=True)
    out = torch.empty(b, model.num_codes, h, w, dtype=model.embed.weight.dtype,
                      device=codes.device)

    def pick(i: int, j: int, logits: Tensor) -> Tensor:
        out[:, :, i, j] = logits
        return codes[:, i, j]

    scan_codes(model, label_ids, b, (h, w), pick)
    return out
