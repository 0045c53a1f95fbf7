"""Mixed precision end to end, bad --precision values, and reading checkpoints of the
previous format (the quantizer's ``initialized`` buffer became ``kmeans_pending``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_train_argv
from vqgen.pipeline.cli import main
from vqgen.stage1_vqvae.codes import read_code_maps
from vqgen.stage1_vqvae.data import build_dataset
from vqgen.stage1_vqvae.lit import LitVQVAE, load_vqvae
from vqgen.stage1_vqvae.quantizer import VectorQuantizer
from vqgen.stage1_vqvae.runtime.checkpoint import CHECKPOINT_FORMAT, CheckpointError, read_checkpoint

PENDING = "model.quantizer.kmeans_pending"


def test_bf16_mixed_training_end_to_end_on_cpu(tmp_path: Path, monkeypatch):
    """``--precision bf16-mixed`` trains; every code a training step picked is the float32
    nearest of its (bf16-computed) encoder output; the dumped codes are a float32 encode."""
    seen = []
    forward = VectorQuantizer.forward

    def recording(self, z_e):
        pending, before = bool(self.kmeans_pending), self.codebook.detach().clone()
        out = forward(self, z_e)
        if self.training and not pending:  # a k-means step replaces the codebook first
            seen.append((z_e.detach().float(), before, out[1]))
        return out

    monkeypatch.setattr(VectorQuantizer, "forward", recording)
    out = tmp_path / "run"
    assert main(tiny_train_argv(out, "--precision", "bf16-mixed", "--no-codes")) == 0
    monkeypatch.undo()
    assert len(seen) >= 3
    wrong = 0
    for z_e, codebook, codes in seen:
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        exact = torch.cdist(flat, codebook, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
        wrong += int((exact != codes.reshape(-1)).sum())
    assert wrong == 0, f"{wrong} codes picked under bf16 autocast were not the nearest"

    lit = load_vqvae(out / "last.ckpt")
    q = lit.model.quantizer
    assert q.codebook.dtype == torch.float32 and torch.isfinite(q.codebook).all()
    assert not bool(q.kmeans_pending)
    # codes dumped from the bf16-trained checkpoint == a float32 encode of the same file
    assert main(["encode", "--vqvae", str(out / "last.ckpt"), "--splits", "val",
                 "--out", str(tmp_path / "codes"), "--device", "cpu"]) == 0
    maps = read_code_maps(tmp_path / "codes" / "val")
    ds = build_dataset("mnist5k", "val", channels=1, image_size=(28, 28))
    images = torch.stack([ds[i][0] for i in range(64)])
    with torch.no_grad():
        assert np.array_equal(np.asarray(maps.codes[:64]), lit.model.encode(images).numpy())


def test_unknown_precision_is_lightnings_one_line_error(tmp_path: Path, capsys):
    out = tmp_path / "run"
    rc = main(tiny_train_argv(out, "--precision", "banana"))
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "'banana' is invalid" in err and "bf16-mixed" in err  # Lightning's allowed values
    assert not out.exists()  # refused before the run folder was made
    rc = main(["train-prior", "--codes", str(tmp_path), "--out", str(tmp_path / "p"),
               "--precision", "16-mix"])
    assert rc == 2 and "'16-mix' is invalid" in capsys.readouterr().err


def _as_format_1(src: Path, dst: Path, version: int = 1) -> dict:
    """Rewrite a checkpoint the way formats 1 and 2 stored it: ``initialized`` (the opposite
    of ``kmeans_pending``)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    sd["model.quantizer.initialized"] = ~sd.pop(PENDING)
    ckpt["vqgen"]["format_version"] = version
    torch.save(ckpt, dst)
    return ckpt


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("pending", [False, True])
def test_old_format_checkpoint_is_migrated_explicitly(tiny_vqvae_run: Path, tmp_path: Path,
                                                      pending: bool, version: int):
    src = tmp_path / "new.ckpt"
    ckpt = torch.load(tiny_vqvae_run / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["state_dict"][PENDING] = torch.tensor(pending)
    torch.save(ckpt, src)
    old = tmp_path / "old.ckpt"
    _as_format_1(src, old, version)
    # a renamed buffer leaves the optimizer state valid: the run may still be resumed
    assert "migrated_from" not in read_checkpoint(old, "vqvae")["vqgen"]
    want = load_vqvae(src).state_dict()
    # both loaders: vqgen's own (rebuild_module) and Lightning's (used by --resume)
    for lit in (load_vqvae(old), LitVQVAE.load_from_checkpoint(old, map_location="cpu")):
        got = lit.state_dict()
        assert set(got) == set(want)
        assert bool(got[PENDING]) is pending
        for key, value in want.items():
            assert torch.equal(got[key], value), key
        # the host-side copy follows the loaded buffer: a pending model runs k-means
        assert lit.model.quantizer._kmeans_due() is pending


def test_old_key_in_a_new_format_checkpoint_is_refused(tiny_vqvae_run: Path, tmp_path: Path):
    """The migration is tied to the format version, not a lenient load."""
    bad = tmp_path / "bad.ckpt"
    ckpt = _as_format_1(tiny_vqvae_run / "last.ckpt", bad)
    ckpt["vqgen"]["format_version"] = CHECKPOINT_FORMAT
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_vqvae(bad)
