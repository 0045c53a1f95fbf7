"""Stage-one benchmark on the embedded MNIST-5k data with default settings.

Prints one JSON line: train_images_per_s, encode_images_per_s, val_psnr_db, val_mse,
codebook_usage, perplexity, peak_rss_mb, wall_s, train_s (and the settings used).

    python benchmarks/stage1.py [--max-epochs N] [--out DIR] [extra train-vqvae flags]
    python benchmarks/stage1.py --smoke    # tiny model, 5 batches, 256 images encoded: seconds

The run is ``vqgen train-vqvae --data mnist5k``'s: its parser, preset and trainer settings
(any extra train-vqvae flag applies), without the code maps. ``--smoke`` adds the test
suite's tiny model and batch limits (a check that the benchmark runs; it measures nothing).

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="run folder (default: a temp folder)")
    ap.add_argument("--encode-batch", type=int, default=512)
    ap.add_argument("--encode-limit", type=int, default=None,
                    help="encode only the first N training images (default: all 4,500)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, a few batches: checks it runs")
    args, extra = ap.parse_known_args(argv)

    from vqgen.pipeline.cli import build_parser
    from vqgen.pipeline.cli.common import trainer_kwargs
    from vqgen.pipeline.cli.stage1 import vqvae_config
    from vqgen.pipeline.evaluation.stage1 import stage1_metrics
    from vqgen.stage1_vqvae.data import build_dataset
    from vqgen.stage1_vqvae.lit import load_vqvae
    from vqgen.stage1_vqvae.train import train_vqvae

    if args.smoke:
        from benchmarks._smoke import TINY_VQVAE_MODEL, TINY_VQVAE_TRAIN

        extra = [*TINY_VQVAE_MODEL, *TINY_VQVAE_TRAIN, *extra]
        args.encode_limit = args.encode_limit or 256
        args.encode_batch = min(args.encode_batch, 128)
    with tempfile.TemporaryDirectory(prefix="vqgen_stage1_") as tmp:
        out = Path(args.out or tmp) / "vqvae"
        cli_args = build_parser().parse_args(["train-vqvae", "--data", "mnist5k", "--out", str(out),
                                              "--no-codes", "--overwrite", *extra])
        model_args, data_args, max_epochs = vqvae_config(cli_args, log=lambda s: None)
        # the CLI's own trainer settings, so every extra train-vqvae flag applies
        trainer_args = {**trainer_kwargs(cli_args, max_epochs), "quiet": True}
        t_fit = time.perf_counter()
        res = train_vqvae(out, model_args, data_args=data_args, trainer_args=trainer_args,
                          overwrite=True, write_codes=False)
        train_s = time.perf_counter() - t_fit

        lit = load_vqvae(res.last)
        steps = int(torch.load(res.last, weights_only=True)["global_step"])
        train_images = steps * data_args["batch_size"]

        ds = build_dataset("mnist5k", "train", channels=1, image_size=(28, 28))
        n = len(ds) if args.encode_limit is None else min(args.encode_limit, len(ds))
        images = torch.stack([ds[i][0] for i in range(n)])
        model = lit.model.eval()
        with torch.inference_mode():
            model.encode(images[: args.encode_batch])  # warm-up
            t_enc = time.perf_counter()
            for s in range(0, len(images), args.encode_batch):
                model.encode(images[s : s + args.encode_batch])
            encode_s = time.perf_counter() - t_enc

        # the held-out numbers come from the same function as `vqgen evaluate`'s report
        val = stage1_metrics(lit, build_dataset("mnist5k", "val", channels=1, image_size=(28, 28)))
    result = {
        "benchmark": "stage1",
        "smoke": args.smoke,
        "train_images_per_s": round(train_images / train_s, 1),
        "encode_images_per_s": round(len(images) / encode_s, 1),
        "encoded_images": len(images),
        "val_psnr_db": round(val["psnr_db"], 3),
        "val_mse": round(val["mse"], 6),
        "val_ssim": None if val["ssim"] is None else round(val["ssim"], 4),
        "codebook_usage": round(val["codebook_usage"], 4),
        "perplexity": round(val["perplexity"], 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "train_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "epochs": trainer_args["max_epochs"],
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "settings": dict(model_args),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
