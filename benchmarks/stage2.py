"""Stage-two benchmark: runs `vqgen demo` with its defaults, then measures the prior.

Prints one JSON line with at least: demo_wall_s, prior_train_maps_per_s,
val_bits_per_code, unigram_bits_per_code, uniform_bits_per_code, nll_over_unigram,
sample_images_per_s (prior + decode, batch 64), and the grid's path.

    python benchmarks/stage2.py [--out DIR] [--reuse]

``--reuse`` skips the demo run when DIR already holds a finished demo (demo_wall_s is
then null). Targets on a 2-core CPU: demo <= 300 s; held-out NLL <= 40% of the unigram
entropy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="checkpoints/bench_demo")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--sample-num", type=int, default=64)
    args = ap.parse_args()
    out = Path(args.out)

    demo_wall = None
    if not (args.reuse and (out / "prior" / "done.json").is_file()):
        if out.exists():
            import shutil

            shutil.rmtree(out)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vqgen.pipeline", "demo", "--out", str(out)], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ})
        demo_wall = time.perf_counter() - t0

    from vqgen.pipeline.generate import load_pair, sample
    from vqgen.stage1_vqvae.codes import read_code_maps

    prior, vqvae = load_pair(out / "prior" / "last.ckpt")
    pinfo = json.loads((out / "prior" / "done.json").read_text())
    vinfo = json.loads((out / "vqvae" / "done.json").read_text())
    ckpt = torch.load(out / "prior" / "last.ckpt", weights_only=True)
    maps_seen = int(ckpt["global_step"]) * int(prior.hparams.batch_size)

    # the baselines come from the same function as `vqgen evaluate`'s report
    from vqgen.pipeline.evaluation.stage2 import prior_metrics

    train = np.asarray(read_code_maps(out / "vqvae" / "codes" / "train").codes)
    val_maps = read_code_maps(out / "vqvae" / "codes" / "val")
    k = prior.num_codes
    pm = prior_metrics(prior, train, np.asarray(val_maps.codes),
                       torch.as_tensor(np.asarray(val_maps.labels)) if val_maps.labels is not None
                       else None)
    uni = pm["baselines"]["unigram_train_entropy_bits_per_code"]
    uni_x = pm["baselines"]["unigram_heldout_cross_entropy_bits_per_code"]
    val_bits = pm["bits_per_code"]

    labels = torch.arange(prior.model.num_classes).repeat_interleave(
        math.ceil(args.sample_num / max(1, prior.model.num_classes)))[: args.sample_num]
    sample(prior, vqvae, 8, labels=labels[:8], seed=1)  # warm-up
    t0 = time.perf_counter()
    sample(prior, vqvae, args.sample_num, labels=labels, seed=0, batch_size=64)
    sample_s = time.perf_counter() - t0

    print(json.dumps({
        "benchmark": "stage2",
        "demo_wall_s": None if demo_wall is None else round(demo_wall, 1),
        "vqvae_stage_s": vinfo.get("seconds"),
        "prior_stage_s": pinfo.get("seconds"),
        "prior_train_maps_per_s": round(maps_seen / float(pinfo["seconds"]), 1),
        "val_nll_nats": round(float(pinfo["val/nll"]), 4),
        "val_bits_per_code": round(val_bits, 4),
        "unigram_bits_per_code": round(uni, 4),
        "unigram_val_xent_bits": round(uni_x, 4),
        "uniform_bits_per_code": round(math.log2(k), 4),
        "nll_over_unigram": round(val_bits / uni, 4),
        "sample_images_per_s": round(args.sample_num / sample_s, 2),
        "vqvae_val_psnr_db": vinfo.get("val/psnr"),
        "codebook_usage": vinfo.get("val/codebook_usage"),
        "num_codes": k,
        "code_shape": list(prior.code_shape),
        "grid": str(out / "samples" / "grid.png"),
        "torch_threads": torch.get_num_threads(),
    }), flush=True)


if __name__ == "__main__":
    main()
