"""Codec verbs: ``compress`` (images -> .vqz) and ``decompress`` (.vqz -> PNGs + codes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqgen.pipeline.cli.common import (
    UsageError,
    add_data_args,
    add_verb,
    claim_out_dir,
    dataset_for,
    positive_int,
    resolve_device,
)
from vqgen.stage1_vqvae.runtime.errors import MissingInputError


def add_compress(subs) -> None:
    p = add_verb(subs, "compress", "Compress images into a .vqz file: VQ-VAE codes, "
                 "entropy-coded under the prior.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="a folder of images (class subfolders named like the prior's classes "
                   "give labels) or image files; or use --data and --split")
    p.add_argument("--prior", required=True,
                   help="the prior: a .ckpt, a pretrained folder or a shipped name (mnist, cifar10)")
    p.add_argument("--vqvae", default=None,
                   help="VQ-VAE checkpoint (default: the one recorded in the prior)")
    add_data_args(p, default=None)
    p.add_argument("--split", default="val", choices=["train", "val"],
                   help="split of --data (default val)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per prior batch; recorded, the decoder reuses it (default 64)")
    p.add_argument("--stream", choices=["batch", "image", "all"], default="batch",
                   help="images per entropy-coder stream and CRC: one batch (default), one "
                   "image (a per-image CRC; ~50 bits more per image), or all")
    p.add_argument("--labels", choices=["code", "null"], default="code",
                   help="code: code each known label (log2 classes bits) and the codes under "
                   "it (default, smaller); null: code every image under the null class")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps; decode on the same type")
    p.add_argument("--report", default=None, help="also write a JSON report here")
    p.add_argument("--out", required=True, help="the .vqz file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out / --report")
    p.set_defaults(func=cmd_compress)


def _check_new_output(path: Path, overwrite: bool, flag: str, inputs: list[Path]) -> None:
    from vqgen.stage1_vqvae.runtime.outputs import check_output_file

    # only the same path is refused: a .vqz inside the image folder it codes is fine
    resolved = path.resolve()
    for p in inputs:
        if p.exists() and p.resolve() == resolved:
            raise UsageError(f"{flag} {path} is also an input of this command; write elsewhere")
    check_output_file(path, overwrite=overwrite, flag=flag)


def _input_set(args: argparse.Namespace, prior, vqvae):
    """(dataset, names, source) for the positional inputs or --data/--split."""
    import numpy as np

    from vqgen.stage1_vqvae.data import DataInfo, ImageDataset
    from vqgen.stage1_vqvae.data.folders import _is_image_file, _scan_folder

    if args.inputs and args.data:
        raise UsageError("give input images (a folder or files) or --data, not both")
    if not args.inputs and not args.data:
        raise UsageError("nothing to compress: give a folder or image files, or --data SPEC "
                         "--split SPLIT")
    from vqgen.pipeline.codec.coder import relative_names
    from vqgen.pipeline.codec.vqz import index_names

    if args.data:
        ds = dataset_for(vqvae, args, args.split)
        return ds, index_names(len(ds)), f"{args.data} {args.split}"
    paths = [Path(p) for p in args.inputs]
    for p in paths:
        if not p.exists():
            raise MissingInputError(f"input {p} does not exist; pass a folder or image files")
    hp = vqvae.hparams
    classes = [str(c) for c in prior.hparams.class_names]
    if len(paths) == 1 and paths[0].is_dir():
        root = paths[0].resolve()
        files, found_labels, folder_classes = _scan_folder(root)  # empty folder: DataError
        # a class subfolder named like one of the prior's classes gives that label
        labels = [classes.index(folder_classes[lab]) if lab >= 0 and
                  folder_classes[lab] in classes else -1 for lab in found_labels]
        names, source = relative_names(files, root), f"folder {root}"
    else:
        dirs = [p for p in paths if p.is_dir()]
        if dirs:
            raise UsageError(f"{dirs[0]} is a folder; give one folder, or image files")
        bad = [p for p in paths if not _is_image_file(p.name)]
        if bad:
            raise UsageError(f"{bad[0]} is not an image file (by its extension)")
        files, labels = [p.resolve() for p in paths], [-1] * len(paths)
        names, source = relative_names(files, None), f"{len(files)} files"
        if len(set(names)) < len(names):
            names = relative_names(files, Path(*_common_parts(files)))
    info = DataInfo(data="files", split="all", num_classes=len(classes),
                    class_names=tuple(classes), channels=int(hp.channels),
                    image_size=tuple(hp.image_size), source=source)
    return ImageDataset(info, np.asarray(labels), paths=files), names, source


def _common_parts(files: list[Path]) -> tuple[str, ...]:
    parts = [f.parent.parts for f in files]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return tuple(common) or ("/",)


def cmd_compress(args: argparse.Namespace) -> int:
    import torch

    from vqgen.pipeline.codec.coder import build_report, compress_codes, encode_batches, pixels_per_image
    from vqgen.pipeline.generate import load_pair
    from vqgen.stage1_vqvae.runtime.fsutil import atomic_file

    out = Path(args.out)
    report = Path(args.report) if args.report else None
    inputs = [Path(args.prior)] + ([Path(args.vqvae)] if args.vqvae else [])
    inputs += [Path(p) for p in args.inputs]
    _check_new_output(out, args.overwrite, "--out", inputs)
    if report is not None:
        _check_new_output(report, args.overwrite, "--report", inputs + [out])
    device = resolve_device(args.device)
    prior, vqvae = load_pair(args.prior, args.vqvae, device)
    ds, names, source = _input_set(args, prior, vqvae)
    if len(ds) == 0:
        raise UsageError(f"{source} holds no images; nothing to compress")
    from vqgen.stage1_vqvae.runtime.data_order import resolve_workers

    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False,
                                         num_workers=resolve_workers(args.num_workers, ds))
    enc = encode_batches(vqvae, loader)  # an unreadable image stops here, naming the file
    res = compress_codes(prior, vqvae, enc.codes, enc.labels, names=names, source=source,
                         batch_size=args.batch_size, stream=args.stream, label_mode=args.labels)
    settings = {"prior": res.header.prior_path, "prior_sha256": res.header.prior_sha256,
                "vqvae": res.header.vqvae_path, "vqvae_sha256": res.header.vqvae_sha256,
                "source": source, "batch_size": args.batch_size, "stream": args.stream,
                "labels": args.labels, "device": device, "out": str(out)}
    rep = build_report(res, enc, pixels_per_image(vqvae), settings)
    with atomic_file(out) as tmp:
        tmp.write_bytes(res.data)
    if report is not None:
        with atomic_file(report) as tmp:
            tmp.write_text(json.dumps(rep, indent=1) + "\n")
    ssim = f", SSIM {rep['ssim']:.3f}" if rep.get("ssim") is not None else ""
    print(f"{out}: {rep['images']} images, {len(res.data):,} bytes, "
          f"{rep['bits_per_image']:.1f} bits per image ({rep['bits_per_pixel']:.3f} bpp; "
          f"ideal {rep['ideal_bits_per_image']:.1f}, overhead {rep['overhead']:.3f}); "
          f"decoded PSNR {rep['psnr_db']:.2f} dB{ssim}"
          + (f"; report {report}" if report else ""))
    return 0


def add_decompress(subs) -> None:
    p = add_verb(subs, "decompress", "Decompress a .vqz file into PNGs (named as the inputs "
                 "were) plus codes.npy.")
    p.add_argument("file", help="the .vqz file")
    p.add_argument("--prior", default=None,
                   help="prior checkpoint (default: the path stored in the file)")
    p.add_argument("--vqvae", default=None,
                   help="VQ-VAE checkpoint (default: the path stored in the file)")
    p.add_argument("--device", default=None,
                   help="default: the device type the file was made on (it must match)")
    p.add_argument("--out", required=True, help="folder for the PNGs, codes.npy, labels.npy")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_decompress)


def _checkpoint(given: str | None, stored: str, what: str, flag: str, where: Path) -> str:
    if given:
        return given
    if not Path(stored).exists():
        raise MissingInputError(f"the {what} {where} was made with, {stored}, is not there; "
                                f"pass it with {flag}")
    return stored


def cmd_decompress(args: argparse.Namespace) -> int:
    import numpy as np

    from vqgen.pipeline.codec.coder import decode_codes, decode_images, open_vqz, output_names
    from vqgen.pipeline.generate import check_compatible
    from vqgen.stage1_vqvae.lit import load_vqvae
    from vqgen.stage1_vqvae.runtime.grid import save_png
    from vqgen.stage1_vqvae.runtime.outputs import owned_output_dir
    from vqgen.stage2_prior.lit import load_prior

    src, out = Path(args.file), Path(args.out)
    if not src.is_file():
        raise MissingInputError(f"{src} does not exist (or is not a file); pass a .vqz file")
    data = src.read_bytes()
    header, _ = open_vqz(data, str(src))  # whole file checked before any model is loaded
    pngs = output_names(header.names)
    # the one output policy: a file in --out that decompress did not write is kept, and
    # refused if it bears a name decompress is about to write
    planned = {Path(n).parts[0] for n in pngs} | {"codes.npy", "labels.npy", "decoded.json"}
    claim_out_dir(out, verb="decompress", overwrite=args.overwrite, manifest="decoded.json",
                  writes=lambda n: n in planned,
                  inputs=[("the input", src), ("--prior", args.prior), ("--vqvae", args.vqvae)])
    device = resolve_device(args.device or header.device_type)
    prior = load_prior(_checkpoint(args.prior, header.prior_path, "prior", "--prior", src),
                       device)
    vqvae = load_vqvae(_checkpoint(args.vqvae, header.vqvae_path, "VQ-VAE", "--vqvae", src),
                       device)
    check_compatible(prior, vqvae)
    dec = decode_codes(data, prior, vqvae, str(src))
    images = decode_images(vqvae, dec.codes, header.batch_size)
    info = {"source": header.source, "count": header.count, "names": header.names,
            "prior": header.prior_path, "prior_sha256": header.prior_sha256,
            "vqvae": header.vqvae_path, "vqvae_sha256": header.vqvae_sha256,
            "class_names": [str(c) for c in prior.hparams.class_names],
            "vqz": str(src.resolve())}
    with owned_output_dir(out, "decoded.json", info) as tmp:
        for name, img in zip(pngs, images, strict=True):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            save_png(img, tmp / name)
        dtype = np.uint16 if header.num_codes <= 65536 else np.int32
        np.save(tmp / "codes.npy", dec.codes.numpy().astype(dtype))
        if bool((dec.labels >= 0).any()):
            np.save(tmp / "labels.npy", dec.labels.numpy())
    print(f"{out}: {header.count} images decoded from {src} ({len(data):,} bytes), "
          f"codes.npy" + (", labels.npy" if bool((dec.labels >= 0).any()) else ""))
    return 0
