"""``vqgen export``: a training run (or checkpoint) as a pretrained folder to share."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqgen.pipeline.cli.common import UsageError, add_verb, positive_int, resolve_device


def add_export(subs) -> None:
    p = add_verb(subs, "export", "Turn a training run or checkpoint into a pretrained folder "
                 "(config.json, model.safetensors, README.md model card) that every --prior / "
                 "--vqvae and Pipeline.from_pretrained accept.")
    p.add_argument("run", metavar="RUN_OR_CKPT",
                   help="a prior (or VQ-VAE) run folder or .ckpt, or a demo folder; a prior is "
                   "exported with the VQ-VAE it records")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    p.add_argument("--vqvae", default=None, help="the prior's VQ-VAE (default: the recorded one)")
    p.add_argument("--name", default=None, help="the model's name in its card (default: the folder's)")
    p.add_argument("--description", default="", help="one paragraph for the card")
    p.add_argument("--trained-on", default="", help="the training data in words (default: the "
                   "VQ-VAE's --data)")
    p.add_argument("--note", default="", help="a line for the card's training section")
    m = p.add_argument_group("measured numbers for the card")
    m.add_argument("--evaluate", action="store_true", help="run `vqgen evaluate` now and quote it")
    m.add_argument("--num-samples", type=positive_int, default=2000,
                   help="with --evaluate: samples of each kind (default 2000)")
    m.add_argument("--report", default=None, help="a `vqgen evaluate` metrics.json to quote")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from vqgen.pipeline.export import evaluate_metrics, find_models, save_pair
    from vqgen.stage1_vqvae.runtime.outputs import check_not_input

    if args.evaluate and args.report:
        raise UsageError("give --evaluate or --report, not both")
    metrics = None
    if args.report:
        try:
            metrics = json.loads(Path(args.report).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"--report {args.report} is not a readable metrics.json ({e}); "
                             "pass the metrics.json `vqgen evaluate` wrote") from None
    kind, ckpt = find_models(args.run)
    out = Path(args.out)
    check_not_input(out, [("RUN_OR_CKPT", args.run)])
    device = resolve_device(args.device)
    if kind == "vqvae":
        return _export_vqvae(args, ckpt, out)
    from vqgen.pipeline.generate import load_pair

    prior, vqvae = load_pair(ckpt, args.vqvae, device)
    if args.evaluate:
        metrics = evaluate_metrics(str(ckpt), vqvae.checkpoint_path, args.num_samples, device)
    save_pair(prior.cpu(), vqvae.cpu(), out, name=args.name, description=args.description,
              trained_on=args.trained_on, note=args.note, metrics=metrics,
              overwrite=args.overwrite)
    print(f"exported {ckpt} with {vqvae.checkpoint_path} to {out}/ (README.md, config.json, "
          "vqvae/, prior/)")
    return 0


def _export_vqvae(args: argparse.Namespace, ckpt: Path, out: Path) -> int:
    from vqgen.pipeline.export import source_record, training_record
    from vqgen.stage1_vqvae.lit import load_vqvae
    from vqgen.stage1_vqvae.runtime.fsutil import atomic_dir
    from vqgen.stage1_vqvae.runtime.outputs import OutputError
    from vqgen.stage1_vqvae.runtime.pretrained import is_pretrained

    if out.exists() and (not args.overwrite or not is_pretrained(out)):
        raise OutputError(f"--out {out} exists; pass another --out"
                          + ("" if args.overwrite else " (or --overwrite an earlier export)"))
    lit = load_vqvae(ckpt)
    hp = lit.hparams
    card = (f"# {args.name or out.name}\n\n{args.description}\n\nA vqgen stage-one model "
            f"({type(lit).__name__}): {hp.channels}x{hp.image_size[0]}x{hp.image_size[1]} images, "
            f"trained on {args.trained_on or hp.data}. {args.note}\n\n"
            f"    vqgen reconstruct --vqvae {out} --data {hp.data} --out recon.png\n")
    with atomic_dir(out) as tmp:
        lit.save_pretrained(tmp, card=card, source=source_record(lit), training=training_record(lit))
    print(f"exported {ckpt} to {out}/ (README.md, config.json, model.safetensors)")
    return 0
