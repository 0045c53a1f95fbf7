"""CIFAR-10 from a JPEG folder with the inferred (folder-aware) defaults, as a user would run it.

Needs the 50,000 CIFAR-10 training JPEGs (``../shared/data/cifar10-train-jpeg.tar.gz``)
extracted somewhere outside the repository; not part of the test suite.

    mkdir -p /work/runs/cifar-data && tar -xzf cifar10-train-jpeg.tar.gz -C /work/runs/cifar-data
    OMP_NUM_THREADS=2 python benchmarks/cifar.py --data /work/runs/cifar-data/train \\
        --runs /work/runs/cifar

Steps (each skipped when its output is complete -- RUNS/vq/codes/val/meta.json, a
"checkpoint:" line in RUNS/train_prior.log, RUNS/report/metrics.json -- so an interrupted
benchmark resumes):
1. ``vqgen train-vqvae --data folder:DATA`` with no --preset (channels, size, preset inferred),
   ``--val-fraction 0.1``, ``--max-time`` (default 20 min) and ``--max-epochs`` (default 15:
   what fits 20 minutes on an idle 2-core CPU, ~66 s per epoch; the preset's 50 would stop
   the cosine schedule near its peak when the time budget ends it);
   it writes the code maps of both splits (the encode step) into RUNS/vq/codes;
2. ``vqgen train-prior --codes RUNS/vq/codes`` with its defaults and ``--max-time`` (10 min);
3. ``vqgen evaluate`` (held-out PSNR, SSIM, codebook usage; bits per code vs uniform and
   unigram; class-conditional samples' classifier accuracy, Fréchet distance against the
   real/blurred references, precision/recall).

Prints one JSON object: the inferred settings, wall times and the report's headline numbers.
Target: held-out PSNR >= 25 dB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(argv: list[str], log: Path) -> float:
    """Run ``python -m pipeline ARGV`` with its output in ``log``; returns wall seconds."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "vqgen.pipeline", *argv], check=True, stdout=f,
                       stderr=subprocess.STDOUT, env={**os.environ})
    return round(time.monotonic() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="the extracted train/ folder of class folders")
    ap.add_argument("--runs", required=True, help="output folder for the runs and the report")
    ap.add_argument("--vq-minutes", type=float, default=20.0)
    ap.add_argument("--vq-epochs", type=int, default=15)
    ap.add_argument("--prior-minutes", type=float, default=10.0)
    ap.add_argument("--num-samples", type=int, default=2000)
    args = ap.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    vq, prior, report = runs / "vq", runs / "prior", runs / "report"
    out: dict = {"data": args.data, "threads": os.environ.get("OMP_NUM_THREADS"),
                 "wall_s": {}}

    if not (vq / "codes" / "val" / "meta.json").is_file():
        out["wall_s"]["train_vqvae_and_encode"] = run(
            ["train-vqvae", "--data", f"folder:{args.data}", "--val-fraction", "0.1",
             "--max-time", str(int(args.vq_minutes * 60)), "--max-epochs", str(args.vq_epochs),
             "--out", str(vq), "--overwrite"], runs / "train_vqvae.log")
    out["inferred"] = [ln.strip() for ln in (runs / "train_vqvae.log").read_text().splitlines()
                       if ln.startswith(("folder ", "inferred:", "  because", "note:"))]
    prior_log_path = runs / "train_prior.log"
    if not (prior_log_path.is_file() and "checkpoint:" in prior_log_path.read_text()):
        out["wall_s"]["train_prior"] = run(
            ["train-prior", "--codes", str(vq / "codes"), "--max-time",
             str(int(args.prior_minutes * 60)), "--out", str(prior), "--overwrite"],
            runs / "train_prior.log")
    prior_log = prior_log_path.read_text().splitlines()
    out["prior_inferred"] = [ln for ln in prior_log if ln.startswith(("prior:", "warning:"))]
    out["prior_log_tail"] = prior_log[-3:]
    if not (report / "metrics.json").is_file():
        out["wall_s"]["evaluate"] = run(
            ["evaluate", "--prior", str(prior / "last.ckpt"), "--num-samples",
             str(args.num_samples), "--classifier-cache", str(runs / "classifier_cache"),
             "--out", str(report), "--overwrite"], runs / "evaluate.log")

    m = json.loads((report / "metrics.json").read_text())
    s1, s2, sm = m["stage1"], m["stage2"], m["samples"] or {}
    cond = sm.get("conditional", {})
    out.update({
        "vq_final": [ln for ln in (runs / "train_vqvae.log").read_text().splitlines()
                     if ln.startswith("final:")],
        "heldout_psnr_db": s1["psnr_db"], "heldout_ssim": s1["ssim"],
        "codebook_usage": s1["codebook_usage"], "codes_used": s1["codes_used"],
        "psnr_target_met": s1["psnr_db"] >= 25.0,
        "bits_per_code": s2["bits_per_code"],
        "uniform_bits_per_code": s2["baselines"]["uniform_bits_per_code"],
        "unigram_bits_per_code": s2["baselines"]["unigram_heldout_cross_entropy_bits_per_code"],
        "samples_conditional": {k: v for k, v in cond.items() if k != "per_class_accuracy"},
        "references": sm.get("references"),
        "report": str(report / "index.html"),
    })
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
