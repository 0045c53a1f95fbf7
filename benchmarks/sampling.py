"""Sampling speed of the gated PixelCNN prior: one forward pass vs naive vs cached sampling.

Prints one JSON object per (grid, batch) line, with at least: grid, batch, forward_s,
naive_s, cached_s, cached_over_forward (the cost of cached sampling in forward passes),
naive_over_cached (the speed-up), naive_extrapolated, same_grids (naive and cached drew
identical codes with the same seed), threads.

    python benchmarks/sampling.py [--grids 7x7,8x8,16x16] [--batches 1,64] [--threads N]
                                  [--naive-max-positions P]
    python benchmarks/sampling.py --smoke    # tiny models, one 4x4 grid at batch 2: a second

The model is the default ``GatedPixelCNN`` config (K=256, hidden 128, 12 layers, kernel 3,
head 256), randomly initialised (timings do not depend on the weights). The naive sampler
runs one full forward pass per position; with more than P positions it is timed on the
first P (the rest kept via prefix/known, which the naive sampler skips without a forward)
and scaled by h*w / P (``naive_extrapolated: true``); its cost per position is constant,
so this is a linear extrapolation of a linear cost. Everything runs under
``torch.inference_mode``. Targets: cached/forward <= 3; naive/cached >= 15 at 7x7 batch 64.
Decoding (stage one) is timed apart (decode_s, with the default MNIST-preset VQ-VAE) and only
enters images_per_s. ``--smoke`` swaps in tiny models (hidden 16, 2 layers) and one small
grid, timed once: a check that the benchmark runs, its numbers measure nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.model import GatedPixelCNN  # noqa: E402
from vqgen.stage2_prior.sampling import sample  # noqa: E402

# --smoke: tiny prior and decoder, one pass of everything
SMOKE_PRIOR = dict(hidden=16, num_layers=2, head_hidden=16)
SMOKE_VQVAE = dict(hidden=16, res_hidden=8, num_res=1, code_dim=8)


def timed(fn, budget_s: float = 1.5, max_reps: int = 5) -> float:
    """Median wall time of fn() over repeats: at least one, more while under budget_s."""
    times: list[float] = []
    while not times or (sum(times) < budget_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def parse_grid(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def bench(grid: tuple[int, int], batch: int, naive_max_positions: int, seed: int,
          smoke: bool = False) -> dict:
    h, w = grid
    torch.manual_seed(seed)
    # default hidden/layers/kernel/head (tiny ones in smoke mode)
    model = GatedPixelCNN(256, grid, **(SMOKE_PRIOR if smoke else {})).eval()
    reps = dict(budget_s=0.0, max_reps=1) if smoke else {}
    nn.init.normal_(model.head[-1].weight, std=0.05)  # non-uniform logits, like a trained model
    codes = torch.randint(0, model.num_codes, (batch, h, w))

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    positions = h * w
    p = min(positions, naive_max_positions)
    extrapolated = p < positions
    if extrapolated:
        # draw only the first p raster positions; the rest are kept (zeros), no forward
        mask = (torch.arange(positions) >= p).view(h, w)
        part = dict(prefix=torch.zeros(batch, h, w, dtype=torch.long), known=mask)
    else:
        part = {}

    with torch.inference_mode():
        model(codes)  # warm-up
        forward_s = timed(lambda: model(codes), **reps)
        sample(model, batch, generator=gen(), sampler="cached")  # warm-up
        cached_out: list[torch.Tensor] = []
        cached_s = timed(lambda: cached_out.append(sample(model, batch, generator=gen())), **reps)
        t0 = time.perf_counter()
        naive = sample(model, batch, generator=gen(), sampler="naive", **part)
        naive_s = (time.perf_counter() - t0) * positions / p
        same = sample(model, batch, generator=gen(), **part) if extrapolated else cached_out[0]
        # decoding with the default MNIST-preset VQ-VAE (4x up-sampling), for images/s
        vqvae = VQVAE(image_size=(4 * h, 4 * w), num_codes=256, **(SMOKE_VQVAE if smoke else {})).eval()
        vqvae.decode_codes(codes)  # warm-up
        decode_s = timed(lambda: vqvae.decode_codes(codes), **reps)
    return {
        "benchmark": "sampling",
        "smoke": smoke,
        "grid": f"{h}x{w}",
        "batch": batch,
        "forward_s": round(forward_s, 5),
        "naive_s": round(naive_s, 4),
        "cached_s": round(cached_s, 5),
        "cached_over_forward": round(cached_s / forward_s, 2),
        "naive_over_cached": round(naive_s / cached_s, 1),
        "naive_extrapolated": extrapolated,
        "naive_positions_timed": p,
        "same_grids": bool(torch.equal(naive, same)),
        "cached_grids_per_s": round(batch / cached_s, 1),
        "decode_s": round(decode_s, 5),
        "images_per_s": round(batch / (cached_s + decode_s), 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    """One JSON line per (grid, batch); returns the last one."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", default=None, help="HxW list (default 7x7,8x8,16x16; smoke 4x4)")
    ap.add_argument("--batches", default=None, help="default 1,64 (smoke 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: $OMP_NUM_THREADS, else torch's default)")
    ap.add_argument("--naive-max-positions", type=int, default=None,
                    help="time naive sampling over at most this many positions, extrapolate "
                    "(default 64; smoke 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny models, one small grid: checks it runs")
    args = ap.parse_args(argv)
    grids = args.grids or ("4x4" if args.smoke else "7x7,8x8,16x16")
    batches = args.batches or ("2" if args.smoke else "1,64")
    naive_max = args.naive_max_positions if args.naive_max_positions is not None else (
        8 if args.smoke else 64)
    if naive_max < 1:
        ap.error("--naive-max-positions must be >= 1")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or torch.get_num_threads()
    torch.set_num_threads(threads)
    row: dict = {}
    for grid in (parse_grid(g) for g in grids.split(",")):
        for batch in (int(b) for b in batches.split(",")):
            row = bench(grid, batch, naive_max, args.seed, smoke=args.smoke)
            print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
