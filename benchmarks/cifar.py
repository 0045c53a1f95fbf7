"""CIFAR-10 from a JPEG folder with the inferred (folder-aware) defaults, as a user would run it.

Needs the 50,000 CIFAR-10 training JPEGs (``../shared/data/cifar10-train-jpeg.tar.gz``)
extracted somewhere outside the repository; not part of the test suite.

    mkdir -p /work/runs/cifar-data && tar -xzf cifar10-train-jpeg.tar.gz -C /work/runs/cifar-data
    OMP_NUM_THREADS=2 python benchmarks/cifar.py --data /work/runs/cifar-data/train \\
        --runs /work/runs/cifar
    OMP_NUM_THREADS=1 python benchmarks/cifar.py --smoke    # no data needed: seconds

``--smoke`` needs neither the data nor --runs: it writes 100 colour 32x32 PNGs (mnist5k
digits, tinted per class) in class folders in a temp folder and runs the same three steps
with the same command lines in this process (no child) plus tiny models and batch limits,
and 20 samples: a check that the benchmark runs, its numbers measure nothing.

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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages


def run(argv: list[str], log: Path, in_process: bool = False) -> float:
    """Run ``python -m vqgen.pipeline ARGV`` with its output in ``log``; returns wall seconds.
    ``in_process`` (smoke mode): the same command in this process."""
    t0 = time.monotonic()
    if in_process:
        from benchmarks._smoke import cli

        cli(argv, log)
    else:
        with open(log, "w") as f:
            subprocess.run([sys.executable, "-m", "vqgen.pipeline", *argv], check=True, stdout=f,
                           stderr=subprocess.STDOUT, env={**os.environ})
    return round(time.monotonic() - t0, 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None,
                    help="the extracted train/ folder of class folders (required unless --smoke)")
    ap.add_argument("--runs", default=None,
                    help="output folder for the runs and the report (required unless --smoke)")
    ap.add_argument("--vq-minutes", type=float, default=20.0)
    ap.add_argument("--vq-epochs", type=int, default=15)
    ap.add_argument("--prior-minutes", type=float, default=10.0)
    ap.add_argument("--num-samples", type=int, default=None, help="default 2000 (smoke 20)")
    ap.add_argument("--smoke", action="store_true",
                    help="100 tiny PNGs written here, tiny models, in-process: checks it runs")
    args = ap.parse_args(argv)
    if not args.smoke and (args.data is None or args.runs is None):
        ap.error("--data and --runs are required (or --smoke)")
    args.num_samples = args.num_samples or (20 if args.smoke else 2000)
    with tempfile.TemporaryDirectory(prefix="vqgen_cifar_") as tmp:
        if args.smoke:
            from benchmarks._smoke import digit_folder

            args.data = args.data or str(digit_folder(Path(tmp) / "data" / "train", 10, size=32,
                                                      rgb=True))
            args.runs = args.runs or str(Path(tmp) / "runs")
        return run_steps(args)


def run_steps(args: argparse.Namespace) -> dict:
    """The three steps (each skipped when its output is complete) and the JSON."""
    smoke = args.smoke
    vq_extra, prior_extra = [], []
    if smoke:
        from benchmarks._smoke import TINY_PRIOR, TINY_VQVAE_MODEL, TINY_VQVAE_TRAIN

        vq_extra = [*TINY_VQVAE_MODEL, *TINY_VQVAE_TRAIN, "--num-workers", "0", "--device", "cpu"]
        prior_extra = TINY_PRIOR
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    vq, prior, report = runs / "vq", runs / "prior", runs / "report"
    out: dict = {"benchmark": "cifar", "smoke": smoke, "data": args.data,
                 "threads": os.environ.get("OMP_NUM_THREADS"), "wall_s": {}}

    if not (vq / "codes" / "val" / "meta.json").is_file():
        out["wall_s"]["train_vqvae_and_encode"] = run(
            ["train-vqvae", "--data", f"folder:{args.data}", "--val-fraction", "0.1",
             "--max-time", str(int(args.vq_minutes * 60)), "--max-epochs", str(args.vq_epochs),
             "--out", str(vq), "--overwrite", *vq_extra], runs / "train_vqvae.log", smoke)
    out["inferred"] = [ln.strip() for ln in (runs / "train_vqvae.log").read_text().splitlines()
                       if ln.startswith(("folder ", "inferred:", "  because", "note:"))]
    prior_log_path = runs / "train_prior.log"
    if not (prior_log_path.is_file() and "checkpoint:" in prior_log_path.read_text()):
        out["wall_s"]["train_prior"] = run(
            ["train-prior", "--codes", str(vq / "codes"), "--max-time",
             str(int(args.prior_minutes * 60)), "--out", str(prior), "--overwrite", *prior_extra],
            runs / "train_prior.log", smoke)
    prior_log = prior_log_path.read_text().splitlines()
    out["prior_inferred"] = [ln for ln in prior_log if ln.startswith(("prior:", "warning:"))]
    out["prior_log_tail"] = prior_log[-3:]
    if not (report / "metrics.json").is_file():
        out["wall_s"]["evaluate"] = run(
            ["evaluate", "--prior", str(prior / "last.ckpt"), "--num-samples",
             str(args.num_samples), "--classifier-cache", str(runs / "classifier_cache"),
             "--out", str(report), "--overwrite", *(["--device", "cpu"] if smoke else [])],
            runs / "evaluate.log", smoke)

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
    return out


if __name__ == "__main__":
    main()
