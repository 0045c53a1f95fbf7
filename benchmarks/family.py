"""The stage-one family on one data set: VQ-VAE, VQ-GAN and Gaussian VAE with the same
encoder / decoder (the preset's) and the same wall-clock training budget each, trained one
after another, then scored side by side by ``vqgen evaluate --compare`` (the report's own
functions, so the numbers are the report's).

Prints one JSON object: per model the comparison row (PSNR, SSIM, sharpness ratio, rFD,
bits/dim, codebook usage) plus steps and training images/s, and the headline ratios:

- VQ-GAN vs VQ-VAE: rFD change (target <= -30%), |1 - sharpness| of each (closer to 1 is
  better), PSNR difference (target >= -1 dB);
- Gaussian VAE vs VQ-VAE: bits/dim and PSNR;
- training images/s of the VQ-GAN relative to the VQ-VAE.

With ``--prior-budget S``: each VQ model's codes are encoded (``vqgen encode``), a stage-two
prior is trained on them for S seconds (``vqgen train-prior``'s defaults and code path), and
``vqgen evaluate --prior`` scores its samples: Fréchet distance and class accuracy of the
class-conditional ones, FD and class entropy of the unconditional ones (per model under
"samples"). The Gaussian VAE has no codes, so no prior.

    OMP_NUM_THREADS=1 python benchmarks/family.py --budget 210 [--data mnist5k] [--out DIR]
        [--prior-budget 120] [-- extra train-vqvae flags for every model]
    OMP_NUM_THREADS=1 python benchmarks/family.py --smoke    # tiny models, priors too: seconds

Training runs ``train-vqvae`` / ``train-prior``'s parsers and trainer settings (so extra flags
such as ``--limit-train-batches`` apply), on the CPU, with the budget as ``--max-time``.
``--smoke`` trains the test suite's tiny models for a few batches each (priors included,
``--prior-budget 10``) in a temp folder, on 200 mnist5k digits written there as PNGs (unless
--data), and scores 20 samples with a one-epoch classifier: a check that the benchmark runs,
its numbers measure nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--budget", type=float, default=210.0, help="training seconds per model")
    ap.add_argument("--out", default=None, help="folder for the runs and the report")
    ap.add_argument("--models", default="vq,vqgan,vae")
    ap.add_argument("--gan-flags", default="", help="extra flags for the VQ-GAN only")
    ap.add_argument("--reuse", action="store_true",
                    help="keep models (and priors) already trained in --out and train the rest")
    ap.add_argument("--prior-budget", type=float, default=0.0,
                    help="seconds to train a prior on each VQ model's codes, then score its "
                    "samples (0 = no priors)")
    ap.add_argument("--num-samples", type=int, default=None,
                    help="samples per kind for the prior's scores (default 1000; smoke 20)")
    ap.add_argument("--smoke", action="store_true", help="tiny models, a few batches: checks it runs")
    args, extra = ap.parse_known_args(argv)
    extra = [e for e in extra if e != "--"]
    args.prior_flags, args.classifier_config, args.sigmas = [], None, None
    if args.smoke:
        from benchmarks._smoke import (
            FAST_SIGMAS,
            TINY_PRIOR,
            TINY_VQVAE_MODEL,
            TINY_VQVAE_TRAIN,
            tiny_classifier_config,
        )

        extra = [*TINY_VQVAE_MODEL, *TINY_VQVAE_TRAIN, "--num-workers", "0", *extra]
        args.gan_flags = args.gan_flags or "--disc-width 8"
        args.prior_budget = args.prior_budget or 10.0
        args.prior_flags = TINY_PRIOR
        args.classifier_config = tiny_classifier_config()
        args.sigmas = FAST_SIGMAS
    args.num_samples = args.num_samples or (20 if args.smoke else 1000)
    with tempfile.TemporaryDirectory(prefix="vqgen_family_") as tmp:
        if args.smoke and args.data == "mnist5k":  # 200 PNGs: every evaluation over 20 images
            from benchmarks._smoke import digit_folder

            args.data = "folder:" + str(digit_folder(Path(tmp) / "digits", 20))
        return run_family(args, extra, Path(args.out or tmp))


def run_family(args: argparse.Namespace, extra: list[str], root: Path) -> dict:
    """Train (or reuse) each model under ``root``, compare them, print and return the JSON."""
    from vqgen.pipeline.cli import build_parser
    from vqgen.pipeline.cli.common import trainer_kwargs
    from vqgen.pipeline.cli.stage1 import vqvae_config
    from vqgen.pipeline.evaluation.evaluate import evaluate
    from vqgen.stage1_vqvae.train import train_vqvae

    flags = {"vq": [], "vqgan": ["--gan", *args.gan_flags.split()],
             "vae": ["--bottleneck", "gaussian"]}
    runs, speed = {}, {}
    for name in args.models.split(","):
        out = root / name
        if args.reuse and (out / "speed.json").is_file():
            speed[name] = json.loads((out / "speed.json").read_text())
            runs[name] = out / "last.ckpt"
            continue
        cli = build_parser().parse_args(["train-vqvae", "--data", args.data, "--out", str(out),
                                         "--no-codes", "--overwrite", *flags[name], *extra])
        model_args, data_args, max_epochs = vqvae_config(cli)
        # the CLI's trainer settings (an extra --max-epochs fits the schedule to the budget)
        trainer_args = {**trainer_kwargs(cli, max_epochs), "max_time": str(args.budget),
                        "accelerator": "cpu", "quiet": True}
        t0 = time.perf_counter()
        res = train_vqvae(out, model_args, data_args=data_args, overwrite=True, write_codes=False,
                          trainer_args=trainer_args)
        wall = time.perf_counter() - t0
        steps = int(torch.load(res.last, weights_only=True)["global_step"])
        speed[name] = {"steps": steps, "train_wall_s": round(wall, 1),
                       "train_images_per_s": steps * data_args["batch_size"] / wall,
                       "final_val": {k: v for k, v in res.metrics.items() if k.startswith("val/")}}
        runs[name] = res.last
        (out / "speed.json").write_text(json.dumps(speed[name]))
        print(f"{name}: {steps} steps in {wall:.0f}s", flush=True)

    names = list(runs)
    report = evaluate(runs[names[0]], None, None, root / "report", overwrite=True,
                      compare=[runs[n] for n in names[1:]], device="cpu",
                      num_samples=args.num_samples, classifier_config=args.classifier_config,
                      **({"sigmas": args.sigmas} if args.sigmas else {}),
                      classifier_cache=root / "classifier", log=lambda s: None)
    rows = {n: r for n, r in zip(names, report["comparison"]["rows"], strict=True)}
    result: dict = {"benchmark": "family", "smoke": args.smoke, "data": args.data,
                    "budget_s_per_model": args.budget, "prior_budget_s": args.prior_budget,
                    "threads": torch.get_num_threads(), "extra_flags": extra,
                    "models": {n: {**rows[n], **speed[n]} for n in names},
                    "report": str(root / "report")}
    if "vq" in rows and "vqgan" in rows:
        vq, vg = rows["vq"], rows["vqgan"]
        result["vqgan_vs_vqvae"] = {
            "rfd_change": (vg["rfd"] - vq["rfd"]) / vq["rfd"] if vq["rfd"] else None,
            "sharpness_distance_from_1": {"vqvae": abs(1 - vq["sharpness_ratio"]),
                                          "vqgan": abs(1 - vg["sharpness_ratio"])},
            "psnr_difference_db": vg["psnr_db"] - vq["psnr_db"],
            "train_speed_ratio": (speed["vqgan"]["train_images_per_s"]
                                  / speed["vq"]["train_images_per_s"]),
        }
    if "vq" in rows and "vae" in rows:
        result["vae_vs_vqvae"] = {
            "bits_per_dim": {"vae": rows["vae"]["bits_per_dim"], "vqvae": rows["vq"]["bits_per_dim"]},
            "psnr_db": {"vae": rows["vae"]["psnr_db"], "vqvae": rows["vq"]["psnr_db"]},
        }
    if args.prior_budget > 0:
        for name in names:
            if name != "vae":
                result["models"][name]["samples"] = prior_samples(
                    runs[name], root / name, args, classifier_cache=root / "classifier")
        if "vq" in rows and "vae" in rows:
            # unconditional samples of each: the VAE's z ~ N(0, I), the VQ-VAE's prior's
            result["vae_vs_vqvae"]["sample_fd"] = {
                "vae": rows["vae"]["sample_fd"],
                "vqvae": result["models"]["vq"]["samples"].get("unconditional", {}).get("fd")}
    print(json.dumps(result, indent=2, default=str))
    return json.loads(json.dumps(result, default=str))


def prior_samples(ckpt: Path, run: Path, args: argparse.Namespace, *, classifier_cache: Path) -> dict:
    """Encode ``ckpt``'s data, train a prior on the codes for ``args.prior_budget`` seconds
    (train-prior's defaults), and return the sample scores of ``evaluate --prior``."""
    from vqgen.pipeline.cli import build_parser, main
    from vqgen.pipeline.cli.common import trainer_kwargs
    from vqgen.pipeline.cli.stage2 import prior_config
    from vqgen.pipeline.evaluation.evaluate import evaluate
    from vqgen.stage2_prior.train import train_prior

    codes, prior_dir = run / "codes", run / "prior"
    if not (args.reuse and (prior_dir / "speed.json").is_file()):
        if main(["encode", "--vqvae", str(ckpt), "--out", str(codes), "--overwrite",
                 "--device", "cpu", *(["--num-workers", "0"] if args.smoke else [])]) != 0:
            raise SystemExit(f"encode {ckpt} failed")
        cli = build_parser().parse_args(["train-prior", "--codes", str(codes), "--out", str(prior_dir),
                                         *args.prior_flags])
        model_args, batch_size, max_epochs = prior_config(cli, log=lambda s: None)
        t0 = time.perf_counter()
        res = train_prior(codes, prior_dir, model_args, batch_size=batch_size, overwrite=True,
                          trainer_args={**trainer_kwargs(cli, max_epochs),
                                        "max_time": str(args.prior_budget), "accelerator": "cpu",
                                        "quiet": True})
        wall = time.perf_counter() - t0
        steps = int(torch.load(res.last, weights_only=True)["global_step"])
        (prior_dir / "speed.json").write_text(json.dumps({
            "steps": steps, "train_wall_s": round(wall, 1),
            "val_bits_per_code": res.metrics.get("val/bits_per_code")}))
    speed = json.loads((prior_dir / "speed.json").read_text())
    report = evaluate(ckpt, prior_dir / "last.ckpt", None, run / "prior_report", overwrite=True,
                      num_samples=args.num_samples, device="cpu",
                      classifier_config=args.classifier_config,
                      **({"sigmas": args.sigmas} if args.sigmas else {}),
                      classifier_cache=classifier_cache, log=lambda s: None)
    samples = report["samples"] or {}
    keep = ("fd", "class_accuracy", "class_entropy_fraction_of_log_k", "precision", "recall")
    out = {kind: {k: v for k, v in samples[kind].items() if k in keep}
           for kind in ("conditional", "unconditional") if kind in samples}
    return {"prior": speed, **out,
            "bits_per_dim_bound": (report["whole_model"] or {}).get("bits_per_dim"),
            "report": str(run / "prior_report")}


if __name__ == "__main__":
    main()
