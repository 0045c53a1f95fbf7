"""Training throughput of ``vqgen train-vqvae`` on a JPEG folder: --num-workers auto vs 0.

Extracts N CIFAR-10 training JPEGs (N / 10 per class) from
``/work/shared/data/cifar10-train-jpeg.tar.gz`` (dev data, not shipped; see its README)
into a temp folder outside the repository, then runs ``train-vqvae --data folder:DIR``
in child processes (OMP_NUM_THREADS=1) for two step counts and each worker setting. The
marginal rate, (steps_b - steps_a) * batch / (wall_b - wall_a), cancels start-up (imports,
listing the folder, starting workers).

    python benchmarks/workers_throughput.py [--images 5000] [--steps 10,40] [--batch-size 128]
        [--model small|cifar] [--tar PATH]

Prints one JSON line: per setting, the resolved workers, walls and images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAR = Path("/work/shared/data/cifar10-train-jpeg.tar.gz")
MODELS = {
    # small: decoding is a visible share of a CPU step; cifar: the preset's model
    "small": ["--hidden", "32", "--res-hidden", "16", "--num-res", "1", "--code-dim", "16",
              "--num-codes", "128"],
    "cifar": ["--preset", "cifar"],
}


def extract(tar: Path, dest: Path, n: int) -> Path:
    per_class = n // 10
    taken: dict[str, int] = {}
    with tarfile.open(tar) as tf:
        for m in tf:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) != 3:
                continue
            cls = parts[1]
            if taken.get(cls, 0) < per_class:
                taken[cls] = taken.get(cls, 0) + 1
                tf.extract(m, dest, filter="data")
    return dest / "train"


def run(folder: Path, out: Path, steps: int, workers: str, batch: int, model: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pipeline", "train-vqvae", "--data", f"folder:{folder}",
           "--out", str(out), "--channels", "3", "--image-size", "32", "--downsample", "4",
           *model, "--batch-size", str(batch), "--max-steps", str(steps),
           "--limit-val-batches", "0", "--num-workers", workers, "--no-codes", "--overwrite",
           "--accelerator", "cpu", "--device", "cpu", "--checkpoint-every-minutes", "0"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"train-vqvae failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--steps", default="10,40")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--workers", default="auto,0")
    ap.add_argument("--tar", default=str(TAR))
    args = ap.parse_args()
    a, b = (int(s) for s in args.steps.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="vqgen_workers_"))
    try:
        folder = extract(Path(args.tar), tmp / "data", args.images)
        sys.path.insert(0, str(ROOT))
        from stage1_vqvae.data import build_dataset
        from stage1_vqvae.runtime.data_order import resolve_workers

        ds = build_dataset(f"folder:{folder}", "train", channels=3, image_size=(32, 32))
        results = []
        for workers in args.workers.split(","):
            wa = run(folder, tmp / "run", a, workers, args.batch_size, MODELS[args.model])
            wb = run(folder, tmp / "run", b, workers, args.batch_size, MODELS[args.model])
            resolved = resolve_workers(workers if workers == "auto" else int(workers), ds)
            results.append({"num_workers": workers, "resolved": resolved,
                            f"wall_{a}_steps_s": round(wa, 1), f"wall_{b}_steps_s": round(wb, 1),
                            "images_per_s": round((b - a) * args.batch_size / (wb - wa), 1)})
        print(json.dumps({"benchmark": "workers_throughput", "images": args.images,
                          "model": args.model, "batch_size": args.batch_size,
                          "cpus": len(os.sched_getaffinity(0)), "results": results}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
