"""Inpainting and repair benchmark on the demo's checkpoints (issue 13).

Prints one JSON line with at least:

- ``inpaint_class_acc`` {mask: {"prefix", "importance", ...}}: the project's classifier
  (``pipeline.evaluation.evaluate.get_classifier``) on one completion per val digit, completed
  *without* the class, by prefix-only sampling from the null class (known codes after the
  mask ignored) and by importance resampling of ``--candidates`` proposals as ``vqgen
  inpaint`` does by default (the class inferred: candidates drawn under every class);
  for reference also ``importance_null_class`` (``--null-class``),
  ``prefix_true_class`` (prefix-only with the true class given) and, for the bottom half
  (known codes all before masked ones), ``exact_class_posterior``: the class drawn from the
  prior's exact p(class | known codes), then completed under it, i.e. exact samples of what
  importance resampling approximates (with ``class_posterior_bottom_half``: how often that
  posterior's argmax is the true class, and its mean probability); ``inpaint_bits`` the same
  completions' mean code length (bits per grid) under the class mixture, ``inpaint_mean_ess``
  the mean effective sample size;
- ``grow``: importance accuracy of the centre box with the code mask grown by 0 and 1 cell;
- ``repair`` {"acc_clean", "acc_corrupted", "acc_repaired", "recall", "precision",
  "psnr_inside_*", "psnr_outside_*"} per corruption (uniform noise, a block of another
  digit) of a 10x10 block at a random place (also ``acc_repaired_no_paste``: every pixel
  decoded), a threshold sweep of recall / precision, and ``repair_clean_inputs``: repair
  run on the clean digits (codes flagged, accuracy before / after: the cost of false alarms);
- ``seconds_1x8`` (one image, 8 completions from 64 candidates) and ``seconds_64x8``.

    python benchmarks/inpaint.py [--demo /work/runs/demo] [--num-images 200]
    python benchmarks/inpaint.py --smoke    # tiny demo, 8 digits, 2 candidates: seconds

``--smoke`` trains a tiny demo-shaped pair and a one-epoch classifier in a temp folder and
runs every measurement on 8 digits with 2 candidates: a check that the benchmark runs, its
numbers measure nothing.

Targets: importance >= prefix + 20 points on the top-half mask (32 candidates); bottom half
>= 80% without the class; repaired accuracy at least halfway from corrupted back to clean;
seconds_1x8 < 1 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages

MASKS = {  # x0, y0, x1, y1 on the 28x28 digits
    "bottom_half": (0, 14, 28, 28),
    "top_half": (0, 0, 28, 14),
    "left_half": (0, 0, 14, 28),
    "centre_14x14": (7, 7, 21, 21),
}


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    """PSNR in dB over the pixels where ``where`` (N, H, W) is True (images (N, C, H, W))."""
    err = ((a - b) ** 2).mean(1)[where]
    return 10 * math.log10(1 / max(float(err.mean()), 1e-12))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default=None, help="a finished `vqgen demo` folder "
                    "(default checkpoints/demo; smoke: a tiny one trained first)")
    ap.add_argument("--num-images", type=int, default=None,
                    help="val digits per measurement (default 200; smoke 8)")
    ap.add_argument("--candidates", type=int, default=None, help="default 32 (smoke 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 2; smoke: as is)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="repair threshold in bits (default: the CLI's)")
    ap.add_argument("--classifier-cache", default=None,
                    help="default DATA_ROOT/.vqgen_cache (smoke: a temp folder)")
    ap.add_argument("--smoke", action="store_true", help="tiny models, 8 digits: checks it runs")
    args = ap.parse_args(argv)
    args.num_images = args.num_images or (8 if args.smoke else 200)
    args.candidates = args.candidates or (2 if args.smoke else 32)
    if args.threads is None and not args.smoke:
        args.threads = 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vqgen_inpaint_") as tmp:
        config = None
        if args.smoke:
            from benchmarks._smoke import tiny_classifier_config, tiny_demo

            args.demo = args.demo or str(tiny_demo(Path(tmp) / "demo"))
            args.classifier_cache = args.classifier_cache or str(Path(tmp) / "classifier")
            config = tiny_classifier_config()
        args.demo = args.demo or "checkpoints/demo"
        return measure(args, config)


def measure(args: argparse.Namespace, classifier_config: dict | None) -> dict:
    """Every measurement and the JSON line; ``classifier_config`` None: the default one."""

    from vqgen.pipeline.cli.inpaint import DEFAULT_REPAIR_THRESHOLD
    from vqgen.pipeline.edit.candidates import class_log_likelihoods
    from vqgen.pipeline.edit.inpaint import inpaint, repair_mask, surprisal
    from vqgen.pipeline.edit.masks import box_mask, code_to_pixel_mask, pixel_to_code_mask
    from vqgen.pipeline.evaluation.classifier import CLASSIFIER_CONFIG, classify, get_classifier
    from vqgen.pipeline.evaluation.data import eval_datasets
    from vqgen.pipeline.generate import load_pair

    t_start = time.perf_counter()
    demo = Path(args.demo)
    prior, vqvae = load_pair(demo / "prior" / "last.ckpt")
    train_ds, val_ds = eval_datasets(vqvae)
    hp = vqvae.hparams
    cache = Path(args.classifier_cache or Path(hp.data_root or "data") / ".vqgen_cache")
    clf, _ = get_classifier(train_ds, cache, val_fraction=float(hp.val_fraction),
                            split_seed=int(hp.seed), config=classifier_config or CLASSIFIER_CONFIG,
                            log=lambda s: None)
    n = min(args.num_images, len(val_ds))
    items = [val_ds[i] for i in range(n)]
    images = torch.stack([x for x, _ in items])
    labels = torch.tensor([int(y) for _, y in items])
    size = tuple(images.shape[-2:])

    def log(text: str) -> None:  # progress on stderr; stdout stays one JSON line
        print(f"[{time.perf_counter() - t_start:6.0f} s] {text}", file=sys.stderr, flush=True)

    def acc(imgs: torch.Tensor) -> float:
        return round(float((torch.from_numpy(classify(clf, imgs)[1]) == labels).float().mean()), 4)

    result: dict = {"benchmark": "inpaint", "smoke": args.smoke, "num_images": n,
                    "candidates": args.candidates, "threads": torch.get_num_threads()}

    # --------------------------------------------------------------- completion quality
    class_acc, bits, ess = {}, {}, {}
    for name, box in MASKS.items():
        pm = box_mask(box, size)
        cm = pixel_to_code_mask(pm, prior.code_shape)
        class_acc[name], bits[name], ess[name] = {}, {}, {}
        runs = {"prefix": dict(num_candidates=1, select="proposal"),
                "importance": dict(num_candidates=args.candidates),  # the CLI's default
                "importance_null_class": dict(num_candidates=args.candidates,
                                              class_mixture=False),
                "prefix_true_class": dict(num_candidates=1, select="proposal", labels=labels)}
        for how, kw in runs.items():
            t0 = time.perf_counter()
            res = inpaint(prior, vqvae, images, cm, num=1, seed=0, pixel_mask=pm, **kw)
            class_acc[name][how] = acc(res.images[:, 0])
            ess[name][how] = round(float(res.ess.mean()), 2)
            log(f"{name} {how}: accuracy {class_acc[name][how]}, "
                f"{time.perf_counter() - t0:.1f} s")
            # one measure for every run: the class-mixture code length (bits per grid)
            grid_bits = surprisal(prior, res.codes[:, 0], class_mixture=True).sum((1, 2))
            bits[name][how] = round(float(grid_bits.mean()), 2)
        if name == "bottom_half":
            # the mask is a raster suffix: p(class | known codes) is exact from one forward
            # pass per class, so drawing the class from it and completing under that class
            # samples the mixture's exact p(masked | known): what importance resampling
            # approaches as the candidates grow, a ceiling for sampling from this prior
            with torch.inference_mode():
                codes = vqvae.model.eval().encode(images)
                per_pos, _ = class_log_likelihoods(prior.model.eval(), codes)
            known_ll = per_pos.masked_fill(cm, 0).sum((2, 3))  # (C, N): log p(known | y)
            gen = torch.Generator().manual_seed(0)
            post_class = torch.multinomial(known_ll.T.softmax(1).float(), 1, generator=gen)[:, 0]
            res = inpaint(prior, vqvae, images, cm, num=1, seed=0, pixel_mask=pm,
                          num_candidates=1, select="proposal", labels=post_class)
            class_acc[name]["exact_class_posterior"] = acc(res.images[:, 0])
            result["class_posterior_bottom_half"] = {
                "argmax_is_true_class": round(float((known_ll.argmax(0) == labels).float().mean()), 4),
                "mean_p_true_class": round(float(known_ll.softmax(0)[labels, torch.arange(n)].mean()), 4)}
            log(f"{name} exact class posterior: accuracy {class_acc[name]['exact_class_posterior']}")
    result["inpaint_class_acc"] = class_acc
    result["inpaint_bits"] = bits
    result["inpaint_mean_ess"] = ess
    pm = box_mask(MASKS["centre_14x14"], size)
    result["grow"] = {}
    for grow in (0, 1):
        cm = pixel_to_code_mask(pm, prior.code_shape, grow)
        res = inpaint(prior, vqvae, images, cm, num=1, num_candidates=args.candidates, seed=0,
                      pixel_mask=pm)
        result["grow"][str(grow)] = {"importance_acc": acc(res.images[:, 0]),
                                     "codes_masked": int(cm.sum())}

    # ------------------------------------------------------------------------- repair
    gen = torch.Generator().manual_seed(0)
    threshold = args.threshold if args.threshold is not None else DEFAULT_REPAIR_THRESHOLD
    result["repair_threshold_bits"] = threshold
    acc_clean = acc(images)
    enc = vqvae.model.eval()
    repair: dict = {}
    sweep: dict = {}
    for kind in ("noise", "other_digit"):
        corrupted = images.clone()
        block = torch.zeros(n, *size, dtype=torch.bool)
        other = torch.randperm(n, generator=gen)
        for i in range(n):
            y, x = (int(v) for v in torch.randint(0, size[0] - 10 + 1, (2,), generator=gen))
            if kind == "noise":
                patch = torch.rand(images.shape[1], 10, 10, generator=gen)
            else:
                patch = images[int(other[i]), :, y : y + 10, x : x + 10]
            corrupted[i, :, y : y + 10, x : x + 10] = patch
            block[i, y : y + 10, x : x + 10] = True
        truth = pixel_to_code_mask(block, prior.code_shape)  # codes whose cell the block touches
        with torch.inference_mode():
            codes = enc.encode(corrupted)
        sbits = surprisal(prior, codes, class_mixture=True)  # as `vqgen repair` does
        cm = repair_mask(sbits, threshold=threshold)
        res = inpaint(prior, vqvae, corrupted, cm, num=1, num_candidates=args.candidates,
                      seed=0, pixel_mask=code_to_pixel_mask(cm, size))
        fixed = res.images[:, 0]
        raw = inpaint(prior, vqvae, corrupted, cm, num=1, num_candidates=args.candidates,
                      seed=0, paste=False).images[:, 0]  # --no-paste: all pixels decoded
        log(f"repair {kind} done")
        hit = float((cm & truth).sum())
        repair[kind] = {
            "acc_clean": acc_clean, "acc_corrupted": acc(corrupted), "acc_repaired": acc(fixed),
            "acc_repaired_no_paste": acc(raw),
            "recall": round(hit / float(truth.sum()), 4),
            "precision": round(hit / max(float(cm.sum()), 1), 4),
            "psnr_inside_corrupted": round(psnr(corrupted, images, block), 2),
            "psnr_inside_repaired": round(psnr(fixed, images, block), 2),
            "psnr_outside_corrupted": round(psnr(corrupted, images, ~block), 2),
            "psnr_outside_repaired": round(psnr(fixed, images, ~block), 2),
            "codes_flagged_per_image": round(float(cm.sum()) / n, 2),
        }
        sweep[kind] = {}
        for t in (4.0, 6.0, 8.0, 10.0, 12.0):
            m = repair_mask(sbits, threshold=t)
            h = float((m & truth).sum())
            sweep[kind][f"{t:g}"] = {"recall": round(h / float(truth.sum()), 3),
                                     "precision": round(h / max(float(m.sum()), 1), 3)}
    # the cost of false alarms: repair run on the clean digits themselves
    with torch.inference_mode():
        clean_codes = enc.encode(images)
    cm = repair_mask(surprisal(prior, clean_codes, class_mixture=True), threshold=threshold)
    res = inpaint(prior, vqvae, images, cm, num=1, num_candidates=args.candidates, seed=0,
                  pixel_mask=code_to_pixel_mask(cm, size))
    result["repair_clean_inputs"] = {"codes_flagged_per_image": round(float(cm.sum()) / n, 2),
                                     "acc_before": acc_clean, "acc_after": acc(res.images[:, 0])}
    # the keys: both corruptions pooled (equal halves)
    result["repair"] = {k: round((repair["noise"][k] + repair["other_digit"][k]) / 2, 4)
                        for k in repair["noise"]}
    result["repair_by_kind"] = repair
    result["repair_threshold_sweep"] = sweep
    result["quality_seconds"] = round(time.perf_counter() - t_start, 1)

    # -------------------------------------------------------------------------- speed
    cm = pixel_to_code_mask(box_mask(MASKS["top_half"], size), prior.code_shape)
    inpaint(prior, vqvae, images[:1], cm, num=8)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        inpaint(prior, vqvae, images[:1], cm, num=8)
        times.append(time.perf_counter() - t0)
    result["seconds_1x8"] = round(min(times), 3)
    t0 = time.perf_counter()
    inpaint(prior, vqvae, images[:64], cm, num=8)
    result["seconds_64x8"] = round(time.perf_counter() - t0, 3)  # fewer images when n < 64
    result["completions_per_s_1x8"] = round(8 / result["seconds_1x8"], 1)
    result["completions_per_s_64x8"] = round(8 * len(images[:64]) / result["seconds_64x8"], 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
