"""Peak memory of ``vqgen train-prior`` against the number of code maps (flat is the target).

Writes code-map folders of N training maps (8x8, K=512, 10 classes; 1,000 random maps
repeated) plus a fixed 5,000-map val split with stage one's CodeMapWriter, then runs a
short ``vqgen train-prior`` (``--max-steps``) on each in a child process and reads the
child's peak RSS from os.wait4. ``--repo`` runs another checkout's code (e.g. the main
branch before a change) on the same folders.

    python benchmarks/prior_memory.py [--sizes 50000,500000] [--steps 20] [--repo DIR ...]

Prints one JSON line: for each repo and size, maps, codes_file_mb, wall_s, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
K, GRID, CLASSES, VAL = 512, (8, 8), 10, 5000


def write_split(folder: Path, n: int, seed: int) -> None:
    sys.path.insert(0, str(ROOT))
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


def run_prior(repo: Path, codes: Path, out: Path, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "vqgen.pipeline", "train-prior", "--codes", str(codes), "--out",
           str(out), "--max-steps", str(steps), "--limit-val-batches", "2", "--accelerator",
           "cpu", "--num-workers", "0", "--overwrite", "--checkpoint-every-minutes", "0"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    log = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"train-prior failed in {repo}:\n{log[-3000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50000,500000")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repo", action="append", default=None,
                    help="checkout whose code runs (repeatable; default this one)")
    args = ap.parse_args()
    repos = [Path(r).resolve() for r in (args.repo or [str(ROOT)])]
    tmp = Path(tempfile.mkdtemp(prefix="vqgen_prior_mem_"))
    try:
        results = []
        for n in (int(s) for s in args.sizes.split(",")):
            codes = tmp / f"codes_{n}"
            write_split(codes / "train", n, seed=0)
            write_split(codes / "val", VAL, seed=1)
            size_mb = (codes / "train" / "codes.npy").stat().st_size / 2**20
            for repo in repos:
                r = run_prior(repo, codes, tmp / "prior", args.steps)
                results.append({"repo": str(repo), "maps": n, "codes_file_mb": round(size_mb, 1),
                                **r})
            shutil.rmtree(codes)
        print(json.dumps({"benchmark": "prior_memory", "steps": args.steps, "val_maps": VAL,
                          "code_shape": list(GRID), "num_codes": K, "results": results}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
