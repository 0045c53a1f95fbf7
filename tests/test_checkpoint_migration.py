"""Old checkpoints: a format-1 prior (vqgen 0.1.0, with the last block's dead horizontal
output conv) is upgraded by the one loader, loads strictly and gives the same logits; it is
refused for resuming; anything else that does not fit is still an error, never a partial load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_prior import _val_batch, train_prior_argv
from vqgen.pipeline.cli import main
from vqgen.stage1_vqvae.runtime.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    read_checkpoint,
)
from vqgen.stage2_prior.lit import load_prior

HIDDEN, LAYERS = 8, 2  # the tiny prior of test_prior.TINY_PRIOR_ARGS
DEAD = [f"model.blocks.{LAYERS - 1}.h_out.weight", f"model.blocks.{LAYERS - 1}.h_out.bias"]


@pytest.fixture(scope="module")
def prior_run(tiny_vqvae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("migration") / "run"
    assert main(train_prior_argv(tiny_vqvae_run / "codes", out)) == 0
    return out


def as_format_1(src: Path, dst: Path, *, dead_conv: bool = True, version: int = 1) -> Path:
    """What vqgen 0.1.0 wrote: stamp format 1 and, in every block, an h_out conv."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    assert not set(DEAD) & set(ckpt["state_dict"])  # format 2 has no such weights
    ckpt["vqgen"]["format_version"] = version
    if dead_conv:
        g = torch.Generator().manual_seed(0)
        ckpt["state_dict"][DEAD[0]] = torch.randn(HIDDEN, HIDDEN, 1, 1, generator=g)
        ckpt["state_dict"][DEAD[1]] = torch.randn(HIDDEN, generator=g)
    torch.save(ckpt, dst)
    return dst


def test_new_checkpoints_carry_the_current_format(prior_run: Path):
    raw = torch.load(prior_run / "last.ckpt", map_location="cpu", weights_only=True)
    assert raw["vqgen"]["format_version"] == CHECKPOINT_FORMAT


def test_format_1_prior_is_upgraded_and_gives_the_same_logits(prior_run: Path, tiny_vqvae_run,
                                                              tmp_path: Path):
    old = as_format_1(prior_run / "last.ckpt", tmp_path / "old.ckpt")
    ckpt = read_checkpoint(old, "prior")
    assert ckpt["vqgen"]["format_version"] == CHECKPOINT_FORMAT
    assert ckpt["vqgen"]["migrated_from"] == 1 and sorted(ckpt["vqgen"]["migrated_keys"]) == sorted(DEAD)
    codes, labels = _val_batch(tiny_vqvae_run)
    with torch.no_grad():
        want = load_prior(prior_run / "last.ckpt").model(codes, labels)
        got = load_prior(old).model(codes, labels)
    assert torch.equal(got, want)


def test_format_1_prior_without_the_dead_conv_loads_unchanged(prior_run: Path, tmp_path: Path):
    old = as_format_1(prior_run / "last.ckpt", tmp_path / "old.ckpt", dead_conv=False)
    ckpt = read_checkpoint(old, "prior")
    assert ckpt["vqgen"]["format_version"] == CHECKPOINT_FORMAT
    assert "migrated_from" not in ckpt["vqgen"]  # nothing changed: it can be resumed
    load_prior(old)


def test_the_dead_conv_in_a_current_format_checkpoint_is_an_error(prior_run: Path, tmp_path: Path):
    """Only the migration of format 1 removes those weights: no silent partial load."""
    bad = as_format_1(prior_run / "last.ckpt", tmp_path / "bad.ckpt", version=CHECKPOINT_FORMAT)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_prior(bad)


def test_a_migrated_prior_is_not_resumed(prior_run: Path, tmp_path: Path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(prior_run, run)
    as_format_1(prior_run / "last.ckpt", run / "last.ckpt")
    before = (run / "last.ckpt").read_bytes()
    rc = main(["train-prior", "--codes", "unused", "--out", str(run), "--resume",
               "--max-epochs", "2", "--accelerator", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "older vqgen (checkpoint format 1)" in err and "cannot be resumed" in err
    assert (run / "last.ckpt").read_bytes() == before
