"""What the benchmarks' ``--smoke`` mode shares: tiny settings, a quiet in-process CLI call,
a tiny demo folder and small image folders on disk. Not a benchmark (the leading underscore
keeps ``tests/test_benchmarks.py`` from running it as one).

Smoke mode runs a benchmark's real code path on one small iteration (tiny models, a handful
of images, everything in a temp folder, no data from outside the repository) so that the
test suite notices when a benchmark stops running; its numbers measure nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's packages

# the test suite's tiny stage one (tests/conftest.py) and prior (tests/test_prior.py)
TINY_VQVAE_MODEL = ["--hidden", "16", "--res-hidden", "8", "--num-res", "1", "--code-dim", "8",
                    "--num-codes", "32"]
TINY_VQVAE_TRAIN = ["--limit-train-batches", "5", "--limit-val-batches", "2", "--batch-size", "32",
                    "--accelerator", "cpu", "--max-epochs", "1", "--checkpoint-every-minutes", "0"]
TINY_PRIOR = ["--hidden", "8", "--num-layers", "2", "--head-hidden", "16", "--max-epochs", "1",
              "--limit-train-batches", "3", "--limit-val-batches", "2", "--accelerator", "cpu",
              "--checkpoint-every-minutes", "0"]
# the scoring classifier of tests/test_evaluate.py: one epoch of a narrow CNN
TINY_CLASSIFIER = dict(epochs=1, width=4, features=16)
# three noise levels for the bits/dim bound instead of evaluate's grid (tests/test_evaluate.py)
FAST_SIGMAS = (0.01, 0.05, 0.2)


def tiny_classifier_config() -> dict:
    from vqgen.pipeline.evaluation.classifier import CLASSIFIER_CONFIG

    return dict(CLASSIFIER_CONFIG, **TINY_CLASSIFIER)


def cli(argv: Sequence[object], log: Path | None = None) -> None:
    """``vqgen ARGV`` in this process, its output into ``log`` (or dropped); SystemExit with
    the output's tail when it fails."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        from vqgen.pipeline.cli import main

        rc = main([str(a) for a in argv])
    if log is not None:
        log.write_text(buf.getvalue())
    if rc != 0:
        raise SystemExit(f"vqgen {' '.join(map(str, argv))} failed ({rc}):\n{buf.getvalue()[-3000:]}")


def tiny_demo(root: Path) -> Path:
    """A folder shaped like ``vqgen demo``'s (vqvae/ with codes/, prior/, a done.json in each
    with the demo's keys) from tiny models trained on mnist5k in about a second."""
    from vqgen.pipeline.cli import build_parser
    from vqgen.pipeline.cli.common import trainer_kwargs
    from vqgen.pipeline.cli.stage1 import vqvae_config
    from vqgen.pipeline.cli.stage2 import prior_config
    from vqgen.stage1_vqvae.train import train_vqvae
    from vqgen.stage2_prior.train import train_prior

    vq_dir, prior_dir = root / "vqvae", root / "prior"
    parser = build_parser()
    t0 = time.monotonic()
    vargs = parser.parse_args(["train-vqvae", "--data", "mnist5k", "--out", str(vq_dir),
                               *TINY_VQVAE_MODEL, *TINY_VQVAE_TRAIN])
    model_args, data_args, max_epochs = vqvae_config(vargs, log=lambda s: None)
    res = train_vqvae(vq_dir, model_args, data_args=data_args,
                      trainer_args={**trainer_kwargs(vargs, max_epochs), "quiet": True})
    info = {k: res.metrics.get(k) for k in ("val/psnr", "val/codebook_usage", "val/perplexity")}
    (vq_dir / "done.json").write_text(json.dumps({**info, "seconds": round(time.monotonic() - t0, 1)}))
    t0 = time.monotonic()
    pargs = parser.parse_args(["train-prior", "--codes", str(vq_dir / "codes"), "--out", str(prior_dir),
                               *TINY_PRIOR])
    model_args, batch_size, max_epochs = prior_config(pargs, log=lambda s: None)
    res = train_prior(vq_dir / "codes", prior_dir, model_args, batch_size=batch_size, seed=pargs.seed,
                      trainer_args={**trainer_kwargs(pargs, max_epochs), "quiet": True})
    info = {k: res.metrics.get(k) for k in ("val/nll", "val/bits_per_code")}
    (prior_dir / "done.json").write_text(json.dumps({**info, "seconds": round(time.monotonic() - t0, 1)}))
    return root


def digit_folder(root: Path, per_class: int, *, classes: int = 10, size: int = 28, rgb: bool = False,
                 ext: str = ".png") -> Path:
    """``per_class`` mnist5k digits of each of the first ``classes`` classes as image files
    under root/<class>/ (grey 28x28, or resized to ``size`` and tinted per class in RGB)."""
    from PIL import Image

    from vqgen.stage1_vqvae.data import build_dataset

    ds = build_dataset("mnist5k", "train", channels=1, image_size=(28, 28))
    labels = np.asarray(ds.labels)
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i, j in enumerate(np.flatnonzero(labels == c)[:per_class]):
            arr = (ds[int(j)][0][0].numpy() * 255).round().astype(np.uint8)
            img = Image.fromarray(arr, "L").resize((size, size))
            if rgb:
                tint = np.array([(37 * c) % 256, (91 * c + 80) % 256, 255 - 23 * c], np.float32) / 255
                img = Image.fromarray((np.asarray(img, np.float32)[..., None] * tint).astype(np.uint8))
            img.save(root / str(c) / f"{c}_{i:04d}{ext}")
    return root
