"""The epoch preview and the report's reconstruction grid: a fixed, seeded, class-balanced
pick of held-out images, not the first rows of a class-sorted split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vqgen.stage1_vqvae.data import balanced_pick


def sorted_labels(classes: int = 10, per: int = 50) -> np.ndarray:
    return np.repeat(np.arange(classes), per)  # like CIFAR-10's test split


@pytest.mark.parametrize("total", [10, 16, 20, 32])
def test_pick_covers_every_class_evenly_and_is_fixed(total: int):
    labels = sorted_labels()
    pick = balanced_pick(labels, total, seed=3)
    assert len(pick) == total and len(set(pick.tolist())) == total
    counts = np.bincount(labels[pick], minlength=10)
    assert (counts > 0).all() and counts.max() - counts.min() <= 1
    assert np.array_equal(pick, balanced_pick(labels, total, seed=3))  # same on every call
    assert list(labels[pick]) == sorted(labels[pick])  # grouped by class for the grid rows
    assert not np.array_equal(pick, balanced_pick(labels, total, seed=4))  # seeded, not "first"


def test_pick_with_few_classes_unlabelled_and_small_sets():
    assert len(balanced_pick(np.full(7, -1), 20)) == 7  # fewer items than asked: all of them
    uneven = np.array([0] * 2 + [1] * 30)
    assert np.bincount(uneven[balanced_pick(uneven, 10)]).tolist() == [2, 8]  # class 0 runs out
    assert len(balanced_pick(np.zeros(0, np.int64), 5)) == 0


def test_epoch_preview_shows_every_class(tiny_vqvae_run: Path, monkeypatch):
    """The run's preview PNG holds reconstructions of balanced_pick's images; on mnist5k's
    val split every digit appears."""
    from PIL import Image

    from vqgen.stage1_vqvae.data import build_dataset
    from vqgen.stage1_vqvae.lit import LitVQVAE

    ds = build_dataset("mnist5k", "val", channels=1, image_size=(28, 28))
    pick = balanced_pick(ds.labels, LitVQVAE.preview_count, seed=0)
    assert set(ds.labels[pick].tolist()) == set(range(10))
    png = sorted((tiny_vqvae_run / "previews").glob("*.png"))[-1]
    grid = np.asarray(Image.open(png).convert("L"), dtype=np.float32) / 255
    n = LitVQVAE.preview_count
    # save_image: 2 px padding, one row of n originals above one of n reconstructions
    assert grid.shape == (2 + 2 * 30, 2 + n * 30)
    top = np.stack([grid[2:30, 2 + 30 * i: 30 + 30 * i] for i in range(n)])
    want = torch.stack([ds[int(i)][0][0] for i in pick]).numpy()
    assert np.abs(top - want).max() <= 1 / 255 + 1e-6


def test_report_grid_uses_the_same_pick(tiny_vqvae_run: Path):
    from vqgen.pipeline.evaluation.evaluate import run_stage1
    from vqgen.stage1_vqvae.data import build_dataset
    from vqgen.stage1_vqvae.lit import load_vqvae

    ds = build_dataset("mnist5k", "val", channels=1, image_size=(28, 28))
    s1 = run_stage1(load_vqvae(tiny_vqvae_run / "last.ckpt"), ds, batch_size=128)
    pick = balanced_pick(ds.labels, 32, seed=0)
    want = torch.stack([ds[int(i)][0] for i in pick])
    x, r = s1.preview
    assert x.shape == r.shape == (32, 1, 28, 28)
    torch.testing.assert_close(x, torch.round(want * 255) / 255, atol=1e-6, rtol=0)
