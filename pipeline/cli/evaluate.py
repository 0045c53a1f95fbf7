"""``vqgen evaluate``: the sub-command and its summary table (the work is in
:mod:`pipeline.evaluation.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqgen.pipeline.cli.common import UsageError, add_verb, positive_int, resolve_device, seed_arg
from vqgen.pipeline.defaults import DEFAULT_NUM_SAMPLES, DEMO_GUIDANCE, DEMO_TEMPERATURE
from vqgen.pipeline.formatting import format_number

HELP = ("Evaluate a VQ-VAE and its prior on held-out data: reconstruction, likelihoods against "
        "baselines, a bits/dim bound and sample quality; writes OUT/metrics.json and "
        "OUT/index.html.")


def add_evaluate(subs) -> None:
    """Register ``evaluate`` on the ``subs`` of ``pipeline.cli.build_parser``."""
    p = add_verb(subs, "evaluate", HELP)
    p.add_argument("--vqvae", default=None,
                   help="VQ-VAE checkpoint (default: the one recorded in --prior)")
    p.add_argument("--prior", default=None,
                   help="prior checkpoint; without it the report covers stage one only")
    g = p.add_argument_group("data (default: split exactly as the VQ-VAE was trained)")
    g.add_argument("--data", default=None,
                   help="mnist5k, mnist, fashion-mnist, cifar10 or folder:PATH (default: the "
                   "VQ-VAE's)")
    g.add_argument("--data-root", default=None,
                   help="where torchvision data sets live (default: the VQ-VAE's, e.g. ./data)")
    g.add_argument("--download", action="store_true", help="let torchvision download (needs internet)")
    g.add_argument("--split", choices=["val", "train"], default="val",
                   help="split to evaluate (default val, the held-out one)")
    s = p.add_argument_group("samples")
    s.add_argument("--num-samples", type=positive_int, default=DEFAULT_NUM_SAMPLES,
                   help=f"samples of each kind, class-conditional and unconditional "
                   f"(default {DEFAULT_NUM_SAMPLES})")
    s.add_argument("--guidance", type=float, default=DEMO_GUIDANCE,
                   help=f"classifier-free guidance of the class-conditional samples (default "
                   f"{DEMO_GUIDANCE:g}, as the demo; unconditional samples use 1)")
    s.add_argument("--temperature", type=float, default=DEMO_TEMPERATURE,
                   help=f"sampling temperature (default {DEMO_TEMPERATURE:g}, as the demo)")
    s.add_argument("--seed", type=seed_arg, default=0)
    s.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="the pt_inception-2015-12-05-6726825d.pth weights file (sha256 checked): "
                   "adds Inception FID/KID (torch-fidelity) beside the classifier FD")
    s.add_argument("--classifier-cache", default=None,
                   help="folder of the cached scoring classifier (default: $VQGEN_CACHE_DIR, "
                   "else the user's cache folder, e.g. ~/.cache/vqgen)")
    p.add_argument("--compare", nargs="+", default=[], metavar="CKPT",
                   help="more stage-one checkpoints (VQ-VAE, VQ-GAN, Gaussian VAE) to put beside "
                   "--vqvae in one table and one figure of the same held-out images")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    p.add_argument("--out", required=True, help="report folder (metrics.json, index.html, PNGs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous report in --out (only the files evaluate wrote)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run :func:`pipeline.evaluation.evaluate.evaluate` and print a short summary table."""
    from vqgen.pipeline.evaluation.evaluate import evaluate

    if args.vqvae is None and args.prior is None:
        raise UsageError("nothing to evaluate; pass --vqvae CKPT and/or --prior CKPT")
    if args.num_samples < 2:
        raise UsageError(f"--num-samples {args.num_samples} must be at least 2")
    out = Path(args.out)
    report = evaluate(
        args.vqvae, args.prior, args.data, out, num_samples=args.num_samples, seed=args.seed,
        split=args.split, guidance=args.guidance, temperature=args.temperature,
        batch_size=args.batch_size, device=resolve_device(args.device),
        classifier_cache=args.classifier_cache, data_root=args.data_root, download=args.download,
        overwrite=args.overwrite, compare=args.compare, inception_weights=args.inception_weights,
    )
    print(summary_table(report))
    return 0


def summary_table(report: dict) -> str:
    """A few lines: the headline numbers of a report, with baselines and references."""
    rows: list[tuple[str, str]] = []
    s1 = report["stage1"] or {}
    if s1:
        rows.append(("reconstruction", f"PSNR {format_number(s1['psnr_db'], '.2f')} dB, SSIM "
                     f"{format_number(s1['ssim'], '.3f')}, MSE {format_number(s1['mse'], '.5f')}"))
        rows.append(("codebook", f"usage {s1['codebook_usage']:.1%} ({s1['codes_used']}/"
                     f"{s1['num_codes']}), perplexity {s1['perplexity']:.1f}"))
    s2 = report.get("stage2")
    if s2:
        b = s2["baselines"]
        rows.append(("prior NLL", f"{s2['bits_per_code']:.3f} bits/code ({s2['nll_nats_per_code']:.3f} "
                     f"nats); unigram {b['unigram_heldout_cross_entropy_bits_per_code']:.3f}, "
                     f"uniform {b['uniform_bits_per_code']:.3f}"))
    wm = report.get("whole_model")
    if wm:
        rows.append(("bound", f"{wm['bits_per_dim']:.3f} bits/dim (sigma {wm['sigma']:.3g})"))
    sm = report.get("samples") or {}
    refs = sm.get("references")
    if refs:
        rows.append(("classifier", f"held-out accuracy {refs['classifier_heldout_accuracy']:.1%}"))
        rows.append(("FD references", f"real {refs['fd_real_vs_real']:.2f}, blurred "
                     f"{refs['fd_blurred_vs_real']:.2f} (N={refs['num_reference']})"))
    cond, unc = sm.get("conditional"), sm.get("unconditional")
    if cond and cond.get("fd") is not None:
        rows.append(("conditional", f"classifier FD {cond['fd']:.2f}, right class "
                     f"{format_number(cond.get('class_accuracy'), '.1%')}, precision "
                     f"{format_number(cond.get('precision'), '.2f')} recall "
                     f"{format_number(cond.get('recall'), '.2f')} "
                     f"(N={cond['num']}, guidance {cond['guidance']:g})"))
    inc = sm.get("inception")
    for kind in ("conditional", "unconditional"):
        if inc and kind in inc:
            rows.append((f"Inception {kind[:6]}.", f"FID {inc[kind]['fid']:.2f}, KID "
                         f"{inc[kind]['kid_mean']:.4f} +- {inc[kind]['kid_std']:.4f} "
                         "(torch-fidelity; comparable with papers)"))
    if unc and unc.get("fd") is not None:
        rows.append(("unconditional", f"classifier FD {unc['fd']:.2f}, class entropy "
                     f"{unc['class_entropy_nats']:.3f} nats "
                     f"({unc['class_entropy_fraction_of_log_k']:.1%} of log K)"))
    width = max((len(k) for k, _ in rows), default=0)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    notes = report.get("notes") or []
    cmp = report.get("comparison")
    if cmp:
        from vqgen.pipeline.evaluation.compare import comparison_table

        lines.append("comparison (same held-out images; sharp = gradient energy ratio, 1 = data):")
        lines.append(comparison_table(cmp["rows"]))
    if notes:
        lines.append(f"  {len(notes)} note(s) in the report")
    return "\n".join(lines)
