"""Stage-two verbs: ``train-prior`` and ``sample``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqgen.pipeline.cli.common import (
    UsageError,
    add_trainer_args,
    add_verb,
    add_workers_arg,
    claim_out_dir,
    positive_int,
    print_metrics,
    resolve_device,
    seed_arg,
    trainer_kwargs,
)
from vqgen.pipeline.defaults import (
    SAMPLE_BATCH_SIZE,
    SAMPLE_GUIDANCE,
    SAMPLE_NUM,
    SAMPLE_TEMPERATURE,
    sampling_defaults,
)


def add_train_prior(subs) -> None:
    from_meta = "num_codes, code_shape and classes come from the codes' meta.json"
    p = add_verb(subs, "train-prior", f"Train the gated PixelCNN prior on code maps ({from_meta}).")
    p.add_argument("--codes", required=True, help="code folder holding train/ and val/")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=positive_int, default=None,
                   help="channels (default 48; 64 from 20,000 maps, 128 on a GPU)")
    g.add_argument("--num-layers", type=positive_int, default=None,
                   help="gated layers (default 8, or enough to see the whole code grid)")
    g.add_argument("--kernel-size", type=int, default=None,
                   help="odd, >= 3 (default 3; 5 when 3 would need more than 12 layers)")
    g.add_argument("--head-hidden", type=positive_int, default=None)
    g.add_argument("--cond-drop", type=float, default=None,
                   help="probability of dropping the class in training (default 0.1), "
                   "enables unconditional and guided sampling from one model")
    g.add_argument("--dropout", type=float, default=None,
                   help="dropout on the gated features while training (default 0.05)")
    g.add_argument("--ema-decay", type=float, default=None,
                   help="decay of the weights' moving average, used for validation, sampling "
                   "and every verb (default 0.998; 0 turns it off)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW's (default 0.3)")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--batch-size", type=positive_int, default=None)
    add_workers_arg(g)
    add_trainer_args(p)
    p.add_argument("--out", default="checkpoints/prior", help="run folder")
    p.set_defaults(func=cmd_train_prior)


def prior_config(args: argparse.Namespace, log=print) -> tuple[dict, int, int]:
    """(model_args, batch_size, max_epochs): PRIOR_DEFAULTS sized for the code grid and the
    data (:func:`stage2_prior.sizing.prior_defaults`, read from ``--codes``'s train/meta.json),
    then the explicit flags. What was changed, and any warning, is printed through ``log``."""
    from vqgen.stage1_vqvae.codes import CodeMapError, read_meta
    from vqgen.stage1_vqvae.runtime.errors import MissingInputError
    from vqgen.stage2_prior.sizing import prior_defaults
    from vqgen.stage2_prior.train import PRIOR_DEFAULTS

    given = {key: getattr(args, key) for key in ("hidden", "num_layers", "kernel_size",
                                                 "head_hidden", "cond_drop", "dropout", "ema_decay",
                                                 "weight_decay", "lr", "batch_size")
             if getattr(args, key) is not None}
    if given.get("kernel_size", 3) < 3 or given.get("kernel_size", 3) % 2 == 0:
        raise UsageError(f"--kernel-size {given['kernel_size']} must be odd and >= 3")
    cfg, reasons = {**PRIOR_DEFAULTS, **given}, []
    # on --resume the checkpoint is the config; an unreadable --codes gets train_prior's error
    if not getattr(args, "resume", False):
        try:
            meta = read_meta(Path(args.codes) / "train")
        except (CodeMapError, MissingInputError):
            meta = None
        if meta is not None:
            cfg, reasons = prior_defaults(PRIOR_DEFAULTS, tuple(meta["code_shape"]),
                                          int(meta["count"]), gpu=uses_gpu(args.accelerator),
                                          given=given)
    for line in reasons:
        log(line if line.startswith("warning:") else f"prior: {line}")
    for key in ("cond_drop", "dropout", "ema_decay"):
        if key in cfg and not 0 <= cfg[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')} {cfg[key]} must be in [0, 1)")
    if not 0 <= cfg.get("weight_decay", 0.0) < float("inf"):
        raise UsageError(f"--weight-decay {cfg['weight_decay']} must be >= 0 and finite")
    batch_size = cfg.pop("batch_size")
    max_epochs = cfg.pop("max_epochs")
    return cfg, batch_size, max_epochs


def uses_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``--accelerator`` choice trains on a GPU (auto: one is present)."""
    import torch

    if accelerator in ("gpu", "cuda", "mps"):
        return True
    mps = getattr(torch.backends, "mps", None)
    return accelerator == "auto" and (torch.cuda.is_available()
                                      or bool(mps and mps.is_available()))


def cmd_train_prior(args: argparse.Namespace) -> int:
    from vqgen.stage2_prior.train import train_prior

    refuse_gaussian_codes(Path(args.codes))
    model_args, batch_size, max_epochs = prior_config(args)
    res = train_prior(
        args.codes, args.out, model_args, trainer_args=trainer_kwargs(args, max_epochs),
        batch_size=batch_size, seed=args.seed, num_workers=args.num_workers,
        resume=args.resume, overwrite=args.overwrite,
    )
    if not res.is_global_zero:
        return 0
    print_metrics(res.metrics, ("val/nll", "val/bits_per_code", "val/nll_uncond"))
    print(f"checkpoint: {res.last}")
    if res.best:
        print(f"best:       {res.best}")
    return 0


def refuse_gaussian_codes(codes: Path) -> None:
    """``--codes`` that is (or sits in the run folder of) a Gaussian VAE: say why there are no
    codes, instead of "no code maps here"."""
    from vqgen.stage1_vqvae.gaussian import NO_CODES
    from vqgen.stage1_vqvae.lit import LitGaussianVAE, stage_one_class
    from vqgen.stage1_vqvae.runtime.checkpoint import read_checkpoint

    if (codes / "train" / "meta.json").is_file():
        return
    candidates = [codes] if codes.suffix == ".ckpt" else [codes / "last.ckpt",
                                                          codes.parent / "last.ckpt"]
    for ckpt in candidates:
        if ckpt.is_file():
            hp = dict(read_checkpoint(ckpt, "vqvae").get("hyper_parameters") or {})
            if stage_one_class(hp) is LitGaussianVAE:
                raise UsageError(f"--codes {codes}: {ckpt} {NO_CODES}")


def add_sample(subs) -> None:
    p = add_verb(subs, "sample", "Sample code grids from the prior and decode them with the VQ-VAE.")
    p.add_argument("--prior", default=None,
                   help="the prior: a .ckpt, a pretrained folder or a shipped name (mnist, cifar10); "
                   "needed except for a Gaussian VAE")
    p.add_argument("--vqvae", default=None,
                   help="VQ-VAE checkpoint (default: the one recorded in the prior); a Gaussian "
                   "VAE alone is sampled from z ~ N(0, I)")
    p.add_argument("--allow-other-vqvae", dest="allow_other_vqvae",
                   action="store_true",
                   help="decode with the --vqvae given even though it is not the file the "
                   "prior's codes were made with (sha256 differs)")
    p.add_argument("--num", type=int, default=None, help=f"number of samples (default {SAMPLE_NUM})")
    p.add_argument("--class", dest="class_", default=None,
                   help="class name, or index as #N (a name wins: --class 1 is the class "
                   "named 1)")
    p.add_argument("--per-class", type=int, default=None,
                   help="N samples of every class, one row per class")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"softmax temperature (default {SAMPLE_TEMPERATURE:g} with --class/--per-class, "
                   "else 1)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale (1 = none; needs a class; default "
                   f"{SAMPLE_GUIDANCE:g} with --class/--per-class, chosen by benchmarks/guidance.py)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="same seed, same samples, whatever --batch-size (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=SAMPLE_BATCH_SIZE)
    p.add_argument("--device", default="auto")
    p.add_argument("--sampler", choices=["cached", "naive"], default="cached",
                   help="cached (fast, default) or naive (reference)")
    p.add_argument("--unconditional", choices=["mixture", "null"], default="mixture",
                   help="without a class, from a class-conditional prior: mixture (default) "
                   "draws each image's class from the training frequencies, then the image; "
                   "null samples the null-class model (weaker)")
    p.add_argument("--nrow", type=positive_int, default=None, help="images per grid row")
    p.add_argument("--out", required=True, help="folder for grid.png, NNNNNN.png, codes.npy")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_sample)


def sampling_settings(args: argparse.Namespace, conditional: bool) -> tuple[float, float, list[str]]:
    """(guidance, temperature, names of the two that came from the defaults): the measured
    class-conditional defaults (pipeline/defaults.py) with a class, 1 and 1 without."""
    chosen = [n for n in ("guidance", "temperature") if getattr(args, n) is None]
    g, t = sampling_defaults(conditional)
    guidance = args.guidance if args.guidance is not None else g
    temperature = args.temperature if args.temperature is not None else t
    return guidance, temperature, chosen


def cmd_sample(args: argparse.Namespace) -> int:
    from vqgen.pipeline.api import Pipeline
    from vqgen.pipeline.generate import (
        SAMPLE_FILES,
        SAMPLES_MANIFEST,
        check_memory,
        grid_columns,
        load_pair,
        make_labels,
        resolve_class,
        write_samples,
    )
    from vqgen.stage1_vqvae.runtime.outputs import check_not_input, numbered_png

    if args.num is not None and args.num <= 0:
        raise UsageError(f"--num {args.num} must be a positive integer")
    if args.per_class is not None and args.per_class <= 0:
        raise UsageError(f"--per-class {args.per_class} must be a positive integer")
    if args.per_class is not None and args.class_ is not None:
        raise UsageError("give --class or --per-class, not both")
    if args.per_class is not None and args.num is not None:
        raise UsageError(f"give --num or --per-class, not both (--per-class {args.per_class} "
                         "makes per_class x num_classes samples)")
    num = SAMPLE_NUM if args.num is None else args.num
    out = Path(args.out)
    claim_out_dir(out, verb="sample", overwrite=args.overwrite, manifest=SAMPLES_MANIFEST,
                  writes=lambda n: numbered_png(n) or n in SAMPLE_FILES,
                  inputs=[("--prior", args.prior), ("--vqvae", args.vqvae)])
    device = resolve_device(args.device)
    if args.prior is None:
        return _sample_without_prior(args, out, device, num)
    prior, vqvae = load_pair(args.prior, args.vqvae, device, args.allow_other_vqvae)
    check_not_input(out, [("the prior's VQ-VAE", vqvae.checkpoint_path)])
    class_index = resolve_class(prior, args.class_)
    if args.per_class is not None:  # the count first: 10**11 labels would not fit either
        num = args.per_class * max(int(prior.model.num_classes), 1)
    check_memory(num, vqvae, None if args.per_class is None else
                 f"--per-class {args.per_class} ({num} images)")
    labels = make_labels(prior, num, class_index, args.per_class)
    guidance, temperature, chosen = sampling_settings(args, labels is not None)
    pipe = Pipeline(prior, vqvae, device)
    pipe.cli_errors = True
    res = pipe.sample(num, classes=labels, temperature=temperature, top_k=args.top_k,
                      top_p=args.top_p, guidance=guidance, seed=args.seed,
                      batch_size=args.batch_size, sampler=args.sampler,
                      unconditional=args.unconditional)
    nrow = args.nrow or (args.per_class if args.per_class else grid_columns(num))
    settings = dict(prior=str(args.prior), vqvae=str(getattr(vqvae, "checkpoint_path", "")),
                    class_index=class_index, per_class=args.per_class,
                    temperature=temperature, top_k=args.top_k, top_p=args.top_p,
                    guidance=guidance, seed=args.seed, batch_size=args.batch_size,
                    sampler=args.sampler, defaults_used=chosen,
                    unconditional=(args.unconditional if labels is None
                                   and prior.model.num_classes > 0 else None))
    write_samples(out, res, class_names=list(prior.hparams.class_names), nrow=nrow,
                  settings=settings)
    print(f"samples: {out}/grid.png ({num} images; one PNG each, codes.npy)")
    return 0


def _sample_without_prior(args: argparse.Namespace, out: Path, device: str, num: int) -> int:
    """``sample --vqvae`` of a Gaussian VAE: decode z ~ N(0, I); a VQ model needs --prior."""
    from vqgen.pipeline.generate import grid_columns, sample_gaussian, write_samples
    from vqgen.stage1_vqvae.lit import has_codes, load_vqvae

    if args.vqvae is None:
        raise UsageError("pass --prior CKPT (a VQ-VAE / VQ-GAN prior) or --vqvae CKPT of a "
                         "Gaussian VAE")
    if args.class_ is not None or args.per_class is not None or args.guidance not in (None, 1.0):
        raise UsageError("--class, --per-class and --guidance need a class-conditional --prior")
    vqvae = load_vqvae(args.vqvae, device)
    if has_codes(vqvae):
        raise UsageError(f"{args.vqvae} is a VQ model: sampling it needs a prior over its codes "
                         "(--prior CKPT from `vqgen train-prior`)")
    res = sample_gaussian(vqvae, num, seed=args.seed, batch_size=args.batch_size,
                          device=device)
    settings = dict(prior=None, vqvae=str(args.vqvae), latent="z ~ N(0, I)", seed=args.seed,
                    batch_size=args.batch_size)
    write_samples(out, res, class_names=[], nrow=args.nrow or grid_columns(num),
                  settings=settings)
    print(f"samples: {out}/grid.png ({num} images decoded from z ~ N(0, I); one PNG each)")
    return 0
