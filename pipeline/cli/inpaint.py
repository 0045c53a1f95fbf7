"""Editing verbs: ``inpaint`` (complete a masked region) and ``repair`` (find the codes the
prior finds unlikely and regenerate them). Thin wrappers over ``pipeline.edit.inpaint``."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from vqgen.pipeline.cli.common import (
    UsageError,
    add_data_args,
    add_verb,
    claim_out_dir,
    data_inputs,
    dataset_for,
    non_negative_int,
    positive_int,
    resolve_device,
    seed_arg,
)
from vqgen.pipeline.defaults import INPAINT_FEATHER as DEFAULT_FEATHER
from vqgen.pipeline.defaults import INPAINT_GROW as DEFAULT_GROW
from vqgen.pipeline.defaults import INPAINT_NUM, REPAIR_NUM
from vqgen.pipeline.defaults import REPAIR_THRESHOLD as DEFAULT_REPAIR_THRESHOLD


def _add_common(p: argparse.ArgumentParser, num_default: int) -> None:
    p.add_argument("--prior", required=True,
                   help="the prior: a .ckpt, a pretrained folder or a shipped name (mnist, cifar10)")
    p.add_argument("--vqvae", default=None,
                   help="VQ-VAE checkpoint (default: the one recorded in the prior)")
    g = p.add_argument_group("inputs (--image, or --data with --split and --index)")
    g.add_argument("--image", nargs="+", default=None,
                   help="image file(s); any mode and size, converted like the training data")
    g.add_argument("--split", default="val", choices=["train", "val"])
    g.add_argument("--index", default="0:8",
                   help="dataset items: N, A:B (B exclusive) or N,M,... (default 0:8)")
    add_data_args(p, default=None)
    s = p.add_argument_group("sampling")
    s.add_argument("--num", type=positive_int, default=num_default,
                   help=f"completions kept per input (default {num_default})")
    s.add_argument("--candidates", type=positive_int, default=None,
                   help="completions drawn per input, from which --num are kept by importance "
                   "resampling (default 8 x --num)")
    s.add_argument("--best", action="store_true",
                   help="keep the --num candidates of highest whole-grid probability instead")
    s.add_argument("--class", dest="class_", default=None, help="class index or name")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale (1 = none; needs --class)")
    s.add_argument("--null-class", action="store_true",
                   help="without --class, use the prior's null class instead of inferring the "
                   "class from the known codes (one forward pass instead of one per class)")
    s.add_argument("--seed", type=seed_arg, default=0)
    s.add_argument("--batch-size", type=positive_int, default=512,
                   help="candidate grids per sampler call (default 512)")
    s.add_argument("--device", default="auto")
    o = p.add_argument_group("output")
    o.add_argument("--paste", action=argparse.BooleanOptionalAction, default=True,
                   help="pixels outside the mask come from the original image (default on)")
    o.add_argument("--feather", type=non_negative_int, default=DEFAULT_FEATHER,
                   help=f"blend the pasted edge over this many pixels inside the mask "
                   f"(default {DEFAULT_FEATHER})")
    o.add_argument("--out", required=True,
                   help="folder for grid.png, {input:06d}_{k}.png, codes.npy, inpaint.json")
    o.add_argument("--overwrite", action="store_true")


def add_inpaint(subs) -> None:
    p = add_verb(subs, "inpaint", "Regenerate a masked region of images in code space; known "
                 "codes after the mask count through importance resampling.")
    _add_common(p, num_default=INPAINT_NUM)
    m = p.add_argument_group("mask (white = regenerate; --mask, --box or both)")
    m.add_argument("--mask", default=None, help="mask image, any size (nearest-neighbour resize)")
    m.add_argument("--box", default=None,
                   help="x0,y0,x1,y1 in pixels of the model-size image (x1, y1 exclusive)")
    m.add_argument("--grow", type=non_negative_int, default=DEFAULT_GROW,
                   help=f"dilate the code mask by this many cells (default {DEFAULT_GROW})")
    p.set_defaults(func=cmd_inpaint)


def add_repair(subs) -> None:
    p = add_verb(subs, "repair", "Find the codes the prior finds unlikely (surprisal) and "
                 "regenerate them.")
    _add_common(p, num_default=REPAIR_NUM)
    r = p.add_argument_group("what to repair").add_mutually_exclusive_group()
    r.add_argument("--threshold", type=float, default=None,
                   help=f"repair positions above this surprisal in bits (default "
                   f"{DEFAULT_REPAIR_THRESHOLD:g})")
    r.add_argument("--fraction", type=float, default=None,
                   help="repair this fraction of each image's most surprising positions")
    p.set_defaults(func=cmd_repair)


def parse_index(text: str, size: int) -> list[int]:
    """``N``, ``A:B`` (B exclusive, either side may be empty) or ``N,M,...`` -> indices, all
    in [0, size)."""
    text = text.replace(" ", "")
    try:
        if ":" in text:
            a, b = text.split(":")
            lo, hi = int(a) if a else 0, int(b) if b else size
            if hi > size or lo < 0:
                raise IndexError
            idx = list(range(lo, hi))
        else:
            idx = [int(t) for t in text.split(",")]
    except ValueError:
        raise UsageError(f"--index {text!r}: expected N, A:B or N,M,...") from None
    except IndexError:
        idx = [-1]
    if not idx:
        raise UsageError(f"--index {text} selects nothing; give e.g. 0:8")
    bad = [i for i in idx if not 0 <= i < size]
    if bad:
        raise UsageError(f"--index {text} is out of range: the split has {size} items "
                         f"(0..{size - 1})")
    return idx


def _load_inputs(args: argparse.Namespace, vqvae):
    """-> (images float (N, C, H, W), dataset labels (N,) or None, per-input source dicts)."""
    import torch

    from vqgen.stage1_vqvae.data import load_image
    from vqgen.stage1_vqvae.runtime.errors import MissingInputError

    hp = vqvae.hparams
    if args.image:
        if args.data is not None:
            raise UsageError("give --image or --data, not both")
        images = []
        for path in args.image:
            if not Path(path).is_file():
                raise MissingInputError(f"--image {path} does not exist; give an image file")
            images.append(load_image(path, int(hp.channels), tuple(hp.image_size)))
        return torch.stack(images), None, [{"source": str(p)} for p in args.image]
    if args.data is None:
        raise UsageError("no input: give --image FILE, or --data (e.g. mnist5k) with "
                         "--split and --index")
    ds = dataset_for(vqvae, args, args.split)
    idx = parse_index(args.index, len(ds))
    items = [ds[i] for i in idx]
    images = torch.stack([x for x, _ in items])
    labels = torch.tensor([int(y) for _, y in items]) if ds.info.num_classes > 0 else None
    src = [{"source": {"data": args.data, "split": args.split, "index": i}} for i in idx]
    if labels is not None:
        for s, y in zip(src, labels.tolist(), strict=True):
            s["label"] = y
    return images, labels, src


OUR_FILES = re.compile(r"(grid\.png|codes\.npy|labels\.npy|inpaint\.json|surprisal\.png|"
                       r"surprisal\.npy|\d{6}_\d+\.png)")


def check_out(args: argparse.Namespace, verb: str) -> None:
    """The output-folder policy (runtime/outputs.py) with inpaint.json as the manifest; the
    images, mask and checkpoints of this command are inputs --out may not touch."""
    from vqgen.pipeline.edit.inpaint import INPAINT_MANIFEST

    inputs = [("--prior", args.prior), ("--vqvae", args.vqvae), ("--mask", getattr(args, "mask", None))]
    inputs += [("--image", p) for p in (args.image or [])]
    claim_out_dir(Path(args.out), verb=verb, overwrite=args.overwrite, manifest=INPAINT_MANIFEST,
                  writes=lambda n: OUR_FILES.fullmatch(n) is not None,
                  inputs=inputs + data_inputs(args))


def _prepare(args: argparse.Namespace):
    """Checks that need no models, the output check, then the models and inputs."""
    out = Path(args.out)
    check_out(args, args.verb)
    if args.candidates is not None and args.candidates < args.num:
        raise UsageError(f"--candidates {args.candidates} must be >= --num {args.num}")
    from vqgen.pipeline.generate import load_pair, make_labels, resolve_class

    device = resolve_device(args.device)
    prior, vqvae = load_pair(args.prior, args.vqvae, device)
    class_index = resolve_class(prior, args.class_)
    images, data_labels, sources = _load_inputs(args, vqvae)
    cond = make_labels(prior, images.shape[0], class_index, None)
    return out, device, prior, vqvae, class_index, images, data_labels, sources, cond


def _settings(args: argparse.Namespace, verb: str, prior, vqvae, class_index, res) -> dict:
    """What inpaint.json records of the run (``res``: the :class:`Inpainting` result)."""
    from vqgen.stage1_vqvae.runtime.pretrained import model_sha256

    vq_path = str(getattr(vqvae, "checkpoint_path", "") or args.vqvae
                  or prior.hparams.vqvae_checkpoint)
    return dict(
        verb=verb, prior=str(args.prior), prior_sha256=model_sha256(prior.checkpoint_path), vqvae=vq_path,
        vqvae_sha256=model_sha256(vq_path) if Path(vq_path).exists() else None,
        class_index=class_index, candidates=res.num_candidates, select="best" if args.best else "importance",
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        guidance=args.guidance, seed=args.seed, batch_size=args.batch_size, paste=args.paste,
        feather=args.feather,
        class_mixture=res.class_prob is not None,
    )


def _options(args: argparse.Namespace) -> dict:
    """The sampling options inpaint and repair share, as Pipeline.inpaint / repair take them."""
    return dict(num=args.num, num_candidates=args.candidates, seed=args.seed,
                feather=args.feather, select="best" if args.best else "importance",
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                guidance=args.guidance, paste=args.paste, batch_size=args.batch_size,
                class_mixture=not args.null_class)


def _pipeline(prior, vqvae, device):
    from vqgen.pipeline.api import Pipeline

    pipe = Pipeline(prior, vqvae, device)
    pipe.cli_errors = True  # errors name this verb's flags
    return pipe


def cmd_inpaint(args: argparse.Namespace) -> int:
    import torch

    from vqgen.pipeline.edit.inpaint import write_inpainting
    from vqgen.pipeline.edit.masks import box_mask, load_mask, parse_box, pixel_to_code_mask

    if args.mask is None and args.box is None:
        raise UsageError("no mask: give --mask FILE (white = regenerate), --box x0,y0,x1,y1, "
                         "or both")
    box = parse_box(args.box) if args.box is not None else None
    out, device, prior, vqvae, class_index, images, data_labels, sources, cond = _prepare(args)
    size = tuple(vqvae.hparams.image_size)
    pixel_mask = torch.zeros(size, dtype=torch.bool)
    if args.mask is not None:
        pixel_mask |= load_mask(args.mask, size)
    if box is not None:
        pixel_mask |= box_mask(box, size)
    code_mask = pixel_to_code_mask(pixel_mask, prior.code_shape, args.grow)
    if not bool(code_mask.any()):
        raise UsageError("the mask masks nothing (no white / non-zero pixel, no box); mark "
                         "the region to regenerate in white")
    if bool(code_mask.all()):
        print("note: the mask covers every code: this is plain sampling from the prior "
              "(nothing of the input is kept)", file=sys.stderr)
    res = _pipeline(prior, vqvae, device).inpaint(images, pixel_mask, classes=cond, grow=args.grow,
                                                  **_options(args)).result
    settings = _settings(args, "inpaint", prior, vqvae, class_index, res)
    settings.update(mask=args.mask, box=list(box) if box else None, grow=args.grow)
    write_inpainting(out, res, images, pixel_mask, settings=settings, inputs=sources,
                     labels=data_labels)
    _print_summary(out, res, None, prior)
    return 0


def cmd_repair(args: argparse.Namespace) -> int:

    from vqgen.pipeline.edit.inpaint import check_repair_args, write_inpainting
    from vqgen.pipeline.edit.masks import code_to_pixel_mask

    threshold, fraction = args.threshold, args.fraction
    if threshold is None and fraction is None:
        threshold = DEFAULT_REPAIR_THRESHOLD
    check_repair_args(threshold, fraction)
    out, device, prior, vqvae, class_index, images, data_labels, sources, cond = _prepare(args)
    done = _pipeline(prior, vqvae, device).repair(images, threshold=threshold, fraction=fraction,
                                                  classes=cond, **_options(args))
    res, bits, code_mask = done.result, done.surprisal, done.result.code_mask
    untouched = int((~code_mask.reshape(code_mask.shape[0], -1).any(1)).sum())
    if untouched:
        print(f"note: {untouched} of {code_mask.shape[0]} inputs have no position above "
              f"{threshold:g} bits: their output is the input (lower --threshold or use "
              "--fraction to change more)", file=sys.stderr)
    pixel_mask = code_to_pixel_mask(code_mask, tuple(images.shape[-2:]))
    settings = _settings(args, "repair", prior, vqvae, class_index, res)
    settings.update(threshold=threshold, fraction=fraction)
    write_inpainting(out, res, images, pixel_mask, settings=settings, inputs=sources,
                     labels=data_labels, bits=bits)
    _print_summary(out, res, bits, prior)
    return 0


def _print_summary(out: Path, res, bits, prior) -> None:
    import math

    names = [str(n) for n in (prior.hparams.get("class_names") or [])]

    n, num = res.codes.shape[:2]
    for i in range(min(n, 8)):
        lp = ", ".join(f"{float(v) / math.log(2):.1f}" for v in -res.log_prob[i])
        extra = f"; before {float(bits[i].sum()):.1f}" if bits is not None else ""
        if res.class_prob is not None:  # the class each completion was inferred to show
            extra += "; classes " + ", ".join(
                f"{_name(names, int(p.argmax()))} ({float(p.max()):.2f})" for p in res.class_prob[i])
        print(f"input {i}: {int(res.code_mask[i].sum())} codes regenerated, ESS "
              f"{float(res.ess[i]):.1f} of {res.num_candidates}; bits after: {lp}{extra}")
    if n > 8:
        print(f"... ({n} inputs; every number is in inpaint.json)")
    print(f"wrote {out}/grid.png, {n * num} x {out}/NNNNNN_K.png, codes.npy, inpaint.json"
          + (", surprisal.png, surprisal.npy" if bits is not None else ""))


def _name(names: list[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)
