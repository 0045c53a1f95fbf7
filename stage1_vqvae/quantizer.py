"""Vector quantizer: nearest-code lookup with a straight-through gradient.

Two ways to learn the codebook (van den Oord et al. 2017):

- ``ema=True`` (default): codebook vectors are exponential moving averages of the encoder
  outputs assigned to them (appendix A.1 of the paper); only the commitment term
  ``beta * ||z_e - sg(z_q)||^2`` reaches the encoder.
- ``ema=False``: ``codebook_loss = ||sg(z_e) - z_q||^2`` trains the codebook by gradient.

Dead codes (no assignment for ``dead_after`` training steps) are restarted from recent
encoder outputs, and the first training batch initialises the codebook with k-means, so
that every code starts where the data is. Under torch.distributed all statistics are
all-reduced, so every rank holds the same codebook.

Precision: distances, EMA statistics, k-means and restarts run in float32 (or float64
when given it) whatever the autocast state. Under ``--precision *-mixed`` autocast would
run the distance matmul in bf16/fp16 even on float32 inputs and pick codes that are not
the nearest (about 14% of them when the data has an offset), so training, EMA and a later
float32 ``encode`` would disagree.

Host syncs: the training path reads no tensor value on the host (no ``.item()``, boolean
masks, ``nonzero`` or ``bincount``, which sync a GPU) except once, for k-means.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: Tensor) -> Tensor:
    if _dist_on():
        dist.all_reduce(t)
    return t


def _broadcast(t: Tensor) -> Tensor:
    if _dist_on():
        dist.broadcast(t, 0)
    return t


def full_precision(x: Tensor) -> torch.autocast:
    """A context that turns autocast off on ``x``'s device: inside it float32 stays float32
    (autocast re-casts matmuls to bf16/fp16 even when their inputs are float32)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _wide(t: Tensor) -> Tensor:
    """float32, or float64 when given float64 (never narrower than float32)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def code_counts(codes: Tensor, num_codes: int, dtype: torch.dtype = torch.int64) -> Tensor:
    """codes int64 (N,) -> how often each code occurs, (num_codes,) ``dtype``. Unlike
    ``torch.bincount`` (which reads the maximum on the host), no GPU sync."""
    ones = torch.ones(codes.shape, dtype=dtype, device=codes.device)
    return torch.zeros(num_codes, dtype=dtype, device=codes.device).index_add_(0, codes, ones)


def nearest_codes(flat: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codebook row for each row of ``flat``.

    flat (N, D), codebook (K, D) -> int64 (N,) in [0, K). Squared Euclidean distance,
    expanded as ||x||^2 - 2 x.c + ||c||^2 so it costs one matmul, in float32 (float64 if
    either input is) with autocast off. Both sides are first centred on the codebook mean:
    distances do not change, and an offset shared by data and codes no longer eats the
    float32 mantissa in the expansion.
    """
    with full_precision(flat):
        dtype = torch.promote_types(_wide(flat).dtype, _wide(codebook).dtype)
        codebook = codebook.to(dtype)
        centre = codebook.mean(0, keepdim=True)
        x, c = flat.to(dtype) - centre, codebook - centre
        dist_sq = x.pow(2).sum(1, keepdim=True) - 2.0 * x @ c.t() + c.pow(2).sum(1)[None, :]
        return dist_sq.argmin(1)


def _kmeans_pp_seeds(x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """k-means++ seeding: each next seed is a point drawn with probability proportional to
    its squared distance from the nearest seed so far. x (N, D), k <= N -> (k, D)."""
    n = x.shape[0]
    xc = x.detach().float().cpu()
    sq = xc.pow(2).sum(1)
    idx = [int(torch.randint(n, (1,), generator=generator))]
    d2 = (sq - 2 * xc @ xc[idx[0]] + sq[idx[0]]).clamp_(min=0)
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            i = int(torch.multinomial(d2 / total, 1, generator=generator))
        else:  # every point sits on a seed already
            i = int(torch.randint(n, (1,), generator=generator))
        idx.append(i)
        torch.minimum(d2, (sq - 2 * xc @ xc[i] + sq[i]).clamp_(min=0), out=d2)
    return x[torch.tensor(idx, device=x.device)].clone()


def kmeans(x: Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd k-means with k-means++ seeding; x (N, D) -> centroids (k, D).

    When N < k the missing centroids are copies of random points plus small noise.
    """
    with full_precision(x):
        return _kmeans(_wide(x), k, iters, generator)


def _kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator | None) -> Tensor:
    n = x.shape[0]
    centroids = _kmeans_pp_seeds(x, min(n, k), generator)
    if n < k:
        extra = x[torch.randint(n, (k - n,), generator=generator).to(x.device)]
        noise = torch.randn(extra.shape, generator=generator).to(x.device)
        centroids = torch.cat([centroids, extra + 0.01 * x.std() * noise])
    # under DDP every rank seeded from its own batch: start all from rank 0's seeds, so the
    # all-reduced Lloyd steps below move one shared set of centroids over every rank's data
    centroids = _broadcast(centroids.contiguous())
    for _ in range(iters):
        assign = nearest_codes(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = code_counts(assign, k, x.dtype)
        _all_reduce(sums)
        _all_reduce(counts)
        # an empty cluster keeps its centroid
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None],
                                centroids)
    return centroids


class VectorQuantizer(nn.Module):
    """Quantize (B, D, h, w) vectors to the nearest of ``num_codes`` codebook vectors.

    Args:
        num_codes: codebook size K.
        code_dim: vector size D.
        beta: weight of the commitment loss.
        ema: learn the codebook by exponential moving averages (else by gradient).
        decay: EMA decay.
        kmeans_init: initialise the codebook by k-means on the first training batch.
        dead_after: restart a code unused for this many training steps (0 disables).
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        kmeans_init: bool = True,
        dead_after: int = 50,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        self.beta, self.ema, self.decay, self.eps = beta, ema, decay, eps
        self.dead_after = dead_after
        embed = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("codebook", embed)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", embed.clone())
        else:
            self.codebook = nn.Parameter(embed)
        # buffers, not Python attributes, so they are checkpointed and resume is exact.
        # kmeans_pending: True until k-means has set the codebook on a training batch (never
        # True with kmeans_init=False). Checkpoints of vqgen <= 0.1.0 call it "initialized"
        # with the opposite value; runtime.checkpoint.migrate_checkpoint renames it.
        self.register_buffer("kmeans_pending", torch.tensor(bool(kmeans_init)))
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))
        # the host's copy of kmeans_pending, so a training step need not read the buffer
        # (a GPU sync); None = read it once (after a state dict was loaded into the buffer)
        self._pending: bool | None = bool(kmeans_init)
        self.register_load_state_dict_post_hook(_forget_pending)

    def lookup(self, codes: Tensor) -> Tensor:
        """codes int64 (B, h, w) in [0, K) -> z_q float (B, D, h, w)."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2).contiguous()

    def quantize(self, z_e: Tensor) -> Tensor:
        """z_e (B, D, h, w) -> codes int64 (B, h, w). No state changes."""
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        return nearest_codes(flat, self.codebook).view(b, h, w)

    def _kmeans_due(self) -> bool:
        if self._pending is None:
            self._pending = bool(self.kmeans_pending)  # once per load, not per step
        return self._pending

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """z_e (B, D, h, w) -> (z_q with straight-through gradient, codes (B, h, w), losses).

        losses: ``commitment_loss`` (already multiplied by beta), ``codebook_loss`` (zero
        with EMA), ``loss`` (their sum).
        """
        with full_precision(z_e):
            return self._forward(_wide(z_e))

    def _forward(self, z_e: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and self._kmeans_due():
            self._kmeans_init(flat.detach())
        codes = nearest_codes(flat.detach(), self.codebook.detach())
        if self.training and self.ema:
            self._ema_update(flat.detach(), codes)
        z_q = self.lookup(codes.view(b, h, w))
        commitment = F.mse_loss(z_e, z_q.detach())
        if self.ema:
            codebook_loss = torch.zeros((), device=z_e.device)
        else:
            codebook_loss = F.mse_loss(z_q, z_e.detach())
        if self.training and self.dead_after > 0:
            self._restart_dead(flat.detach(), codes)
        # straight-through: forward is z_q, gradient w.r.t. z_e is the identity
        z_st = z_e + (z_q - z_e).detach()
        losses = {
            "commitment_loss": self.beta * commitment,
            "codebook_loss": codebook_loss,
        }
        losses["loss"] = losses["commitment_loss"] + losses["codebook_loss"]
        return z_st, codes.view(b, h, w), losses

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        g = torch.Generator().manual_seed(0)
        centroids = _broadcast(kmeans(flat, self.num_codes, generator=g))
        self.codebook.data.copy_(centroids)
        if self.ema:
            self.ema_sum.copy_(centroids)
            self.ema_count.fill_(1.0)
        self.kmeans_pending.fill_(False)
        self._pending = False

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor) -> None:
        flat = flat.to(self.ema_sum.dtype)
        onehot_sum = torch.zeros_like(self.ema_sum).index_add_(0, codes, flat)
        counts = code_counts(codes, self.num_codes, flat.dtype)
        _all_reduce(onehot_sum)
        _all_reduce(counts)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0
        n = self.ema_count.sum()
        count = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
        self.codebook.copy_(self.ema_sum / count[:, None])

    @torch.no_grad()
    def _restart_dead(self, flat: Tensor, codes: Tensor) -> None:
        # masked tensor ops only: which codes are dead stays on the device (no nonzero, no
        # boolean indexing), so a GPU never waits for the host here
        used = code_counts(codes, self.num_codes, torch.float32)
        _all_reduce(used)
        self.steps_unused.copy_(torch.where(used > 0, 0, self.steps_unused + 1))
        dead = self.steps_unused >= self.dead_after  # (K,) bool
        # every code gets a candidate row of this batch; only dead codes take theirs. The
        # rows come from a hash of (code, state), so restarts are reproducible (resume) and
        # the same on every rank, and rank 0's vectors are broadcast
        pick = _hash_rows(self.steps_unused.sum(), self.num_codes, flat.shape[0])
        new = _broadcast(flat[pick].to(self.codebook.dtype).contiguous())
        self.codebook.data.copy_(torch.where(dead[:, None], new, self.codebook.data))
        if self.ema:
            self.ema_sum.copy_(torch.where(dead[:, None], new, self.ema_sum))
            self.ema_count.masked_fill_(dead, 1.0)
        self.steps_unused.masked_fill_(dead, 0)


def _hash_rows(salt: Tensor, k: int, n: int) -> Tensor:
    """k pseudo-random row indices in [0, n) from a device scalar ``salt`` (int64), on the
    device, without a host sync. Two rounds of a 31-bit LCG with xor-shift mixing; every
    product stays below 2**63."""
    m = 1 << 31
    h = (torch.arange(k, device=salt.device) * 2654435761 + (salt % m) * 40503 + 12345) % m
    for _ in range(2):
        h = (h * 1103515245 + 12345) % m
        h = h ^ (h >> 13)
    return h % n


def _forget_pending(module: VectorQuantizer, incompatible_keys) -> None:
    module._pending = None  # kmeans_pending was just loaded: read it again before training
