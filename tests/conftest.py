"""Shared fixtures: thread count, seeds, one tiny trained VQ-VAE run, a tiny image folder.

The trained run is session-scoped (trained once, a few seconds on one CPU thread) and
must be treated as read-only: tests that change a run copy it first.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Respect the caller's thread budget (OMP_NUM_THREADS), never force a number of our own.
if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The arguments of the shared tiny run; other tests rebuild runs from these (e.g. resume).
TINY_MODEL_ARGS = (
    "--hidden", "16", "--res-hidden", "8", "--num-res", "1", "--code-dim", "8",
    "--num-codes", "32",
)
TINY_TRAIN_ARGS = (
    "--limit-train-batches", "5", "--limit-val-batches", "2", "--batch-size", "32",
    "--accelerator", "cpu", "--device", "cpu",
)
TINY_STEPS_PER_EPOCH = 5
TINY_NUM_CODES = 32


def tiny_train_argv(out: Path, *extra: str, max_epochs: int = 1) -> list[str]:
    """argv for ``vqgen train-vqvae`` on mnist5k with the tiny settings."""
    return [
        "train-vqvae", "--data", "mnist5k", "--out", str(out), *TINY_MODEL_ARGS,
        "--max-epochs", str(max_epochs), *TINY_TRAIN_ARGS, *extra,
    ]


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_vqvae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VQ-VAE trained once for the session through the CLI (1 epoch of 5 batches, K=32,
    28x28 -> 7x7). Returns the run folder: last.ckpt, best.ckpt, codes/{train,val}, logs/.

    Read-only for tests: copy it before resuming or overwriting.
    """
    from vqgen.pipeline.cli import main

    out = tmp_path_factory.mktemp("tiny_vqvae") / "run"
    rc = main(tiny_train_argv(out))
    assert rc == 0, "training the shared tiny VQ-VAE failed"
    for name in ("last.ckpt", "best.ckpt", "codes/train/meta.json", "codes/val/meta.json", "logs"):
        assert (out / name).exists(), f"tiny run lacks {name}"
    return out


def _write_folder_images(root: Path) -> Path:
    """12 small PNGs of mixed modes and sizes in two class subfolders ``cat`` and ``dog``."""
    rng = np.random.default_rng(0)
    specs = [
        ("L", (20, 20)), ("RGB", (31, 17)), ("RGBA", (24, 40)), ("P", (28, 28)),
        ("I;16", (18, 26)), ("LA", (33, 33)),
    ]
    for cls in ("cat", "dog"):
        d = root / cls
        d.mkdir(parents=True)
        for i, (mode, (w, h)) in enumerate(specs):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = Image.fromarray(rgb, "RGB")
            if mode == "I;16":
                img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
            elif mode == "P":
                img = img.convert("P")
            elif mode != "RGB":
                img = img.convert(mode)
            img.save(d / f"{cls}{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree (``cat/``, ``dog/``) of 12 small PNGs: modes L, RGB, RGBA, P,
    I;16 and LA, sizes from 17 to 40 pixels. Read-only: copy it before adding files."""
    return _write_folder_images(tmp_path_factory.mktemp("images") / "folder")


@pytest.fixture(scope="session")
def tiny_prior_run(tiny_vqvae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny class-conditional prior (hidden 8, 2 layers, --cond-drop 0.5) trained once for
    the session on ``tiny_vqvae_run``'s codes through the CLI; records that VQ-VAE.
    Returns the run folder (last.ckpt). Read-only."""
    from tests.test_prior import train_prior_argv
    from vqgen.pipeline.cli import main

    out = tmp_path_factory.mktemp("tiny_prior") / "run"
    assert main(train_prior_argv(tiny_vqvae_run / "codes", out, "--cond-drop", "0.5")) == 0
    return out


@pytest.fixture(scope="session")
def tiny_uncond_prior(tiny_vqvae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unconditional prior: trained once for the session on ``tiny_vqvae_run``'s codes
    with their labels removed. Returns its last.ckpt. Read-only."""
    import shutil

    from tests.test_cli_stage2 import rewrite_meta
    from tests.test_prior import train_prior_argv
    from vqgen.pipeline.cli import main
    from vqgen.stage2_prior.lit import load_prior

    root = tmp_path_factory.mktemp("uncond")
    codes = root / "codes"
    shutil.copytree(tiny_vqvae_run / "codes", codes)
    for split in ("train", "val"):
        (codes / split / "labels.npy").unlink()
        rewrite_meta(codes / split, num_classes=0, class_names=[])
    assert main(train_prior_argv(codes, root / "prior")) == 0
    assert load_prior(root / "prior" / "last.ckpt").hparams.num_classes == 0
    return root / "prior" / "last.ckpt"
