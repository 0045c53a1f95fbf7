"""Training throughput of ``vqgen train-vqvae`` on a JPEG folder: --num-workers auto vs 0.

Extracts N CIFAR-10 training JPEGs (N / 10 per class) from
``/work/shared/data/cifar10-train-jpeg.tar.gz`` (dev data, not shipped; see its README)
into a temp folder outside the repository, then trains stage one on ``folder:DIR`` in a
child process per setting (OMP_NUM_THREADS=1; ``train_vqvae``, what the CLI verb calls)
and times the steps after a warm-up inside the child, so start-up (imports, listing the
folder, starting workers) is not counted. Settings alternate over ``--repeats`` rounds,
as the machine's load may drift.

    python benchmarks/workers_throughput.py [--images 5000] [--steps 5,45] [--batch-size 128]
        [--model small|cifar] [--workers auto,0] [--repeats 2] [--tar PATH]

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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TAR = Path("/work/shared/data/cifar10-train-jpeg.tar.gz")
MODELS = {
    # small: decoding is a visible share of a CPU step; cifar: the cifar preset's network
    "small": dict(hidden=32, res_hidden=16, num_res=1, code_dim=16, num_codes=128),
    "cifar": dict(hidden=128, res_hidden=64, num_res=2, code_dim=64, num_codes=512),
}
CHILD = """
import json, sys, time
import pytorch_lightning as pl
from vqgen.stage1_vqvae.train import train_vqvae

cfg = json.loads(sys.argv[1])
class Timer(pl.Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == cfg["warm"]:
            self.t0 = time.perf_counter()
    def on_train_end(self, trainer, *args):
        took = time.perf_counter() - self.t0
        steps = trainer.global_step - cfg["warm"]
        workers = trainer.train_dataloader.num_workers
        print(json.dumps({"seconds": took, "steps": steps, "workers": workers}))
train_vqvae(cfg["out"], cfg["model"], overwrite=True, write_codes=False,
            data_args=dict(data="folder:" + cfg["folder"], channels=3, image_size=(32, 32),
                           batch_size=cfg["batch"], num_workers=cfg["workers"]),
            trainer_args=dict(max_epochs=1000, max_steps=cfg["steps"], accelerator="cpu",
                              limit_val_batches=0, quiet=True, checkpoint_every_minutes=0,
                              callbacks=[Timer()]))
"""


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


def run(folder: Path, out: Path, warm: int, steps: int, workers: str, batch: int,
        model: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cfg = dict(folder=str(folder), out=str(out), warm=warm, steps=steps, batch=batch, model=model,
               workers=workers if workers == "auto" else int(workers))
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"training failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--steps", default="5,45", help="warm-up steps, total steps")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--workers", default="auto,0")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tar", default=str(TAR))
    args = ap.parse_args()
    warm, steps = (int(s) for s in args.steps.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="vqgen_workers_"))
    try:
        folder = extract(Path(args.tar), tmp / "data", args.images)
        rates: dict[str, list[float]] = {}
        resolved: dict[str, int] = {}
        for _ in range(args.repeats):
            for workers in args.workers.split(","):
                r = run(folder, tmp / "run", warm, steps, workers, args.batch_size,
                        MODELS[args.model])
                rates.setdefault(workers, []).append(round(r["steps"] * args.batch_size
                                                           / r["seconds"], 1))
                resolved[workers] = r["workers"]
        results = [{"num_workers": w, "resolved": resolved[w], "images_per_s": rates[w],
                    "median": float(np.median(rates[w]))} for w in rates]
        print(json.dumps({"benchmark": "workers_throughput", "images": args.images,
                          "model": args.model, "batch_size": args.batch_size,
                          "timed_steps": steps - warm, "cpus": len(os.sched_getaffinity(0)),
                          "load_average": os.getloadavg(), "results": results}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    main()
