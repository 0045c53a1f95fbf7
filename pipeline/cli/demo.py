"""``vqgen demo``: the README's main job, sized for a laptop CPU. It drives the other verbs
(their parsers give it their defaults), so it lives with the CLI.

Trains stage one on the embedded MNIST-5k digits, writes code maps, trains the prior,
and samples one row per class. Each finished stage leaves ``done.json``; re-running reuses
finished stages and resumes an unfinished one from its ``last.ckpt`` (Ctrl-C is safe).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from vqgen.pipeline.cli.common import (
    add_verb,
    claim_out_dir,
    non_negative_float,
    positive_float,
    positive_int,
    resolve_device,
    seed_arg,
)
from vqgen.pipeline.defaults import DEMO_GUIDANCE, DEMO_PRIOR_EPOCHS, DEMO_TEMPERATURE, DEMO_VQVAE_EPOCHS
from vqgen.pipeline.formatting import format_number
from vqgen.stage1_vqvae.runtime.fsutil import atomic_file


def add_demo(subs) -> None:
    p = add_verb(subs, "demo", "Train both stages on embedded MNIST-5k and sample a per-class grid "
             "(CPU-sized; re-running reuses finished stages and resumes unfinished ones).")
    p.add_argument("--out", default="checkpoints/demo")
    p.add_argument("--vqvae-epochs", type=positive_int, default=None)
    p.add_argument("--prior-epochs", type=positive_int, default=None)
    p.add_argument("--per-class", type=positive_int, default=10)
    p.add_argument("--guidance", type=non_negative_float, default=None)
    p.add_argument("--temperature", type=positive_float, default=None)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args)
    return 0


def _done(folder: Path) -> dict | None:
    marker = folder / "done.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def _mark_done(folder: Path, info: dict, name: str = "done.json") -> None:
    with atomic_file(folder / name) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")


DEMO_MANIFEST = "demo.json"  # marks a folder as the demo's: re-runs may resume in it
DEMO_PARTS = ("vqvae", "prior", "samples", DEMO_MANIFEST)


def claim_demo_dir(out: Path) -> None:
    """The output policy for ``demo --out``, which has no ``--overwrite``: a new or empty
    folder, or a demo's own (``demo.json``, or an earlier vqgen's demo: ``vqvae/`` holding a
    run) to resume in. Anything else in it is the user's and refused here; inside the demo's
    folders the verbs' own rules keep the user's files (training replaces only what its run
    wrote, sampling only its listed files, and refuses to write over one it did not)."""
    from vqgen.pipeline.generate import SAMPLE_FILES, SAMPLES_MANIFEST
    from vqgen.stage1_vqvae.runtime.outputs import claim_output_dir, lock_output, numbered_png

    ours = (out / DEMO_MANIFEST).is_file() or (out / "vqvae" / "last.ckpt").is_file() or (
        out / "vqvae" / "done.json").is_file()
    claim_output_dir(out, verb="demo", overwrite=ours, owned=set(DEMO_PARTS) if ours else set(),
                     writes=lambda n: n in DEMO_PARTS)
    if (out / "samples").exists():
        claim_out_dir(out / "samples", verb="demo", overwrite=True, manifest=SAMPLES_MANIFEST,
                      writes=lambda n: numbered_png(n) or n in SAMPLE_FILES)
    lock_output(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / DEMO_MANIFEST).is_file():
        _mark_done(out, {"verb": "demo", "files": list(DEMO_PARTS[:3])}, DEMO_MANIFEST)


def _run_stage(step: str, what: str, folder: Path, train: Callable[[bool], dict]) -> dict:
    """Reuse a finished stage (its done.json), else train it (resuming its last.ckpt) and
    mark it done; returns its metrics and seconds."""
    if (info := _done(folder)) is not None:
        print(f"{step}: reusing {folder} (finished; delete it to retrain)")
        return info
    resume = (folder / "last.ckpt").is_file()
    print(f"{step}: {'resuming' if resume else 'training'} {what} in {folder}", flush=True)
    t1 = time.monotonic()
    info = train(resume)
    info["seconds"] = round(time.monotonic() - t1, 1)  # fit (+ code maps for stage one)
    _mark_done(folder, info)
    return info


def run_demo(args: argparse.Namespace) -> dict[str, Path]:
    from vqgen.pipeline.cli.stage1 import add_train_vqvae, vqvae_config
    from vqgen.pipeline.cli.stage2 import add_train_prior, prior_config
    from vqgen.pipeline.generate import load_pair, make_labels, sample, write_samples
    from vqgen.stage1_vqvae.train import train_vqvae
    from vqgen.stage2_prior.train import train_prior

    t0 = time.monotonic()
    out = Path(args.out)
    vq_dir, prior_dir, samples_dir = out / "vqvae", out / "prior", out / "samples"
    claim_demo_dir(out)
    device = resolve_device(args.device)
    parser = argparse.ArgumentParser()  # the two verbs' own defaults, as the CLI has them
    subs = parser.add_subparsers()
    add_train_vqvae(subs)
    add_train_prior(subs)

    def vqvae_stage(resume: bool) -> dict:
        vargs = parser.parse_args(["train-vqvae", "--data", "mnist5k", "--seed", str(args.seed)])
        model_args, data_args, _ = vqvae_config(vargs)
        res = train_vqvae(vq_dir, model_args, data_args=data_args,
                          trainer_args=dict(max_epochs=args.vqvae_epochs or DEMO_VQVAE_EPOCHS,
                                            accelerator=args.accelerator),
                          resume=resume, overwrite=not resume, device=device)
        return {k: res.metrics.get(k) for k in ("val/psnr", "val/codebook_usage",
                                                "val/perplexity")}

    def prior_stage(resume: bool) -> dict:
        pargs = parser.parse_args(["train-prior", "--codes", str(vq_dir / "codes")])
        model_args, batch_size, _ = prior_config(pargs)
        res = train_prior(vq_dir / "codes", prior_dir, model_args,
                          trainer_args=dict(max_epochs=args.prior_epochs or DEMO_PRIOR_EPOCHS,
                                            accelerator=args.accelerator),
                          batch_size=batch_size, seed=args.seed, resume=resume,
                          overwrite=not resume)
        return {k: res.metrics.get(k) for k in ("val/nll", "val/bits_per_code")}

    info = _run_stage("[1/3] stage one", "the VQ-VAE", vq_dir, vqvae_stage)
    print(f"      PSNR {format_number(info.get('val/psnr'), '.2f')} dB, codebook usage "
          f"{format_number(info.get('val/codebook_usage'), '.1%')} ({time.monotonic() - t0:.0f}s)",
          flush=True)
    pinfo = _run_stage("[2/3] stage two", "the prior", prior_dir, prior_stage)
    print(f"      held-out {format_number(pinfo.get('val/bits_per_code'), '.3f')} bits per code "
          f"({time.monotonic() - t0:.0f}s)", flush=True)

    print(f"[3/3] sampling {args.per_class} per class into {samples_dir}", flush=True)
    # the VQ-VAE by its place in this folder, not the absolute path the prior records: a
    # moved demo folder still samples (its sha256 is checked all the same)
    prior, vqvae = load_pair(prior_dir / "last.ckpt", vq_dir / "last.ckpt", device)
    labels = make_labels(prior, 0, None, args.per_class)
    guidance = DEMO_GUIDANCE if args.guidance is None else args.guidance
    temperature = DEMO_TEMPERATURE if args.temperature is None else args.temperature
    res = sample(prior, vqvae, int(labels.shape[0]), labels=labels, guidance=guidance,
                 temperature=temperature, seed=args.seed, device=device)
    write_samples(samples_dir, res, class_names=list(prior.hparams.class_names),
                  nrow=args.per_class,
                  settings=dict(prior=str(prior_dir / "last.ckpt"), per_class=args.per_class,
                                guidance=guidance, temperature=temperature, seed=args.seed))
    paths = {
        "vqvae": vq_dir / "last.ckpt", "codes": vq_dir / "codes", "prior": prior_dir / "last.ckpt",
        "grid": samples_dir / "grid.png", "logs": out,
    }
    print(f"done in {time.monotonic() - t0:.0f}s")
    print(f"  VQ-VAE checkpoint:  {paths['vqvae']}")
    print(f"  code maps:          {paths['codes']}/{{train,val}}")
    print(f"  prior checkpoint:   {paths['prior']}")
    print(f"  reconstructions:    {vq_dir / 'previews'}")
    print(f"  samples:            {paths['grid']} (one row per class)")
    return paths
