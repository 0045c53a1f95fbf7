"""Stage-one benchmark on the embedded MNIST-5k data with default settings.

Prints one JSON line: train_images_per_s, encode_images_per_s, val_psnr_db, val_mse,
codebook_usage, perplexity, peak_rss_mb, wall_s, train_s (and the settings used).

    python benchmarks/stage1.py [--max-epochs N] [--out DIR] [extra train-vqvae flags]

Targets on a 2-core CPU: val PSNR >= 26 dB and usage >= 0.9 after <= 3 minutes of
training; encode >= 3,500 images/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="run folder (default: a temp folder)")
    ap.add_argument("--encode-batch", type=int, default=512)
    args, extra = ap.parse_known_args()

    from vqgen.pipeline.cli import build_parser, vqvae_config
    from vqgen.stage1_vqvae.data import build_dataset
    from vqgen.stage1_vqvae.lit import load_vqvae
    from vqgen.stage1_vqvae.train import train_vqvae

    tmp = tempfile.TemporaryDirectory()
    out = Path(args.out or tmp.name) / "vqvae"
    cli_args = build_parser().parse_args(["train-vqvae", "--data", "mnist5k", "--out", str(out),
                                          "--no-codes", "--overwrite", *extra])
    model_args, data_args, max_epochs = vqvae_config(cli_args)
    trainer_args = dict(
        max_epochs=cli_args.max_epochs or max_epochs, max_time=cli_args.max_time,
        accelerator=cli_args.accelerator, devices=cli_args.devices, quiet=True,
    )
    t_fit = time.perf_counter()
    res = train_vqvae(out, model_args, data_args=data_args, trainer_args=trainer_args,
                      overwrite=True, write_codes=False)
    train_s = time.perf_counter() - t_fit

    lit = load_vqvae(res.last)
    steps = int(torch.load(res.last, weights_only=True)["global_step"])
    train_images = steps * data_args["batch_size"]

    ds = build_dataset("mnist5k", "train", channels=1, image_size=(28, 28))
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    model = lit.model.eval()
    with torch.inference_mode():
        model.encode(images[: args.encode_batch])  # warm-up
        t_enc = time.perf_counter()
        for s in range(0, len(images), args.encode_batch):
            model.encode(images[s : s + args.encode_batch])
        encode_s = time.perf_counter() - t_enc

    # the held-out numbers come from the same function as `vqgen evaluate`'s report
    from vqgen.pipeline.evaluation.stage1 import stage1_metrics

    val = stage1_metrics(lit, build_dataset("mnist5k", "val", channels=1, image_size=(28, 28)))
    mse = val["mse"]
    print(json.dumps({
        "benchmark": "stage1",
        "train_images_per_s": round(train_images / train_s, 1),
        "encode_images_per_s": round(len(images) / encode_s, 1),
        "val_psnr_db": round(val["psnr_db"], 3),
        "val_mse": round(mse, 6),
        "val_ssim": None if val["ssim"] is None else round(val["ssim"], 4),
        "codebook_usage": round(val["codebook_usage"], 4),
        "perplexity": round(val["perplexity"], 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "train_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "epochs": trainer_args["max_epochs"],
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "settings": {k: v for k, v in model_args.items()},
    }), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
