"""Peak memory of ``vqgen train-prior`` against the number of code maps (flat is the target).

Writes code-map folders of N training maps (8x8, K=512, 10 classes; 1,000 random maps
repeated) plus a fixed 5,000-map val split with stage one's CodeMapWriter, then runs a
short ``vqgen train-prior`` (``--max-steps``) on each in a child process and reads the
child's peak RSS from os.wait4. ``--repo`` runs another checkout's code (e.g. the main
branch before a change) on the same folders.

    python benchmarks/prior_memory.py [--sizes 50000,500000] [--steps 20] [--repo DIR ...]
    python benchmarks/prior_memory.py --smoke    # 2,000 maps, a tiny prior, 2 steps: seconds

Prints one JSON line: for each repo and size, maps, codes_file_mb, wall_s, peak_rss_mb.
``--smoke`` writes 2,000 training and 200 val maps, trains a tiny prior (hidden 8, 2 layers,
batch 16) for 2 steps and runs the same ``vqgen train-prior`` command line in this process
(no child: its peak_rss_mb is this process's; no --repo): a check that the benchmark runs,
its numbers measure nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages
K, GRID, CLASSES, VAL = 512, (8, 8), 10, 5000
SMOKE_VAL = 200
SMOKE_PRIOR = ["--hidden", "8", "--num-layers", "2", "--head-hidden", "16", "--batch-size", "16"]


def write_split(folder: Path, n: int, seed: int) -> None:
    from vqgen.stage1_vqvae.codes import CodeMapWriter

    rng = np.random.default_rng(seed)
    base = rng.integers(0, K, (1000, *GRID)).astype(np.uint16)
    base_labels = rng.integers(0, CLASSES, 1000).astype(np.int64)
    meta = dict(num_classes=CLASSES, class_names=[str(c) for c in range(CLASSES)],
                source="benchmarks/prior_memory.py", vqvae_checkpoint=None, vqvae_sha256=None)
    with CodeMapWriter(folder, count=n, code_shape=GRID, num_codes=K, has_labels=True,
                       meta=meta) as w:
        for s in range(0, n, 1000):
            b = min(1000, n - s)
            w.write(base[:b], base_labels[:b])


def run_prior(repo: Path, codes: Path, out: Path, steps: int, smoke: bool = False) -> dict:
    """One ``vqgen train-prior`` child in ``repo``; its wall time and peak RSS (from wait4).
    ``smoke``: a tiny prior, the command run in this process (this process's peak RSS)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "vqgen.pipeline", "train-prior", "--codes", str(codes), "--out",
           str(out), "--max-steps", str(steps), "--limit-val-batches", "2", "--accelerator",
           "cpu", "--num-workers", "0", "--overwrite", "--checkpoint-every-minutes", "0",
           *(SMOKE_PRIOR if smoke else [])]
    t0 = time.perf_counter()
    if smoke:
        from benchmarks._smoke import cli

        cli(cmd[3:])
        return {"wall_s": round(time.perf_counter() - t0, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    log = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"train-prior failed in {repo}:\n{log[-3000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # Linux: KiB


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help="default 50000,500000 (smoke 2000)")
    ap.add_argument("--steps", type=int, default=None, help="default 20 (smoke 2)")
    ap.add_argument("--repo", action="append", default=None,
                    help="checkout whose code runs (repeatable; default this one)")
    ap.add_argument("--smoke", action="store_true", help="2,000 maps, a tiny prior: checks it runs")
    args = ap.parse_args(argv)
    smoke = args.smoke
    if smoke and args.repo:
        ap.error("--smoke runs this checkout in this process: no --repo")
    sizes = args.sizes or ("2000" if smoke else "50000,500000")
    steps = args.steps or (2 if smoke else 20)
    val = SMOKE_VAL if smoke else VAL
    repos = [Path(r).resolve() for r in (args.repo or [str(ROOT)])]
    tmp = Path(tempfile.mkdtemp(prefix="vqgen_prior_mem_"))
    try:
        results = []
        for n in (int(s) for s in sizes.split(",")):
            codes = tmp / f"codes_{n}"
            write_split(codes / "train", n, seed=0)
            write_split(codes / "val", val, seed=1)
            size_mb = (codes / "train" / "codes.npy").stat().st_size / 2**20
            for repo in repos:
                r = run_prior(repo, codes, tmp / "prior", steps, smoke=smoke)
                results.append({"repo": str(repo), "maps": n, "codes_file_mb": round(size_mb, 1),
                                **r})
            shutil.rmtree(codes)
        result = {"benchmark": "prior_memory", "smoke": smoke, "steps": steps, "val_maps": val,
                  "code_shape": list(GRID), "num_codes": K, "results": results}
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
