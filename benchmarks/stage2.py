"""Stage-two benchmark: runs `vqgen demo` with its defaults, then measures the prior.

Prints one JSON line with at least: demo_wall_s, prior_train_maps_per_s,
val_bits_per_code, unigram_bits_per_code, uniform_bits_per_code, nll_over_unigram,
sample_images_per_s (prior + decode, batch 64), and the grid's path.

    python benchmarks/stage2.py [--out DIR] [--reuse]
    python benchmarks/stage2.py --smoke    # a tiny demo-shaped folder in a temp dir: seconds

``--reuse`` skips the demo run when DIR already holds a finished demo (demo_wall_s is
then null). ``--smoke`` replaces the ``vqgen demo`` child by tiny models of the same layout
(vqvae/, prior/, their done.json; demo_wall_s is the time to train them), trained in this
process in a temp folder (unless --out), and samples 8: a check that the benchmark runs,
its numbers measure nothing. Targets on a 2-core CPU: demo <= 300 s; held-out NLL <= 40%
of the unigram entropy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None,
                    help="demo folder (default checkpoints/bench_demo; smoke: a temp folder)")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--sample-num", type=int, default=None, help="default 64 (smoke 8)")
    ap.add_argument("--smoke", action="store_true", help="tiny models, in-process: checks it runs")
    args = ap.parse_args(argv)
    sample_num = args.sample_num or (8 if args.smoke else 64)
    with tempfile.TemporaryDirectory(prefix="vqgen_stage2_") as tmp:
        default_out = Path(tmp) / "demo" if args.smoke else Path("checkpoints/bench_demo")
        return measure(Path(args.out) if args.out else default_out, args.reuse, sample_num, args.smoke)


def measure(out: Path, reuse: bool, sample_num: int, smoke: bool) -> dict:
    demo_wall = None
    if not (reuse and (out / "prior" / "done.json").is_file()):
        if out.exists():
            import shutil

            shutil.rmtree(out)
        t0 = time.perf_counter()
        if smoke:
            from benchmarks._smoke import tiny_demo

            tiny_demo(out)
        else:
            subprocess.run([sys.executable, "-m", "vqgen.pipeline", "demo", "--out", str(out)],
                           check=True, stdout=subprocess.DEVNULL, env={**os.environ})
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
                       torch.as_tensor(np.array(val_maps.labels)) if val_maps.labels is not None
                       else None)
    uni = pm["baselines"]["unigram_train_entropy_bits_per_code"]
    uni_x = pm["baselines"]["unigram_heldout_cross_entropy_bits_per_code"]
    val_bits = pm["bits_per_code"]

    labels = torch.arange(prior.model.num_classes).repeat_interleave(
        math.ceil(sample_num / max(1, prior.model.num_classes)))[: sample_num]
    sample(prior, vqvae, min(8, sample_num), labels=labels[:8], seed=1)  # warm-up
    t0 = time.perf_counter()
    sample(prior, vqvae, sample_num, labels=labels, seed=0, batch_size=64)
    sample_s = time.perf_counter() - t0

    result = {
        "benchmark": "stage2",
        "smoke": smoke,
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
        "sample_images_per_s": round(sample_num / sample_s, 2),
        "vqvae_val_psnr_db": vinfo.get("val/psnr"),
        "codebook_usage": vinfo.get("val/codebook_usage"),
        "num_codes": k,
        "code_shape": list(prior.code_shape),
        "grid": str(out / "samples" / "grid.png"),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
