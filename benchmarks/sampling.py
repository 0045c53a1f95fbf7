"""Sampling speed of the gated PixelCNN prior: one forward pass vs naive vs cached sampling.

Prints one JSON object per (grid, batch) line, with at least: grid, batch, forward_s,
naive_s, cached_s, cached_over_forward (the cost of cached sampling in forward passes),
naive_over_cached (the speed-up), naive_extrapolated, same_grids (naive and cached drew
identical codes with the same seed), threads.

    python benchmarks/sampling.py [--grids 7x7,8x8,16x16] [--batches 1,64] [--threads N]
                                  [--naive-max-positions P]

The model is the default ``GatedPixelCNN`` config (K=256, hidden 128, 12 layers, kernel 3,
head 256), randomly initialised (timings do not depend on the weights). The naive sampler
runs one full forward pass per position; with more than P positions it is timed on the
first P (the rest kept via prefix/mask, which the naive sampler skips without a forward)
and scaled by h*w / P (``naive_extrapolated: true``); its cost per position is constant,
so this is a linear extrapolation of a linear cost. Everything runs under
``torch.inference_mode``. Targets: cached/forward <= 3; naive/cached >= 15 at 7x7 batch 64.
Decoding (stage one) is not included: this measures the prior only.
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


def bench(grid: tuple[int, int], batch: int, naive_max_positions: int, seed: int) -> dict:
    h, w = grid
    torch.manual_seed(seed)
    model = GatedPixelCNN(256, grid).eval()  # default hidden/layers/kernel/head
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
        part = dict(prefix=torch.zeros(batch, h, w, dtype=torch.long), mask=mask)
    else:
        part = {}

    with torch.inference_mode():
        model(codes)  # warm-up
        forward_s = timed(lambda: model(codes))
        sample(model, batch, generator=gen(), sampler="cached")  # warm-up
        cached_out: list[torch.Tensor] = []
        cached_s = timed(lambda: cached_out.append(sample(model, batch, generator=gen())))
        t0 = time.perf_counter()
        naive = sample(model, batch, generator=gen(), sampler="naive", **part)
        naive_s = (time.perf_counter() - t0) * positions / p
        same = sample(model, batch, generator=gen(), **part) if extrapolated else cached_out[0]
        # decoding with the default MNIST-preset VQ-VAE (4x up-sampling), for images/s
        vqvae = VQVAE(image_size=(4 * h, 4 * w), num_codes=256).eval()
        vqvae.decode_codes(codes)  # warm-up
        decode_s = timed(lambda: vqvae.decode_codes(codes))
    return {
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", default="7x7,8x8,16x16")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: $OMP_NUM_THREADS, else torch's default)")
    ap.add_argument("--naive-max-positions", type=int, default=64,
                    help="time naive sampling over at most this many positions, extrapolate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.naive_max_positions < 1:
        ap.error("--naive-max-positions must be >= 1")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or torch.get_num_threads()
    torch.set_num_threads(threads)
    for grid in (parse_grid(g) for g in args.grids.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            print(json.dumps(bench(grid, batch, args.naive_max_positions, args.seed)), flush=True)


if __name__ == "__main__":
    main()
