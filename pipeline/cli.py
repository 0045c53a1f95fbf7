"""The ``vqgen`` command line. ``main(argv) -> exit code``; heavy imports happen per verb.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.evaluate_cli import add_evaluate

EXAMPLES = {
    "train-vqvae": "vqgen train-vqvae --data mnist5k --out checkpoints/mnist/vqvae",
    "encode": "vqgen encode --vqvae checkpoints/mnist/vqvae/last.ckpt --data mnist5k "
    "--out checkpoints/mnist/codes",
    "reconstruct": "vqgen reconstruct --vqvae checkpoints/mnist/vqvae/last.ckpt --data mnist5k "
    "--split val --out recon.png",
    "decode": "vqgen decode --vqvae checkpoints/mnist/vqvae/last.ckpt "
    "--codes checkpoints/mnist/codes/val --out decoded/",
    "train-prior": "vqgen train-prior --codes checkpoints/mnist/codes --out checkpoints/mnist/prior",
    "sample": "vqgen sample --prior checkpoints/mnist/prior/last.ckpt --num 64 --out samples/",
    "demo": "vqgen demo --out checkpoints/demo",
    "evaluate": "vqgen evaluate --vqvae checkpoints/mnist/vqvae/last.ckpt "
    "--prior checkpoints/mnist/prior/last.ckpt --data mnist5k --out report/",
}


class UsageError(ValueError):
    """A bad flag value found after parsing."""


def _image_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW, e.g. 28 or 32x48") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW with positive sizes")
    return parts[0], parts[1]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return v


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else mps, else cpu."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _sub(subs, name: str, help_text: str) -> argparse.ArgumentParser:
    return subs.add_parser(
        name, help=help_text, description=help_text,
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_data_args(p: argparse.ArgumentParser, default: str | None = "mnist5k") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default,
                   help="mnist5k (embedded), mnist, fashion-mnist, cifar10 or folder:PATH"
                   + (f" (default {default})" if default else " (default: the checkpoint's)"))
    g.add_argument("--data-root", default="data",
                   help="where torchvision data sets live (default ./data)")
    g.add_argument("--download", action="store_true", help="let torchvision download (needs internet)")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="held-out fraction for mnist5k and folders (default 0.1; with --vqvae: "
                   "the checkpoint's)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")


def _add_trainer_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--max-epochs", type=_positive_int, default=None,
                   help="epochs (default: from the preset)")
    g.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps")
    g.add_argument("--max-time", default=None, help="stop after DD:HH:MM:SS or N seconds")
    g.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, mps (default auto)")
    g.add_argument("--devices", type=_devices, default="auto", help="device count or ids")
    g.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    g.add_argument("--num-nodes", type=_positive_int, default=1)
    g.add_argument("--precision", default="32-true", help="e.g. 32-true, 16-mixed, bf16-mixed")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", action="store_true", help="continue the run in --out from last.ckpt")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    g.add_argument("--limit-train-batches", type=float, default=None,
                   help="batches per epoch (int) or fraction (for smoke tests)")
    g.add_argument("--limit-val-batches", type=float, default=None)
    g.add_argument("--checkpoint-every-steps", type=_non_negative_int, default=0,
                   help="also rewrite last.ckpt every N optimizer steps mid-epoch (0 = off)")
    g.add_argument("--checkpoint-every-minutes", type=_non_negative_float, default=10.0,
                   help="also rewrite last.ckpt every M minutes of training (default 10; 0 = off)")


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def _non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return v


def _limit(v: float | None) -> int | float | None:
    if v is None:
        return None
    return int(v) if v >= 1 else v


def _trainer_kwargs(args: argparse.Namespace, max_epochs: int) -> dict:
    return dict(
        max_epochs=args.max_epochs or max_epochs, max_steps=args.max_steps,
        max_time=args.max_time, accelerator=args.accelerator, devices=args.devices,
        strategy=args.strategy, num_nodes=args.num_nodes, precision=args.precision,
        limit_train_batches=_limit(args.limit_train_batches),
        limit_val_batches=_limit(args.limit_val_batches),
        checkpoint_every_steps=args.checkpoint_every_steps,
        checkpoint_every_minutes=args.checkpoint_every_minutes,
    )


# ----------------------------------------------------------------------------- stage one


def add_train_vqvae(subs) -> None:
    p = _sub(subs, "train-vqvae", "Train the stage-one VQ-VAE, then write code maps of every split.")
    _add_data_args(p)
    g = p.add_argument_group("model (defaults from --preset; every value overridable)")
    g.add_argument("--preset", choices=["mnist", "cifar"], default=None,
                   help="mnist: 28x28 grey -> 7x7 codes; cifar: 32x32 colour -> 8x8 (default by --data)")
    g.add_argument("--channels", type=int, choices=[1, 3], default=None)
    g.add_argument("--image-size", type=_image_size, default=None, help="N or HxW")
    g.add_argument("--downsample", type=_positive_int, default=None,
                   help="power of two: 4 makes 28 -> 7")
    g.add_argument("--num-codes", type=_positive_int, default=None, help="codebook size K")
    g.add_argument("--code-dim", type=_positive_int, default=None)
    g.add_argument("--hidden", type=_positive_int, default=None)
    g.add_argument("--res-hidden", type=_positive_int, default=None)
    g.add_argument("--num-res", type=int, default=None)
    g.add_argument("--beta", type=float, default=None, help="commitment weight (default 0.25)")
    g.add_argument("--no-ema", action="store_true", help="learn the codebook by gradient, not EMA")
    g.add_argument("--decay", type=float, default=None, help="EMA decay (default 0.99)")
    g.add_argument("--no-kmeans-init", action="store_true")
    g.add_argument("--dead-after", type=int, default=None,
                   help="restart codes unused this many steps (default 50; 0 = never)")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--batch-size", type=_positive_int, default=None)
    _add_trainer_args(p)
    p.add_argument("--no-codes", action="store_true", help="skip writing code maps after training")
    p.add_argument("--device", default="auto", help="device for the final encode (default auto)")
    p.add_argument("--out", default="checkpoints/vqvae", help="run folder (default checkpoints/vqvae)")
    p.set_defaults(func=cmd_train_vqvae)


def vqvae_config(args: argparse.Namespace) -> tuple[dict, dict, int]:
    """(model_args, data_args, max_epochs) from the preset plus explicit overrides."""
    from stage1_vqvae.data import parse_data_spec
    from stage1_vqvae.lit import DEFAULT_PRESET, PRESETS

    kind, _ = parse_data_spec(args.data)
    preset = dict(PRESETS[args.preset or DEFAULT_PRESET.get(kind, "mnist")])
    over = {k: getattr(args, k) for k in ("channels", "image_size", "downsample", "num_codes",
                                         "code_dim", "hidden", "res_hidden", "num_res", "beta",
                                         "decay", "dead_after", "lr", "batch_size")}
    preset.update({k: v for k, v in over.items() if v is not None})
    if args.no_ema:
        preset["ema"] = False
    if args.no_kmeans_init:
        preset["kmeans_init"] = False
    h, w = preset["image_size"]
    f = preset["downsample"]
    if h % f or w % f:
        raise UsageError(
            f"--image-size {h}x{w} is not divisible by the down-sampling factor {f}; "
            f"use a multiple of {f} (e.g. {h - h % f or f}) or change --downsample"
        )
    data_args = dict(
        data=args.data, data_root=args.data_root, download=args.download,
        channels=preset.pop("channels"), image_size=tuple(preset.pop("image_size")),
        batch_size=preset.pop("batch_size"), num_workers=args.num_workers,
        val_fraction=0.1 if args.val_fraction is None else args.val_fraction, seed=args.seed,
    )
    max_epochs = int(preset.pop("max_epochs"))
    return preset, data_args, max_epochs


def cmd_train_vqvae(args: argparse.Namespace) -> int:
    from stage1_vqvae.train import train_vqvae

    model_args, data_args, max_epochs = vqvae_config(args)
    res = train_vqvae(
        args.out, model_args, data_args=data_args,
        trainer_args=_trainer_kwargs(args, max_epochs), resume=args.resume,
        overwrite=args.overwrite, write_codes=not args.no_codes,
        device=resolve_device(args.device),
    )
    if not res.is_global_zero:
        return 0
    _print_metrics(res.metrics, ("val/recon_loss", "val/psnr", "val/codebook_usage",
                                 "val/perplexity"))
    print(f"checkpoint: {res.last}")
    if res.best:
        print(f"best:       {res.best}")
    for split, folder in res.codes.items():
        print(f"codes {split + ':':6} {folder}")
    return 0


def _print_metrics(metrics: dict[str, float], keys: Sequence[str]) -> None:
    shown = [f"{k} {metrics[k]:.4g}" for k in keys if k in metrics]
    if shown:
        print("final: " + ", ".join(shown))


def add_encode(subs) -> None:
    p = _sub(subs, "encode", "Encode a data set's splits into code-map folders (OUT/train, OUT/val).")
    p.add_argument("--vqvae", required=True, help="VQ-VAE checkpoint (.ckpt)")
    _add_data_args(p, default=None)
    p.add_argument("--splits", default="train,val", help="comma-separated (default train,val)")
    p.add_argument("--batch-size", type=_positive_int, default=512)
    p.add_argument("--device", default="auto", help="one-process encode: auto, cpu, cuda, mps")
    g = p.add_argument_group("distributed (through Lightning; rows stay in dataset order)")
    g.add_argument("--devices", type=_devices, default=1,
                   help="devices (processes) per node; > 1 splits the data across them")
    g.add_argument("--num-nodes", type=_positive_int, default=1,
                   help="nodes; --out must be on a file system every node sees")
    g.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, mps (default auto)")
    g.add_argument("--strategy", default="ddp", help="Lightning strategy (default ddp)")
    p.add_argument("--out", required=True, help="output folder; each split goes to OUT/<split>")
    p.add_argument("--overwrite", action="store_true",
                   help="allow an --out that holds other files")
    p.set_defaults(func=cmd_encode)


def _dataset_for(lit, args: argparse.Namespace, split: str):
    """The split's dataset, transformed the way the checkpoint was trained."""
    from stage1_vqvae.data import build_dataset

    hp = lit.hparams
    return build_dataset(
        args.data or hp.data, split, data_root=args.data_root, download=args.download,
        channels=int(hp.channels), image_size=tuple(hp.image_size),
        val_fraction=float(hp.val_fraction) if args.val_fraction is None else args.val_fraction,
        seed=int(hp.seed),
    )


def cmd_encode(args: argparse.Namespace) -> int:
    from pytorch_lightning.utilities import rank_zero_only

    from stage1_vqvae.checkpoint import file_sha256
    from stage1_vqvae.data import SPLITS
    from stage1_vqvae.encode import encode_dataset, encode_dataset_distributed
    from stage1_vqvae.lit import load_vqvae
    from stage1_vqvae.train import check_code_output

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise UsageError(f"--splits {args.splits!r}: expected a comma list of {', '.join(SPLITS)}")
    out = Path(args.out)
    check_code_output(out, args.overwrite)
    lit = load_vqvae(args.vqvae)
    device = resolve_device(args.device)
    datasets = {s: _dataset_for(lit, args, s) for s in splits}  # fail before writing anything
    sha = file_sha256(args.vqvae)  # once for all splits
    created = not out.exists()
    distributed = args.devices not in (1, "1") or args.num_nodes > 1
    try:
        for split, ds in datasets.items():
            info = ds.info
            common = dict(
                num_classes=info.num_classes, class_names=list(info.class_names),
                source=info.source, checkpoint_path=args.vqvae, batch_size=args.batch_size,
                checkpoint_sha256=sha, num_workers=args.num_workers,
            )
            if distributed:
                folder = encode_dataset_distributed(
                    lit, ds, out / split, accelerator=args.accelerator, devices=args.devices,
                    strategy=args.strategy, num_nodes=args.num_nodes, **common)
            else:
                folder = encode_dataset(lit, ds, out / split, device=device, **common)
            if rank_zero_only.rank == 0:
                print(f"codes {split + ':':6} {folder} ({len(ds)} maps of {lit.code_shape[0]}x"
                      f"{lit.code_shape[1]}, K={lit.num_codes})")
    except BaseException:
        # a lazily read image failed mid-way: leave no partial --out behind
        if created and rank_zero_only.rank == 0:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    return 0


def add_reconstruct(subs) -> None:
    p = _sub(subs, "reconstruct", "Write an original-vs-reconstruction grid PNG and print its PSNR.")
    p.add_argument("--vqvae", required=True)
    _add_data_args(p, default=None)
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--num", type=_positive_int, default=32, help="images in the grid (default 32)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_reconstruct)


def _check_new_file(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder, expected a .png file path")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    if path.suffix.lower() != ".png":
        raise UsageError(f"--out {path}: expected a .png file name")


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from stage1_vqvae.fsutil import atomic_file
    from stage1_vqvae.grid import save_grid
    from stage1_vqvae.lit import load_vqvae

    out = Path(args.out)
    _check_new_file(out, args.overwrite)
    lit = load_vqvae(args.vqvae)
    device = resolve_device(args.device)
    ds = _dataset_for(lit, args, args.split)
    n = min(args.num, len(ds))
    images = torch.stack([ds[i][0] for i in range(n)]).to(device)
    model = lit.model.to(device)
    recon = model.decode_codes(model.encode(images))
    mse = float(((recon - images) ** 2).mean())
    rows = []
    per_row = min(8, n)
    for s in range(0, n, per_row):
        rows += [images[s : s + per_row], recon[s : s + per_row]]
    with atomic_file(out) as tmp:
        save_grid(torch.cat(rows).cpu(), tmp, nrow=per_row)
    import math

    print(f"{out}: {n} {args.split} images (odd rows original, even rows reconstruction); "
          f"MSE {mse:.5f}, PSNR {10 * math.log10(1 / max(mse, 1e-12)):.2f} dB")
    return 0


def add_decode(subs) -> None:
    p = _sub(subs, "decode", "Decode a code-map folder (or .npy of codes) into PNG images.")
    p.add_argument("--vqvae", required=True)
    p.add_argument("--codes", required=True, help="code-map folder or .npy (N, h, w)")
    p.add_argument("--limit", type=_positive_int, default=None, help="decode only the first N")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="folder for 000000.png ... and grid.png")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_decode)


def check_new_dir(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file, expected a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UsageError(f"{path} already holds {what}; pass --overwrite or another --out")


def cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from stage1_vqvae.codes import load_codes_file, validate_codes
    from stage1_vqvae.fsutil import atomic_dir
    from stage1_vqvae.grid import save_grid, save_png
    from stage1_vqvae.lit import load_vqvae

    out = Path(args.out)
    check_new_dir(out, args.overwrite, "files")
    lit = load_vqvae(args.vqvae)
    codes, meta = load_codes_file(args.codes)
    if args.limit:
        codes = codes[: args.limit]
    validate_codes(codes, lit.num_codes, lit.code_shape, str(args.codes))
    if meta and meta.get("num_codes") not in (None, lit.num_codes):
        raise UsageError(f"{args.codes} was made with num_codes={meta['num_codes']}, the VQ-VAE "
                         f"has {lit.num_codes}; decode with the VQ-VAE that made them")
    device = resolve_device(args.device)
    model = lit.model.to(device)
    n = codes.shape[0]
    with atomic_dir(out) as tmp:
        preview = []
        for s in range(0, n, args.batch_size):
            batch = torch.from_numpy(np.asarray(codes[s : s + args.batch_size]).astype(np.int64))
            images = model.decode_codes(batch.to(device)).cpu()
            for i, img in enumerate(images):
                save_png(img, tmp / f"{s + i:06d}.png")
            if len(preview) < 64:
                preview.extend(images[: 64 - len(preview)])
        save_grid(torch.stack(preview), tmp / "grid.png", nrow=8)
    print(f"{out}: {n} images ({n} x {out}/NNNNNN.png) and {out}/grid.png")
    return 0


# ----------------------------------------------------------------------------- stage two


def add_train_prior(subs) -> None:
    from_meta = "num_codes, code_shape and classes come from the codes' meta.json"
    p = _sub(subs, "train-prior", f"Train the gated PixelCNN prior on code maps ({from_meta}).")
    p.add_argument("--codes", required=True, help="code folder holding train/ and val/")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=_positive_int, default=None, help="channels (default 48)")
    g.add_argument("--num-layers", type=_positive_int, default=None, help="gated layers (default 8)")
    g.add_argument("--kernel-size", type=int, default=None, help="odd, >= 3 (default 3)")
    g.add_argument("--head-hidden", type=_positive_int, default=None)
    g.add_argument("--cond-drop", type=float, default=None,
                   help="probability of dropping the class in training (default 0.1), "
                   "enables unconditional and guided sampling from one model")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--batch-size", type=_positive_int, default=None)
    g.add_argument("--num-workers", type=int, default=0)
    _add_trainer_args(p)
    p.add_argument("--out", default="checkpoints/prior", help="run folder")
    p.set_defaults(func=cmd_train_prior)


def prior_config(args: argparse.Namespace) -> tuple[dict, int, int]:
    from stage2_prior.train import PRIOR_DEFAULTS

    cfg = dict(PRIOR_DEFAULTS)
    for key in ("hidden", "num_layers", "kernel_size", "head_hidden", "cond_drop", "lr",
                "batch_size"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if cfg["kernel_size"] < 3 or cfg["kernel_size"] % 2 == 0:
        raise UsageError(f"--kernel-size {cfg['kernel_size']} must be odd and >= 3")
    if not 0 <= cfg["cond_drop"] < 1:
        raise UsageError(f"--cond-drop {cfg['cond_drop']} must be in [0, 1)")
    batch_size = cfg.pop("batch_size")
    max_epochs = cfg.pop("max_epochs")
    return cfg, batch_size, max_epochs


def cmd_train_prior(args: argparse.Namespace) -> int:
    from stage2_prior.train import train_prior

    model_args, batch_size, max_epochs = prior_config(args)
    res = train_prior(
        args.codes, args.out, model_args, trainer_args=_trainer_kwargs(args, max_epochs),
        batch_size=batch_size, seed=args.seed, num_workers=args.num_workers,
        resume=args.resume, overwrite=args.overwrite,
    )
    if not res.is_global_zero:
        return 0
    _print_metrics(res.metrics, ("val/nll", "val/bits_per_code", "val/nll_uncond"))
    print(f"checkpoint: {res.last}")
    if res.best:
        print(f"best:       {res.best}")
    return 0


def add_sample(subs) -> None:
    p = _sub(subs, "sample", "Sample code grids from the prior and decode them with the VQ-VAE.")
    p.add_argument("--prior", required=True, help="prior checkpoint (.ckpt)")
    p.add_argument("--vqvae", default=None,
                   help="VQ-VAE checkpoint (default: the one recorded in the prior)")
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--class", dest="class_", default=None, help="class index or name")
    p.add_argument("--per-class", type=int, default=None,
                   help="N samples of every class, one row per class")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale (1 = none; needs a class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--sampler", choices=["cached", "naive"], default="cached",
                   help="cached (fast, default) or naive (reference)")
    p.add_argument("--nrow", type=_positive_int, default=None, help="images per grid row")
    p.add_argument("--out", required=True, help="folder for grid.png, NNNNNN.png, codes.npy")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from pipeline.generate import load_pair, make_labels, resolve_class, sample, write_samples

    if args.num <= 0:
        raise UsageError(f"--num {args.num} must be a positive integer")
    if args.per_class is not None and args.per_class <= 0:
        raise UsageError(f"--per-class {args.per_class} must be a positive integer")
    if args.per_class is not None and args.class_ is not None:
        raise UsageError("give --class or --per-class, not both")
    out = Path(args.out)
    check_new_dir(out, args.overwrite, "files (samples?)")
    device = resolve_device(args.device)
    prior, vqvae = load_pair(args.prior, args.vqvae, device)
    class_index = resolve_class(prior, args.class_)
    labels = make_labels(prior, args.num, class_index, args.per_class)
    num = args.num if args.per_class is None else int(labels.shape[0])
    res = sample(prior, vqvae, num, labels=labels, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, guidance=args.guidance, seed=args.seed,
                 batch_size=args.batch_size, device=device, sampler=args.sampler)
    nrow = args.nrow or (args.per_class if args.per_class else min(8, num))
    settings = dict(prior=str(args.prior), vqvae=str(getattr(vqvae, "checkpoint_path", "")),
                    class_index=class_index, per_class=args.per_class,
                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    guidance=args.guidance, seed=args.seed, batch_size=args.batch_size,
                    sampler=args.sampler)
    write_samples(out, res, class_names=list(prior.hparams.class_names), nrow=nrow,
                  settings=settings)
    print(f"samples: {out}/grid.png ({num} images; one PNG each, codes.npy)")
    return 0


# ----------------------------------------------------------------------------- demo


def add_demo(subs) -> None:
    p = _sub(subs, "demo", "Train both stages on embedded MNIST-5k and sample a per-class grid "
             "(CPU-sized; re-running reuses finished stages and resumes unfinished ones).")
    p.add_argument("--out", default="checkpoints/demo")
    p.add_argument("--vqvae-epochs", type=_positive_int, default=None)
    p.add_argument("--prior-epochs", type=_positive_int, default=None)
    p.add_argument("--per-class", type=_positive_int, default=10)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    run_demo(args)
    return 0


# ----------------------------------------------------------------------------- entry points

ADDERS: list[Callable] = [add_train_vqvae, add_encode, add_reconstruct, add_decode, add_train_prior,
                          add_sample, add_demo, add_evaluate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqgen",
        description="Two-stage image generation: a VQ-VAE and a gated PixelCNN prior over its codes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(f"  {EXAMPLES[k]}" for k in EXAMPLES if k in _verbs()),
    )
    subs = parser.add_subparsers(dest="verb", metavar="VERB")
    subs.required = True
    for add in ADDERS:
        add(subs)
    return parser


def _verbs() -> set[str]:
    return {f.__name__[4:].replace("_", "-") for f in ADDERS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vqgen`` with ``argv`` (default sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from stage1_vqvae.checkpoint import CheckpointError

    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, NotADirectoryError, CheckpointError,
            MisconfigurationException) as e:  # the last: bad --accelerator / --devices / ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"vqgen {args.verb}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vqgen {args.verb}: interrupted; re-run the same command to continue "
              "(training: add --resume)", file=sys.stderr)
        return 130


def console_main() -> None:
    sys.exit(main())
