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
    python benchmarks/workers_throughput.py --smoke    # 40 JPEGs, a tiny model, 3 steps

Prints one JSON line: per setting, the resolved workers, walls and images/s.
``--smoke`` needs no tar: it writes 40 JPEGs (mnist5k digits, 32x32, tinted) in class
folders in a temp folder and runs the same training and timing in this process (no child)
with a tiny model, batch 8, steps 1,3 and one round: a check that the benchmark runs, its
numbers measure nothing.
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
sys.path.insert(0, str(ROOT))  # this checkout's packages
TAR = Path("/work/shared/data/cifar10-train-jpeg.tar.gz")
MODELS = {
    # small: decoding is a visible share of a CPU step; cifar: the cifar preset's network
    "small": dict(hidden=32, res_hidden=16, num_res=1, code_dim=16, num_codes=128),
    "cifar": dict(hidden=128, res_hidden=64, num_res=2, code_dim=64, num_codes=512),
}
SMOKE_MODEL = dict(hidden=16, res_hidden=8, num_res=1, code_dim=8, num_codes=32)


def timed_training(cfg: dict) -> dict:
    """Train stage one on cfg's folder (what ``vqgen train-vqvae`` calls) and time the steps
    after ``cfg["warm"]``: {"seconds", "steps", "workers" (the loader's resolved count)}.
    Runs in the child process (``--child CFG``), or in this one in smoke mode."""
    import time

    import pytorch_lightning as pl

    from vqgen.stage1_vqvae.train import train_vqvae

    found: dict = {}

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == cfg["warm"]:
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, *args):
            found.update(seconds=time.perf_counter() - self.t0, steps=trainer.global_step - cfg["warm"],
                         workers=trainer.train_dataloader.num_workers)

    train_vqvae(cfg["out"], cfg["model"], overwrite=True, write_codes=False,
                data_args=dict(data="folder:" + cfg["folder"], channels=3, image_size=(32, 32),
                               batch_size=cfg["batch"], num_workers=cfg["workers"]),
                trainer_args=dict(max_epochs=1000, max_steps=cfg["steps"], accelerator="cpu",
                                  limit_val_batches=0, quiet=True, checkpoint_every_minutes=0,
                                  callbacks=[Timer()]))
    return found


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
        model: dict, in_process: bool = False) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cfg = dict(folder=str(folder), out=str(out), warm=warm, steps=steps, batch=batch, model=model,
               workers=workers if workers == "auto" else int(workers))
    if in_process:
        return timed_training(cfg)
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"training failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=None, help="default 5000 (smoke 40)")
    ap.add_argument("--steps", default=None, help="warm-up steps, total steps (default 5,45; smoke 1,3)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 128 (smoke 8)")
    ap.add_argument("--model", choices=sorted(MODELS), default="small",
                    help="default small (smoke: a tiny one)")
    ap.add_argument("--workers", default="auto,0")
    ap.add_argument("--repeats", type=int, default=None, help="default 2 (smoke 1)")
    ap.add_argument("--tar", default=str(TAR))
    ap.add_argument("--smoke", action="store_true", help="40 JPEGs written here, in-process: checks it runs")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # the timed run, in the child
    args = ap.parse_args(argv)
    if args.child is not None:
        result = timed_training(json.loads(args.child))
        print(json.dumps(result))
        return result
    smoke = args.smoke
    images = args.images or (40 if smoke else 5000)
    warm, steps = (int(s) for s in (args.steps or ("1,3" if smoke else "5,45")).split(","))
    batch_size = args.batch_size or (8 if smoke else 128)
    repeats = args.repeats or (1 if smoke else 2)
    model = SMOKE_MODEL if smoke else MODELS[args.model]
    tmp = Path(tempfile.mkdtemp(prefix="vqgen_workers_"))
    try:
        if smoke:
            from benchmarks._smoke import digit_folder

            folder = digit_folder(tmp / "data" / "train", images // 10, size=32, rgb=True, ext=".jpg")
        else:
            folder = extract(Path(args.tar), tmp / "data", images)
        rates: dict[str, list[float]] = {}
        resolved: dict[str, int] = {}
        for _ in range(repeats):
            for workers in args.workers.split(","):
                r = run(folder, tmp / "run", warm, steps, workers, batch_size, model, in_process=smoke)
                rates.setdefault(workers, []).append(round(r["steps"] * batch_size
                                                           / r["seconds"], 1))
                resolved[workers] = r["workers"]
        results = [{"num_workers": w, "resolved": resolved[w], "images_per_s": rates[w],
                    "median": float(np.median(rates[w]))} for w in rates]
        result = {"benchmark": "workers_throughput", "smoke": smoke, "images": images,
                  "model": "smoke" if smoke else args.model, "batch_size": batch_size,
                  "timed_steps": steps - warm, "cpus": len(os.sched_getaffinity(0)),
                  "load_average": list(os.getloadavg()), "results": results}
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
