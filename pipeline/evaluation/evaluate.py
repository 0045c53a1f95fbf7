"""``vqgen evaluate``: one report on both stages, the whole model and its samples.

This module is the report driver. Every number comes from a function in
``pipeline/evaluation/`` (or ``pipeline.metrics``, the formulas) that a benchmark can call on
its own, so a benchmark and the report cannot disagree:

- ``evaluation/data.py``: the evaluated split (:func:`eval_datasets`, :func:`load_images`);
- ``evaluation/stage1.py``: :func:`run_stage1` / :func:`stage1_metrics`: held-out MSE, PSNR,
  SSIM, codebook usage, perplexity, and -log2 p(x | z) under a discretized Gaussian for a
  grid of sigmas;
- ``evaluation/stage2.py``: :func:`prior_nll` / :func:`prior_metrics`: held-out NLL of the
  prior beside the uniform and unigram baselines, and the per-position NLL map;
  :func:`whole_model_bound`: the VQ-VAE paper's bits/dim bound;
- ``evaluation/classifier.py``: the scoring classifier, :func:`get_classifier` (trained once,
  cached in the user's cache folder, :func:`user_cache_dir`);
- ``evaluation/samples.py``: :func:`reference_metrics` and :func:`sample_metrics`: Fréchet
  distance of classifier features, class accuracy and class entropy of generated samples,
  with real and blurred-real references;
- here, :func:`evaluate`: all of the above, written as ``metrics.json`` + ``index.html``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vqgen.pipeline import metrics as M
from vqgen.pipeline.defaults import DEFAULT_NUM_SAMPLES, DEMO_GUIDANCE, DEMO_TEMPERATURE
from vqgen.pipeline.evaluation.classifier import CLASSIFIER_CONFIG, get_classifier, user_cache_dir
from vqgen.pipeline.evaluation.data import eval_datasets
from vqgen.pipeline.evaluation.samples import even_labels, reference_metrics, sample_metrics
from vqgen.pipeline.evaluation.stage1 import SIGMA_GRID, run_stage1, stage1_metrics
from vqgen.pipeline.evaluation.stage2 import prior_metrics, prior_nll, train_code_maps, whole_model_bound
from vqgen.stage1_vqvae.runtime.errors import UserError

REPORT_VERSION = 1


class Notes(list):
    """The report's "notes": each one is also printed (stderr) when it is added."""

    def add(self, text: str) -> None:
        self.append(text)
        print(f"note: {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- evaluate


REPORT_MANIFEST = "report.json"  # the files evaluate wrote (its --overwrite replaces only these)


def _check_out(out: Path, overwrite: bool, inputs: list[tuple[str, object]]) -> None:
    """The one output policy (stage1_vqvae.runtime.outputs) for a report folder."""
    from vqgen.stage1_vqvae.runtime.outputs import claim_output_dir, manifest_files

    owned = manifest_files(out, REPORT_MANIFEST) if out.is_dir() else set()
    claim_output_dir(out, verb="evaluate", overwrite=overwrite, owned=owned,
                     writes=lambda n: n.endswith((".png", ".html", ".json")), inputs=inputs)


def evaluate(
    vqvae_path: str | os.PathLike | None,
    prior_path: str | os.PathLike | None,
    data: str | None,
    out_dir: str | os.PathLike,
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    split: str = "val",
    guidance: float = DEMO_GUIDANCE,
    temperature: float = DEMO_TEMPERATURE,
    batch_size: int = 256,
    device: str = "cpu",
    classifier_cache: str | os.PathLike | None = None,
    data_root: str | None = None,
    download: bool = False,
    overwrite: bool = False,
    classifier_config: dict | None = None,
    sigmas: Sequence[float] = SIGMA_GRID,
    inception_weights: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    compare: Sequence[str | os.PathLike] = (),
) -> dict:
    """Evaluate a VQ-VAE (and its prior) and write ``out_dir/metrics.json`` + ``index.html``
    (PNG plots beside it). Returns the metrics dict written to metrics.json.

    ``vqvae_path`` may be None when ``prior_path`` records its VQ-VAE; ``prior_path`` None
    gives a stage-one-only report. ``data`` None: the VQ-VAE's data set. The report is built
    in a temp folder and renamed into place at the end (never half written).
    ``classifier_config`` (default ``CLASSIFIER_CONFIG``) and ``sigmas`` (the bound's grid)
    are knobs for tests and benchmarks; anything unusual lands in the report's "notes".
    ``compare``: more stage-one checkpoints (VQ-VAE, VQ-GAN, Gaussian VAE) for a side-by-side
    table and figure with the main one (:mod:`pipeline.evaluation.compare`).
    ``inception_weights``: the pt_inception-2015-12-05 weights file; with it the samples also
    get Inception FID/KID (torch-fidelity) beside the classifier FD.
    """
    from vqgen.pipeline.evaluation.report import (
        plot_code_histogram,
        plot_curves,
        plot_nll_heatmap,
        write_html,
    )
    from vqgen.pipeline.generate import load_pair
    from vqgen.stage1_vqvae.lit import has_codes, load_vqvae
    from vqgen.stage1_vqvae.runtime.grid import save_grid
    from vqgen.stage1_vqvae.runtime.outputs import owned_output_dir

    t_start = time.monotonic()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    if vqvae_path is None and prior_path is None:
        raise UserError("nothing to evaluate; pass --vqvae CKPT and/or --prior CKPT")
    if not isinstance(num_samples, int) or num_samples < 2:
        raise UserError(f"--num-samples {num_samples} must be an integer >= 2")
    if split not in ("train", "val"):
        raise UserError(f"--split {split!r} must be train or val")
    _check_out(out, overwrite, [("--vqvae", vqvae_path), ("--prior", prior_path)])
    if inception_weights is not None:
        from vqgen.pipeline.evaluation.inception import check_weights

        check_weights(inception_weights)  # a wrong file is refused before any work
    config = dict(classifier_config or CLASSIFIER_CONFIG)
    notes = Notes()

    t0 = time.monotonic()
    prior = None
    if prior_path is not None:
        prior, lit = load_pair(prior_path, vqvae_path, device)
        if vqvae_path is None:
            vqvae_path = prior.hparams.vqvae_checkpoint
    else:
        lit = load_vqvae(vqvae_path, device)
    others = [(p, load_vqvae(p, device)) for p in compare]  # fail on a bad path before any work
    hp = lit.hparams
    data = data or hp.data
    data_root = data_root or hp.data_root
    if data != hp.data:
        notes.add(f"evaluating on {data}, but the VQ-VAE was trained on {hp.data}")
    train_ds, eval_ds = eval_datasets(lit, data, split=split, data_root=data_root, download=download)
    if split == "train":
        notes.add("evaluating on the training split: these numbers are not held-out")
    cache_dir = Path(classifier_cache) if classifier_cache else user_cache_dir()
    info = eval_ds.info
    timings["load"] = time.monotonic() - t0
    settings = {
        "vqvae": str(vqvae_path), "prior": None if prior_path is None else str(prior_path),
        "data": data, "data_root": str(data_root), "split": split, "num_samples": num_samples,
        "seed": seed, "batch_size": batch_size, "device": device, "sampler": "cached",
        "classifier_cache": str(cache_dir),
        "inception_weights": None if inception_weights is None else str(inception_weights),
        "conditional_sampling": {"guidance": guidance, "temperature": temperature},
        "unconditional_sampling": {"guidance": 1.0, "temperature": temperature, "labels": None},
    }
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION, "settings": settings,
        "data": {"spec": data, "split": split, "source": info.source, "num_eval": len(eval_ds),
                 "num_train": len(train_ds), "num_classes": info.num_classes,
                 "class_names": list(info.class_names), "channels": info.channels,
                 "image_size": list(info.image_size)},
        "stage1": None, "stage2": None, "whole_model": None, "samples": None, "comparison": None,
        "curves": {}, "images": {}, "notes": notes, "timings_s": timings,
    }
    log(f"evaluate: {len(eval_ds)} {split} images of {data}"
        + (f", {num_samples} samples" if prior is not None else ""))

    with owned_output_dir(out, REPORT_MANIFEST) as tmp:
        images = report["images"]
        # ---- stage one (a Gaussian VAE has no codes: the comparison covers it)
        if not has_codes(lit):
            notes.add(f"{vqvae_path} is a Gaussian VAE: no codes, so no code-based stage-one "
                      "section; see the comparison")
        else:
            t0 = time.monotonic()
            s1 = run_stage1(lit, eval_ds, batch_size=batch_size, device=device, sigmas=sigmas)
            report["stage1"] = stage1_metrics(result=s1)
            if s1.ssim is None:
                notes.add(f"SSIM skipped: images {info.image_size} are smaller than its 11x11 window")
            plot_code_histogram(report["stage1"]["code_counts"], tmp / "codes_histogram.png")
            images["codes_histogram"] = "codes_histogram.png"
            x, r = s1.preview
            per_row = min(8, x.shape[0])
            rows = [t for st in range(0, x.shape[0], per_row) for t in (x[st : st + per_row],
                                                                         r[st : st + per_row])]
            save_grid(torch.cat(rows), tmp / "reconstructions.png", nrow=per_row)
            images["reconstructions"] = "reconstructions.png"
            timings["stage1"] = time.monotonic() - t0
            log(f"stage one: PSNR {report['stage1']['psnr_db']:.2f} dB ({timings['stage1']:.1f}s)")

        if others:
            t0 = time.monotonic()
            report["comparison"] = _comparison_section(
                [(vqvae_path, lit), *others], train_ds, eval_ds, tmp, images, notes,
                config=config, batch_size=batch_size, device=device, cache_dir=cache_dir,
                seed=seed, num_samples=num_samples, log=log)
            timings["comparison"] = time.monotonic() - t0

        if prior is None:
            notes.add("no --prior: stage two, the bits/dim bound and samples are skipped"
                      + (" (so is Inception FID/KID)" if inception_weights else ""))
        else:
            # ---- stage two and the bound
            t0 = time.monotonic()
            tr_codes, tr_from = train_code_maps(lit, vqvae_path, train_ds, batch_size=batch_size,
                                                device=device)
            k_prior = int(prior.model.num_classes)
            use_labels = k_prior > 0 and info.num_classes == k_prior
            if k_prior > 0 and not use_labels:
                notes.add(f"the prior has {k_prior} classes but the data has {info.num_classes}: "
                          "its NLL is the null-class (unconditional) one")
            labels = s1.labels if use_labels else None
            nll_u = prior_nll(prior, s1.codes, None, batch_size=batch_size, device=device)
            nll_c = (prior_nll(prior, s1.codes, labels, batch_size=batch_size, device=device)
                     if labels is not None else None)
            st2 = prior_metrics(prior, tr_codes, s1.codes, labels, nll=nll_c, nll_uncond=nll_u)
            st2["train_codes_from"] = tr_from
            report["stage2"] = st2
            plot_nll_heatmap(st2["per_position_bits"], tmp / "nll_heatmap.png",
                             title=f"held-out NLL per position ({st2['per_position_from']})")
            images["nll_heatmap"] = "nll_heatmap.png"
            bound = whole_model_bound(s1, nll_u.flatten(1).sum(1) / M.LN2)
            bound["prior"] = "unconditional (null class)" if k_prior > 0 else "unconditional"
            if nll_c is not None:
                given = whole_model_bound(s1, nll_c.flatten(1).sum(1) / M.LN2)
                bound["bits_per_dim_given_class"] = given["bits_per_dim"]
                bound["sigma_given_class"] = given["sigma"]
            report["whole_model"] = bound
            timings["stage2"] = time.monotonic() - t0
            log(f"stage two: {st2['bits_per_code']:.3f} bits per code, bound "
                f"{bound['bits_per_dim']:.3f} bits/dim ({timings['stage2']:.1f}s)")

            # ---- samples
            report["samples"] = _samples_section(
                prior, lit, train_ds, eval_ds, tmp, images, notes, timings, config=config,
                num_samples=num_samples, seed=seed, guidance=guidance, temperature=temperature,
                batch_size=batch_size, device=device, cache_dir=cache_dir, log=log,
                inception_weights=inception_weights)

        # ---- training curves
        t0 = time.monotonic()
        runs = {"vqvae": Path(vqvae_path).parent}
        if prior_path is not None:
            runs["prior"] = Path(prior_path).parent
        for name, run_dir in runs.items():
            res = plot_curves(run_dir, name, tmp / f"curves_{name}.png")
            if res is None:
                notes.add(f"no CSV training logs in {run_dir}/logs/version_*/metrics.csv: "
                          f"{name} training curves skipped")
                report["curves"][name] = None
            else:
                report["curves"][name] = res
                images[f"curves_{name}"] = f"curves_{name}.png"
        timings["curves"] = time.monotonic() - t0

        timings["total"] = time.monotonic() - t_start
        for key in timings:
            timings[key] = round(timings[key], 2)
        report["notes"] = list(notes)
        (tmp / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        write_html(report, tmp / "index.html")
    log(f"report: {out / 'index.html'} and {out / 'metrics.json'}")
    return report


def _comparison_section(models: list, train_ds, eval_ds, tmp: Path, images: dict, notes: Notes,
                        *, config: dict, batch_size: int, device: str, cache_dir: Path,
                        seed: int, num_samples: int, log: Callable[[str], None]) -> dict:
    """The side-by-side table and figure of :mod:`pipeline.evaluation.compare`."""
    from vqgen.pipeline.evaluation import compare as C
    from vqgen.pipeline.evaluation.classifier import classify
    from vqgen.stage1_vqvae.lit import has_codes
    from vqgen.stage1_vqvae.runtime.grid import save_grid

    main_hp = models[0][1].hparams
    for path, other in models[1:]:
        hp = other.hparams
        if int(hp.channels) != int(main_hp.channels) or tuple(hp.image_size) != tuple(main_hp.image_size):
            raise UserError(f"--compare {path}: its images are {hp.channels}x{tuple(hp.image_size)}, "
                            f"the --vqvae's {main_hp.channels}x{tuple(main_hp.image_size)}; compare "
                            "models of the same data")
    info = train_ds.info
    classifier = None
    if info.num_classes >= 2 and min(len(eval_ds), len(train_ds)) >= 2:
        classifier, _ = get_classifier(train_ds, cache_dir, val_fraction=float(main_hp.val_fraction),
                                       split_seed=int(main_hp.seed), config=config, device=device,
                                       log=log)
    else:
        notes.add("no class labels: the comparison has no reconstruction Fréchet distance")
    rows, passes, names = [], [], []
    real_feats = None
    for path, lit in models:
        passed = C.reconstruct_all(lit, eval_ds, batch_size=batch_size, device=device, seed=seed)
        if classifier is not None and real_feats is None:
            real_feats, _ = classify(classifier, passed["originals"], device=device)
        train_codes = (train_code_maps(lit, path, train_ds, batch_size=batch_size, device=device)[0]
                       if has_codes(lit) else None)
        name = f"{C.kind_of(lit)} ({Path(path).parent.name or Path(path).stem})"
        rows.append(C.model_row(name, lit, str(path), passed, train_codes=train_codes,
                                classifier=classifier, real_features=real_feats, device=device,
                                num_samples=num_samples, seed=seed))
        passes.append(passed)
        names.append(name)
        log(f"compare: {name}: PSNR {rows[-1]['psnr_db']:.2f} dB, sharpness "
            f"{rows[-1]['sharpness_ratio']:.3f}")
    grid, labels = C.comparison_figure_rows(passes, names)
    save_grid(grid, tmp / "comparison.png", nrow=grid.shape[0] // len(labels), row_labels=labels)
    images["comparison"] = "comparison.png"
    return {"rows": rows, "definitions": {
        "sharpness_ratio": "sum of squared neighbour differences of the reconstructions / of "
                           "the originals (1 = as sharp as the data)",
        "rfd": "Fréchet distance between the classifier features of the reconstructions and "
               "of the same originals",
        "bits_per_dim": C.BITS_PER_DIM_DEFINITION,
        "sample_fd": "Gaussian VAE only: Fréchet distance between the classifier features of "
                     "decodes of z ~ N(0, I) and of the originals (a VQ model's samples need a "
                     "prior: --prior scores the main model's)"}}


def _samples_section(prior, lit, train_ds, eval_ds, tmp: Path, images: dict, notes: Notes,
                     timings: dict, *, config: dict, num_samples: int, seed: int, guidance: float,
                     temperature: float, batch_size: int, device: str, cache_dir: Path,
                     log: Callable[[str], None],
                     inception_weights: str | os.PathLike | None = None) -> dict:
    """Classifier, references, samples and their grids for :func:`evaluate`."""
    from vqgen.stage1_vqvae.runtime.grid import save_grid

    info = train_ds.info
    section: dict[str, Any] = {}
    classifier = None
    eval_feats = None
    t0 = time.monotonic()
    if info.num_classes < 2:
        notes.add(f"{info.data} has no class labels: no classifier, so no class accuracy, class "
                  "entropy or Fréchet distance (a classifier needs labels)")
    elif min(len(eval_ds), len(train_ds)) < 2:
        notes.add(f"{len(eval_ds)} evaluated and {len(train_ds)} training image(s): no Fréchet "
                  "distance or classifier scores (they need at least 2 of each)")
    else:
        classifier, cinfo = get_classifier(
            train_ds, cache_dir, val_fraction=float(lit.hparams.val_fraction),
            split_seed=int(lit.hparams.seed), config=config, device=device, log=log)
        n_ref = min(num_samples, len(train_ds))
        if n_ref < num_samples:
            notes.add(f"--num-samples {num_samples} > {len(train_ds)} training images: the real "
                      f"and blurred references use N_ref={n_ref} (samples stay at {num_samples})")
        if len(eval_ds) < num_samples:
            notes.add(f"the Fréchet reference set is the whole {eval_ds.info.split} split, "
                      f"{len(eval_ds)} images (fewer than --num-samples {num_samples})")
        if min(n_ref, len(eval_ds)) <= config["features"]:
            notes.add(f"fewer images than the {config['features']} feature dimensions: the "
                      "Fréchet distances are dominated by noise")
        refs = reference_metrics(classifier, eval_ds, train_ds, n_ref, seed=seed, device=device)
        eval_feats = refs.pop("_eval_features")
        section["classifier"] = {**cinfo, "config": config}
        section["references"] = refs
        timings["classifier_and_references"] = time.monotonic() - t0
        log(f"classifier: held-out accuracy {refs['classifier_heldout_accuracy']:.1%} "
            f"({timings['classifier_and_references']:.1f}s with the references)")
    if prior.model.num_classes == 0:
        notes.add("the prior is unconditional: no class-conditional samples")
    elif classifier is not None and prior.model.num_classes != info.num_classes:
        notes.add(f"the prior has {prior.model.num_classes} classes, the data "
                  f"{info.num_classes}: class accuracy of the samples is not scored")
    t0 = time.monotonic()
    res, imgs = sample_metrics(prior, lit, classifier, eval_ds, num_samples=num_samples, seed=seed,
                               guidance=guidance, temperature=temperature, batch_size=batch_size,
                               device=device, eval_features=eval_feats)
    section.update(res)
    timings["samples"] = time.monotonic() - t0
    if "conditional" in imgs:
        k = int(prior.model.num_classes)
        lab = even_labels(num_samples, k)
        per_row = min(10, int(torch.bincount(lab, minlength=k).min()))
        if per_row > 0:
            picks = torch.cat([torch.nonzero(lab == c).flatten()[:per_row] for c in range(k)])
            names = [str(n) for n in prior.hparams.class_names] or [str(c) for c in range(k)]
            save_grid(imgs["conditional"][picks], tmp / "samples_conditional.png", nrow=per_row,
                      row_labels=names)
            images["samples_conditional"] = "samples_conditional.png"
    n = min(100, num_samples)
    save_grid(imgs["unconditional"][:n], tmp / "samples_unconditional.png", nrow=min(10, n))
    images["samples_unconditional"] = "samples_unconditional.png"
    log(f"samples: {num_samples} x {len(imgs)} kinds ({timings['samples']:.1f}s)")
    if inception_weights is not None:
        from vqgen.pipeline.evaluation.data import load_images
        from vqgen.pipeline.evaluation.inception import inception_section

        t0 = time.monotonic()
        section["inception"] = inception_section(inception_weights, load_images(eval_ds), imgs,
                                                 device=device, seed=seed)
        timings["inception"] = time.monotonic() - t0
        log(f"inception: FID/KID of {len(imgs)} kinds ({timings['inception']:.1f}s)")
    return section
