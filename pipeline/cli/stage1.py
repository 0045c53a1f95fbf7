"""Stage-one verbs: ``train-vqvae``, ``encode``, ``reconstruct``, ``decode``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqgen.pipeline.cli.common import (
    UsageError,
    add_data_args,
    add_trainer_args,
    add_verb,
    check_new_file,
    claim_out_dir,
    data_inputs,
    dataset_for,
    devices_arg,
    image_size_arg,
    non_negative_float,
    non_negative_int,
    positive_int,
    print_metrics,
    resolve_device,
    trainer_kwargs,
    unit_float,
)

# The names of stage1_vqvae.lit.PRESETS (kept here so --help does not import Lightning;
# tests/test_folder_defaults.py checks they agree).
PRESET_NAMES = ("mnist", "cifar", "px64", "px128")


def add_train_vqvae(subs) -> None:
    p = add_verb(subs, "train-vqvae", "Train the stage-one VQ-VAE, then write code maps of every split.")
    add_data_args(p)
    g = p.add_argument_group("model (defaults from --preset; every value overridable)")
    g.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="mnist: 28x28 grey -> 7x7 codes; cifar: 32x32 colour -> 8x8; px64: 64x64 "
                   "-> 16x16; px128: 128x128 -> 16x16 (default by --data; for folder:PATH "
                   "inferred from a sample of the images)")
    g.add_argument("--channels", type=int, choices=[1, 3], default=None)
    g.add_argument("--image-size", type=image_size_arg, default=None, help="N or HxW")
    g.add_argument("--downsample", type=positive_int, default=None,
                   help="power of two: 4 makes 28 -> 7")
    g.add_argument("--num-codes", type=positive_int, default=None, help="codebook size K")
    g.add_argument("--code-dim", type=positive_int, default=None)
    g.add_argument("--hidden", type=positive_int, default=None)
    g.add_argument("--res-hidden", type=positive_int, default=None)
    g.add_argument("--num-res", type=non_negative_int, default=None)
    g.add_argument("--beta", type=non_negative_float, default=None,
                   help="commitment weight, >= 0 (default 0.25)")
    g.add_argument("--no-ema", action="store_true", help="learn the codebook by gradient, not EMA")
    g.add_argument("--decay", type=unit_float, default=None, help="EMA decay in [0, 1] (default 0.99)")
    g.add_argument("--no-kmeans-init", action="store_true")
    g.add_argument("--dead-after", type=non_negative_int, default=None,
                   help="restart codes unused this many steps (default 50; 0 = never)")
    g.add_argument("--lr", type=non_negative_float, default=None)
    g.add_argument("--batch-size", type=positive_int, default=None)
    add_family_args(p)
    add_trainer_args(p)
    p.add_argument("--no-codes", action="store_true", help="skip writing code maps after training")
    p.add_argument("--device", default="auto", help="device for the final encode (default auto)")
    p.add_argument("--out", default="checkpoints/vqvae", help="run folder (default checkpoints/vqvae)")
    p.set_defaults(func=cmd_train_vqvae)


def vqvae_config(args: argparse.Namespace, log=print) -> tuple[dict, dict, int]:
    """(model_args, data_args, max_epochs) from the preset plus explicit overrides.

    ``--data folder:PATH`` without ``--preset``: channels, image size and preset come from a
    seeded sample of the folder (:mod:`stage1_vqvae.data.inspect`), printed through ``log``.
    """
    from vqgen.stage1_vqvae.data import parse_data_spec
    from vqgen.stage1_vqvae.data.spec import MAX_IMAGE_SIDE
    from vqgen.stage1_vqvae.lit import DEFAULT_PRESET, PRESETS
    from vqgen.stage1_vqvae.model import check_downsample

    kind, path = parse_data_spec(args.data)
    inferred: dict = {}
    num_images = 0
    if kind == "folder" and args.preset is None:
        inferred, num_images = infer_folder(args, path, PRESETS, log)
    name = args.preset or inferred.pop("preset", None) or DEFAULT_PRESET.get(kind, "mnist")
    preset = dict(PRESETS[name])
    preset.update(inferred)
    over = {k: getattr(args, k) for k in ("channels", "image_size", "downsample", "num_codes",
                                         "code_dim", "hidden", "res_hidden", "num_res", "beta",
                                         "decay", "dead_after", "lr", "batch_size")}
    preset.update({k: v for k, v in over.items() if v is not None})
    if args.no_ema:
        preset["ema"] = False
    if args.no_kmeans_init:
        preset["kmeans_init"] = False
    h, w = preset["image_size"]
    if max(h, w) > MAX_IMAGE_SIDE:
        raise UsageError(f"--image-size {h}x{w} is larger than vqgen trains on (sides up to "
                         f"{MAX_IMAGE_SIDE}); pass a smaller size, e.g. 64")
    check_downsample(tuple(preset["image_size"]), preset["downsample"])  # before any data
    data_args = dict(
        data=args.data, data_root=args.data_root, download=args.download,
        channels=preset.pop("channels"), image_size=tuple(preset.pop("image_size")),
        batch_size=preset.pop("batch_size"), num_workers=args.num_workers,
        val_fraction=0.1 if args.val_fraction is None else args.val_fraction, seed=args.seed,
    )
    max_epochs = int(preset.pop("max_epochs"))
    if num_images:
        n_train = num_images - int(round(num_images * data_args["val_fraction"]))
        if n_train < data_args["batch_size"]:
            log(f"note: about {n_train} training images, fewer than one batch of "
                f"{data_args['batch_size']}: each epoch is a single smaller batch")
    preset.update(family_config(args))
    return preset, data_args, max_epochs


GAN_FLAGS = {"disc_start": "--disc-start", "disc_weight": "--disc-weight", "disc_lr": "--disc-lr",
             "disc_width": "--disc-width", "disc_layers": "--disc-layers",
             "rec_loss": "--rec-loss", "perceptual": "--perceptual",
             "perceptual_weight": "--perceptual-weight"}


def add_family_args(p: argparse.ArgumentParser) -> None:
    """The VQ-GAN loss and the Gaussian bottleneck (the stage-one family)."""
    g = p.add_argument_group("VQ-GAN and VAE (same encoder / decoder, other training)")
    g.add_argument("--gan", action="store_true",
                   help="VQ-GAN: add a PatchGAN discriminator (hinge loss, adaptive weight) and "
                   "feature matching; the checkpoint is used like a VQ-VAE's")
    g.add_argument("--disc-start", type=int, default=None,
                   help="steps before the discriminator switches on (default 0)")
    g.add_argument("--disc-weight", type=float, default=None,
                   help="factor on the adaptive adversarial weight (default 0.1; the paper 0.8)")
    g.add_argument("--disc-lr", type=float, default=None, help="discriminator lr (default 2e-4)")
    g.add_argument("--disc-width", type=positive_int, default=None,
                   help="first-layer channels (default by image size: 16 up to 32 px, else 64)")
    g.add_argument("--disc-layers", type=positive_int, default=None,
                   help="stride-2 layers (default by image size: 1 at 28-32 px, 16 px patches)")
    g.add_argument("--rec-loss", choices=["mse", "l1"], default=None,
                   help="VQ-GAN reconstruction loss (default mse, as the VQ-VAE)")
    g.add_argument("--perceptual", choices=["features", "lpips", "none"], default=None,
                   help="features: feature matching on the discriminator (default, offline); "
                   "lpips: needs the lpips package and its VGG16 weights")
    g.add_argument("--perceptual-weight", type=float, default=None, help="default 1.0")
    g.add_argument("--bottleneck", choices=["vq", "gaussian"], default="vq",
                   help="gaussian: a continuous VAE baseline (KL to N(0, I); no codes)")


def family_config(args: argparse.Namespace) -> dict:
    """The model arguments --gan / --bottleneck add (none for a plain VQ-VAE)."""
    given = {k: getattr(args, k) for k in GAN_FLAGS if getattr(args, k, None) is not None}
    if args.bottleneck == "gaussian":
        if args.gan or given:
            raise UsageError("--bottleneck gaussian has no codebook to train adversarially; drop "
                             "--gan and the --disc-* / --rec-loss / --perceptual options")
        return {"bottleneck": "gaussian"}
    if not args.gan:
        if given:
            raise UsageError(f"{GAN_FLAGS[next(iter(given))]} is a VQ-GAN option; add --gan")
        return {}
    return {"gan": True, **given}


def infer_folder(args: argparse.Namespace, path: str, presets: dict, log) -> tuple[dict, int]:
    """Scan the folder and print what was seen and chosen; returns ({preset, channels,
    image_size, downsample}, number of images in the folder). Explicit flags still win."""
    from vqgen.stage1_vqvae.data.inspect import choose_settings, describe, scan_folder

    scan = scan_folder(path, seed=args.seed)
    choice = choose_settings(scan, {k: int(v["downsample"]) for k, v in presets.items()},
                             downsample=args.downsample)
    log(describe(scan, choice))
    return {"preset": choice.preset, "channels": choice.channels,
            "image_size": choice.image_size, "downsample": choice.downsample}, scan.num_images


def cmd_train_vqvae(args: argparse.Namespace) -> int:
    from vqgen.stage1_vqvae.train import train_vqvae

    model_args, data_args, max_epochs = vqvae_config(args)
    res = train_vqvae(
        args.out, model_args, data_args=data_args,
        trainer_args=trainer_kwargs(args, max_epochs), resume=args.resume,
        overwrite=args.overwrite, write_codes=not args.no_codes,
        device=resolve_device(args.device),
    )
    if not res.is_global_zero:
        return 0
    print_metrics(res.metrics, ("val/recon_loss", "val/psnr", "val/codebook_usage",
                                 "val/perplexity", "val/bits_per_dim"))
    print(f"checkpoint: {res.last}")
    if res.best:
        print(f"best:       {res.best}")
    for split, folder in res.codes.items():
        print(f"codes {split + ':':6} {folder}")
    return 0


def add_encode(subs) -> None:
    p = add_verb(subs, "encode", "Encode a data set's splits into code-map folders (OUT/train, OUT/val).")
    p.add_argument("--vqvae", required=True,
                   help="VQ-VAE: a .ckpt, a pretrained folder or a shipped name (mnist, cifar10)")
    add_data_args(p, default=None)
    p.add_argument("--splits", default="train,val", help="comma-separated (default train,val)")
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--device", default="auto", help="one-process encode: auto, cpu, cuda, mps")
    g = p.add_argument_group("distributed (through Lightning; rows stay in dataset order)")
    g.add_argument("--devices", type=devices_arg, default=1,
                   help="devices (processes) per node; > 1 splits the data across them")
    g.add_argument("--num-nodes", type=positive_int, default=1,
                   help="nodes; --out must be on a file system every node sees")
    g.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, mps (default auto)")
    g.add_argument("--strategy", default="ddp", help="Lightning strategy (default ddp)")
    p.add_argument("--out", required=True, help="output folder; each split goes to OUT/<split>")
    p.add_argument("--overwrite", action="store_true",
                   help="allow an --out that holds other files")
    p.set_defaults(func=cmd_encode)


def cmd_encode(args: argparse.Namespace) -> int:
    from pytorch_lightning.utilities import rank_zero_only

    from vqgen.stage1_vqvae.data import SPLITS
    from vqgen.stage1_vqvae.encode import encode_dataset, encode_dataset_distributed
    from vqgen.stage1_vqvae.lit import load_vqvae, require_codes
    from vqgen.stage1_vqvae.runtime.pretrained import model_sha256
    from vqgen.stage1_vqvae.train import check_code_output

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise UsageError(f"--splits {args.splits!r}: expected a comma list of {', '.join(SPLITS)}")
    out = Path(args.out)
    check_code_output(out, args.overwrite, splits, inputs=data_inputs(args) + [("--vqvae", args.vqvae)])
    lit = load_vqvae(args.vqvae)
    require_codes(lit, args.vqvae)
    device = resolve_device(args.device)
    datasets = {s: dataset_for(lit, args, s) for s in splits}  # fail before writing anything
    sha = model_sha256(args.vqvae)  # once for all splits
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
    p = add_verb(subs, "reconstruct", "Write an original-vs-reconstruction grid PNG and print its PSNR.")
    p.add_argument("--vqvae", required=True,
                   help="VQ-VAE: a .ckpt, a pretrained folder or a shipped name (mnist, cifar10)")
    add_data_args(p, default=None)
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--num", type=positive_int, default=32, help="images in the grid (default 32)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from vqgen.stage1_vqvae.lit import load_vqvae
    from vqgen.stage1_vqvae.runtime.fsutil import atomic_file
    from vqgen.stage1_vqvae.runtime.grid import save_grid

    out = Path(args.out)
    check_new_file(out, args.overwrite, inputs=data_inputs(args) + [("--vqvae", args.vqvae)])
    lit = load_vqvae(args.vqvae)
    device = resolve_device(args.device)
    ds = dataset_for(lit, args, args.split)
    n = min(args.num, len(ds))
    images = torch.stack([ds[i][0] for i in range(n)]).to(device)
    model = lit.model.to(device)
    recon = model.reconstruct(images)  # a Gaussian VAE decodes its posterior mean
    mse = float(((recon - images) ** 2).mean())
    rows = []
    per_row = min(8, n)
    for s in range(0, n, per_row):
        rows += [images[s : s + per_row], recon[s : s + per_row]]
    with atomic_file(out) as tmp:
        save_grid(torch.cat(rows).cpu(), tmp, nrow=per_row)
    from vqgen.stage1_vqvae.metrics import psnr_from_mse

    print(f"{out}: {n} {args.split} images (odd rows original, even rows reconstruction); "
          f"MSE {mse:.5f}, PSNR {psnr_from_mse(mse):.2f} dB")
    return 0


DECODE_MANIFEST = "decoded.json"  # what decode wrote (its --overwrite replaces only these)


def add_decode(subs) -> None:
    p = add_verb(subs, "decode", "Decode a code-map folder (or .npy of codes) into PNG images.")
    p.add_argument("--vqvae", required=True,
                   help="VQ-VAE: a .ckpt, a pretrained folder or a shipped name (mnist, cifar10)")
    p.add_argument("--codes", required=True, help="code-map folder or .npy (N, h, w)")
    p.add_argument("--limit", type=positive_int, default=None, help="decode only the first N")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="folder for 000000.png ... and grid.png")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_decode)


def cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from vqgen.stage1_vqvae.codes import load_codes_file, validate_codes
    from vqgen.stage1_vqvae.lit import load_vqvae
    from vqgen.stage1_vqvae.runtime.grid import save_grid, save_png
    from vqgen.stage1_vqvae.runtime.outputs import numbered_png, owned_output_dir

    out = Path(args.out)
    claim_out_dir(out, verb="decode", overwrite=args.overwrite, manifest=DECODE_MANIFEST,
                  writes=lambda n: numbered_png(n) or n in ("grid.png", DECODE_MANIFEST),
                  inputs=[("--vqvae", args.vqvae), ("--codes", args.codes)])
    lit = load_vqvae(args.vqvae)
    codes, meta = load_codes_file(args.codes)
    if codes.shape[0] == 0:
        raise UsageError(f"--codes {args.codes} holds no code maps (0 rows); nothing to decode")
    if args.limit:
        codes = codes[: args.limit]
    validate_codes(codes, lit.num_codes, lit.code_shape, str(args.codes))
    if meta and meta.get("num_codes") not in (None, lit.num_codes):
        raise UsageError(f"{args.codes} was made with num_codes={meta['num_codes']}, the VQ-VAE "
                         f"has {lit.num_codes}; decode with the VQ-VAE that made them")
    device = resolve_device(args.device)
    model = lit.model.to(device)
    n = codes.shape[0]
    record = dict(vqvae=str(args.vqvae), codes=str(args.codes), count=n)
    with owned_output_dir(out, DECODE_MANIFEST, record) as tmp:
        preview = []
        for s in range(0, n, args.batch_size):
            batch = torch.from_numpy(np.asarray(codes[s : s + args.batch_size]).astype(np.int64))
            images = model.decode_codes(batch.to(device)).cpu()
            for i, img in enumerate(images):
                save_png(img, tmp / f"{s + i:06d}.png")
            if len(preview) < 64:
                preview.extend(images[: 64 - len(preview)])
        save_grid(torch.stack(preview), tmp / "grid.png", nrow=8)
    print(f"{out}: {n} images ({n} x {out}/NNNNNN.png), {out}/grid.png, {out}/{DECODE_MANIFEST}")
    return 0
