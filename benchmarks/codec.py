"""The codec against the formats people use: bits per image, PSNR, coder overhead, speed.

Prints one JSON line with at least: bits_per_image, psnr_db, overhead, baselines
{format: {bits_per_image, psnr_db}}, compress_images_per_s, decompress_images_per_s; and
writes a rate-distortion plot (bits per image vs PSNR: our point, the JPEG and WebP
curves over their quality settings) as PNG.

    python benchmarks/codec.py --prior checkpoints/demo/prior/last.ckpt \\
        [--data mnist5k --split val] [--plot benchmarks/results/codec_rd.png] [--threads 2]
    python benchmarks/codec.py --smoke    # tiny models on 8 images, plot in a temp dir

``--smoke`` (without --prior) trains a tiny VQ-VAE and prior first, in a temp folder, codes
8 images with one repeat and writes the plot there: a check that the benchmark runs, its
numbers measure nothing.

- ours: ``vqgen compress``'s defaults (batches of 64, one ANS stream per batch, labels
  coded): the whole .vqz file's bits / images. ``overhead`` = file bits / the prior's
  ideal -log2 p; ``overhead_one_stream`` the same with every image in one stream.
- baselines (Pillow, each image its own whole file, as the data set gives it to the
  VQ-VAE: uint8 of the float image): PNG (optimize), WebP lossless, and JPEG / WebP lossy
  at every quality, reported at the quality whose PSNR is closest to ours.
  ``ratio_at_equal_psnr`` = the fewest bits of JPEG / WebP at our PSNR (interpolated
  along each curve, linear in log bits) over our bits; ``ratio_vs_lossy`` the same at
  the highest quality setting whose PSNR is still <= ours (the reading of "equal or
  lower PSNR" most generous to the baselines).
- PSNR everywhere is 10 log10(1 / MSE) of the MSE over the whole set (as ``evaluate``).
- speed: images/s of compress (VQ-VAE encode + prior + coder) and decompress (prior +
  coder + VQ-VAE decode) on the CPU at batch 1 (first ``--batch1-images``) and batch 64;
  best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vqgen.pipeline import metrics as M  # noqa: E402
from vqgen.pipeline.codec.baselines import roundtrip  # noqa: E402
from vqgen.pipeline.codec.coder import (  # noqa: E402
    build_report,
    compress_codes,
    decode_codes,
    decode_images,
    encode_batches,
    encode_images,
    pixels_per_image,
)
from vqgen.pipeline.generate import load_pair  # noqa: E402
from vqgen.stage1_vqvae.data import build_dataset  # noqa: E402
from vqgen.stage1_vqvae.runtime.grid import to_uint8  # noqa: E402

JPEG_QUALITIES = [1, 2, 3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95]
WEBP_QUALITIES = [0, 1, 2, 3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95, 100]


def baseline(images: np.ndarray, fmt: str, **kw) -> dict:
    """Mean whole-file bits per image and set PSNR of a Pillow format on uint8 images."""
    bits, sse = 0, 0.0
    for arr in images:
        n, dec = roundtrip(arr, fmt, **kw)  # the same Pillow round trip as vqgen serve's
        bits += n
        sse += float(((dec.astype(np.float64) - arr) / 255.0).__pow__(2).sum())
    return {"bits_per_image": bits / len(images),
            "psnr_db": M.psnr_from_mse(sse / images.size)}


def bits_at_psnr(points: list[dict], psnr: float) -> float | None:
    """A format's bits per image at ``psnr``: linear in log(bits) between the two
    quality settings around it; None when the curve does not reach that PSNR."""
    pts = sorted(points, key=lambda p: p["psnr_db"])
    for a, b in zip(pts, pts[1:], strict=False):
        if a["psnr_db"] <= psnr <= b["psnr_db"] and b["psnr_db"] > a["psnr_db"]:
            t = (psnr - a["psnr_db"]) / (b["psnr_db"] - a["psnr_db"])
            la, lb = np.log(a["bits_per_image"]), np.log(b["bits_per_image"])
            return float(np.exp(la + t * (lb - la)))
    return None


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=None,
                    help="default checkpoints/demo/prior/last.ckpt (smoke: a tiny one trained first)")
    ap.add_argument("--vqvae", default=None)
    ap.add_argument("--data", default=None, help="default: the VQ-VAE's data set")
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--plot", default=None, help="default benchmarks/results/codec_rd.png "
                    "(smoke: in a temp folder)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    ap.add_argument("--batch1-images", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="tiny models, 8 images: checks it runs")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vqgen_codec_") as tmp:
        if args.smoke:
            if args.prior is None:
                from benchmarks._smoke import tiny_demo

                args.prior = str(tiny_demo(Path(tmp) / "demo") / "prior" / "last.ckpt")
            args.limit = args.limit or 8
            args.plot = args.plot or str(Path(tmp) / "codec_rd.png")
            args.batch1_images, args.repeats = min(args.batch1_images, 2), 1
        args.prior = args.prior or "checkpoints/demo/prior/last.ckpt"
        args.plot = args.plot or "benchmarks/results/codec_rd.png"
        return run(args)


def run(args: argparse.Namespace) -> dict:
    """The measurements, the plot and the JSON line."""
    torch.set_num_threads(args.threads)

    prior, vqvae = load_pair(args.prior, args.vqvae)
    hp = vqvae.hparams
    ds = build_dataset(args.data or hp.data, args.split, data_root=args.data_root,
                       channels=int(hp.channels), image_size=tuple(hp.image_size),
                       val_fraction=float(hp.val_fraction), seed=int(hp.seed))
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    images = torch.stack([ds[i][0] for i in range(n)])
    labels = torch.as_tensor(ds.labels[:n]).long()

    enc = encode_batches(vqvae, [(images[s:s + 64], labels[s:s + 64]) for s in range(0, n, 64)])
    runs = {}
    for stream in ("batch", "all", "image"):
        for mode in ("code", "null"):
            res = compress_codes(prior, vqvae, enc.codes, enc.labels, stream=stream,
                                 label_mode=mode)
            runs[stream, mode] = (res, build_report(res, enc, pixels_per_image(vqvae), {}))
    res, rep = runs["batch", "code"]
    dec = decode_codes(res.data, prior, vqvae)
    assert torch.equal(dec.codes, enc.codes), "round trip failed"

    # speed: the whole path from images / to images, at batch 1 and 64
    speed = {}
    for bs in (1, 64):
        m = n if bs > 1 else min(n, args.batch1_images)
        x, y = images[:m], labels[:m]
        data = compress_codes(prior, vqvae, enc.codes[:m], y, batch_size=bs).data
        tc = best_of(lambda x=x, y=y, bs=bs: compress_codes(
            prior, vqvae, encode_images(vqvae, x, bs), y, batch_size=bs), args.repeats)
        td = best_of(lambda data=data, bs=bs: decode_images(
            vqvae, decode_codes(data, prior, vqvae).codes, bs), args.repeats)
        speed[bs] = {"images": m, "compress_images_per_s": m / tc,
                     "decompress_images_per_s": m / td}

    # baselines on exactly the images the VQ-VAE sees
    u8 = np.stack([to_uint8(img) for img in images])  # (N, H, W, C)
    base = {"png": baseline(u8, "PNG", optimize=True),
            "webp_lossless": baseline(u8, "WEBP", lossless=True, quality=100, method=6)}
    curves = {"jpeg": [], "webp": []}
    for q in JPEG_QUALITIES:
        curves["jpeg"].append({"quality": q, **baseline(u8, "JPEG", quality=q, optimize=True)})
    for q in WEBP_QUALITIES:
        curves["webp"].append({"quality": q, **baseline(u8, "WEBP", quality=q, method=6)})
    ours_psnr = rep["psnr_db"]
    below = {}
    for fmt, pts in curves.items():
        base[fmt] = min(pts, key=lambda p: abs(p["psnr_db"] - ours_psnr))
        ok = [p for p in pts if p["psnr_db"] <= ours_psnr]
        below[fmt] = max(ok, key=lambda p: p["psnr_db"]) if ok else None
    lossy = [p["bits_per_image"] for p in below.values() if p is not None]
    ratio = min(lossy) / rep["bits_per_image"] if lossy else None
    equal = {fmt: bits_at_psnr(pts, ours_psnr) for fmt, pts in curves.items()}
    known = [b for b in equal.values() if b is not None]
    ratio_equal = min(known) / rep["bits_per_image"] if known else None

    plot = Path(args.plot)
    plot.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for fmt, style in (("jpeg", "o-"), ("webp", "s-")):
        pts = curves[fmt]
        ax.plot([p["bits_per_image"] for p in pts], [p["psnr_db"] for p in pts], style,
                ms=3, label=f"{fmt.upper()} (Pillow, qualities {pts[0]['quality']}..{pts[-1]['quality']})")
    ax.plot([rep["bits_per_image"]], [ours_psnr], "r*", ms=14, label="vqgen .vqz")
    for name, b in (("PNG", base["png"]), ("WebP lossless", base["webp_lossless"])):
        ax.axvline(b["bits_per_image"], color="grey", ls=":", lw=1)
        ax.text(b["bits_per_image"], ax.get_ylim()[1], f"{name} ", rotation=90, va="top",
                ha="right", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("bits per image (whole file)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{args.data or hp.data} {args.split}: {n} images")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(plot)
    plt.close(fig)

    out = {
        "data": f"{args.data or hp.data} {args.split}", "images": n,
        "prior": str(args.prior),
        "bits_per_image": rep["bits_per_image"],
        "bits_per_pixel": rep["bits_per_pixel"],
        "psnr_db": ours_psnr, "ssim": rep["ssim"],
        "ideal_bits_per_image": rep["ideal_bits_per_image"],
        "overhead": rep["overhead"],
        "coder_overhead": rep["coder_overhead"],
        "overhead_one_stream": runs["all", "code"][1]["overhead"],
        "header_bits": rep["header_bits"],
        "bits_per_image_by_stream": {s: runs[s, "code"][1]["bits_per_image"]
                                     for s in ("image", "batch", "all")},
        "bits_per_image_by_labels": {m: runs["batch", m][1]["bits_per_image"]
                                     for m in ("code", "null")},
        "baselines": base,
        "lossy_at_or_below_our_psnr": below,
        "ratio_vs_lossy": ratio,
        "lossy_bits_at_our_psnr": equal,
        "ratio_at_equal_psnr": ratio_equal,
        "compress_images_per_s": speed[64]["compress_images_per_s"],
        "decompress_images_per_s": speed[64]["decompress_images_per_s"],
        "speed": {f"batch_{bs}": v for bs, v in speed.items()},
        "threads": args.threads, "device": "cpu",
        "curves": curves, "plot": str(plot), "smoke": args.smoke,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
