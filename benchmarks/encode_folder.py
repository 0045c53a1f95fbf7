"""Streaming encode of a large image folder: throughput and peak memory against size.

Writes N PNGs (28x28 grey digits from the embedded MNIST-5k, each shifted by a random
offset so no two files are alike) into class subfolders once, then runs
``vqgen encode --data folder:DIR`` in a child process for each size and reports the
child's images/s and peak RSS. Flat memory means the peak RSS at 50,000 images is about
the one at 5,000.

    python benchmarks/encode_folder.py [--sizes 5000,50000] [--vqvae CKPT] [--devices 1]
        [--root DIR] [--keep]
    python benchmarks/encode_folder.py --smoke    # 100 and 200 PNGs, tiny VQ-VAE: seconds

Prints one JSON line: for each size, images, seconds, images_per_s, peak_rss_mb.
Without --vqvae it trains a small VQ-VAE for one epoch first (the encode cost depends on
the architecture, not on how well it is trained). ``--smoke`` trains a tiny VQ-VAE for a few
batches and runs the same ``vqgen encode`` command lines in this process (no child: its
peak_rss_mb is this process's), on 100 and 200 PNGs in a temp folder: a check that the
benchmark runs, its numbers measure nothing.
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
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages


def write_folder(root: Path, n: int, seed: int = 0) -> Path:
    """N 28x28 PNGs under root/<digit>/NNNNNN.png (skips the work when already complete)."""
    marker = root / f".complete-{n}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    from vqgen.stage1_vqvae.data import build_dataset

    ds = build_dataset("mnist5k", "train", channels=1, image_size=(28, 28))
    rng = np.random.default_rng(seed)
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
    for i in range(n):
        j = int(rng.integers(len(ds)))
        img, label = ds[j]
        arr = (img[0].numpy() * 255).round().astype(np.uint8)
        arr = np.roll(arr, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
        Image.fromarray(arr, "L").save(root / str(int(label)) / f"{i:06d}.png", compress_level=1)
    marker.write_text("ok\n")
    return root


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def run_encode(vqvae: Path, folder: Path, out: Path, devices: int, threads: int,
               batch_size: int, in_process: bool = False) -> dict:
    """One ``vqgen encode`` child; its wall time and peak RSS (from wait4). ``in_process``
    (smoke mode): the same command in this process, with this process's peak RSS."""
    cmd = [sys.executable, "-m", "vqgen.pipeline", "encode", "--vqvae", str(vqvae), "--data",
           f"folder:{folder}", "--out", str(out), "--val-fraction", "0.1",
           "--batch-size", str(batch_size), "--overwrite"]
    cmd += ["--devices", str(devices), "--accelerator", "cpu"] if devices > 1 else ["--device", "cpu"]
    t0 = time.perf_counter()
    if in_process:
        from benchmarks._smoke import cli

        cli(cmd[3:])
        return {"wall_s": round(time.perf_counter() - t0, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    proc = subprocess.Popen(cmd, env=child_env(threads), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    log = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"encode failed:\n{log[-3000:]}")
    # Linux's wait4 reports the largest RSS of the child and its reaped descendants (the DDP
    # ranks); RUSAGE_CHILDREN would also count earlier children, e.g. the training run
    peak = usage.ru_maxrss / 1024
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help="default 5000,50000 (smoke 100,200)")
    ap.add_argument("--vqvae", default=None, help="VQ-VAE checkpoint (default: train a small one)")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="threads per process")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--root", default=None, help="where the image folders go (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated folders")
    ap.add_argument("--smoke", action="store_true", help="tiny VQ-VAE, 100 and 200 PNGs: checks it runs")
    args = ap.parse_args(argv)
    smoke = args.smoke
    sizes = [int(s) for s in (args.sizes or ("100,200" if smoke else "5000,50000")).split(",")]
    if smoke and args.devices > 1:
        ap.error("--smoke runs the encode in this process: one device")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.devices)
    tmp = tempfile.mkdtemp(prefix="vqgen_encode_bench_")
    root = Path(args.root) if args.root else Path(tmp)
    try:
        vqvae = Path(args.vqvae) if args.vqvae else None
        if vqvae is None:
            vqvae = root / "vqvae" / "last.ckpt"
            if not vqvae.exists() and smoke:
                from benchmarks._smoke import TINY_VQVAE_MODEL, TINY_VQVAE_TRAIN, cli

                cli(["train-vqvae", "--data", "mnist5k", "--out", vqvae.parent, "--no-codes",
                     *TINY_VQVAE_MODEL, *TINY_VQVAE_TRAIN, "--device", "cpu"])
            elif not vqvae.exists():
                subprocess.run([sys.executable, "-m", "vqgen.pipeline", "train-vqvae", "--data", "mnist5k",
                                "--out", str(vqvae.parent), "--max-epochs", "1", "--no-codes",
                                "--overwrite", "--accelerator", "cpu", "--device", "cpu"],
                               env=child_env(threads), check=True, capture_output=True)
        results = []
        for n in sizes:
            t0 = time.perf_counter()
            folder = write_folder(root / f"images_{n}", n)
            gen_s = time.perf_counter() - t0
            r = run_encode(vqvae, folder, root / f"codes_{n}", args.devices, threads,
                           args.batch_size, in_process=smoke)
            # the child's wall time includes ~6 s of imports and listing the folder
            results.append({"images": n, "write_pngs_s": round(gen_s, 1), **r,
                            "images_per_s": round(n / r["wall_s"], 1)})
        marginal = None
        if len(results) > 1 and results[-1]["wall_s"] > results[0]["wall_s"]:
            # start-up (imports, loading the model) cancels out between two sizes
            marginal = round((results[-1]["images"] - results[0]["images"])
                             / (results[-1]["wall_s"] - results[0]["wall_s"]), 1)
        result = {"benchmark": "encode_folder", "smoke": smoke, "marginal_images_per_s": marginal,
                  "devices": args.devices,
                  "threads_per_process": threads, "batch_size": args.batch_size,
                  "vqvae": str(vqvae), "sizes": results}
        print(json.dumps(result))
        return result
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
