"""Faults a run must survive: a crash or SIGKILL mid-epoch, then --resume; a killed encode
or sample; and determinism (same seed, same steps -> the same bits on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import TINY_MODEL_ARGS
from tests.subproc import start, vqgen, wait_for
from vqgen.pipeline.cli import main
from vqgen.stage1_vqvae.codes import read_code_maps
from vqgen.stage1_vqvae.lit import load_vqvae
from vqgen.stage1_vqvae.runtime.fsutil import TEMP_MARK, atomic_dir
from vqgen.stage1_vqvae.runtime.run_dir import RUN_MANIFEST
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.lit import load_prior
from vqgen.stage2_prior.train import train_prior

TINY_VQ = dict(hidden=16, res_hidden=8, num_res=1, code_dim=8, num_codes=32)
TINY_DATA = dict(data="mnist5k", channels=1, image_size=(28, 28), batch_size=32, seed=0)
TINY_PRIOR = dict(hidden=8, num_layers=2, head_hidden=16)


class Crash(pl.Callback):
    """Raise right after optimizer step ``at`` (as a crash or a kill would stop the run)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def _targs(**kw) -> dict:
    return dict(max_epochs=2, accelerator="cpu", limit_train_batches=5, limit_val_batches=2,
                checkpoint_every_steps=2, quiet=True, **kw)


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"weights differ in {differ[:5]}"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(),
                      b["optimizer_states"][0]["state"].values(), strict=True):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key


# ------------------------------------------------------------- in-process, exact


@pytest.fixture(scope="module")
def vqvae_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stage one, 2 epochs x 5 steps: uninterrupted, again, and crashed at step 7 (epoch 1,
    after its checkpoint at step 6) then resumed."""
    root = tmp_path_factory.mktemp("faults_vq")
    runs = {}
    for name in ("straight", "again"):
        train_vqvae(root / name, TINY_VQ, data_args=TINY_DATA, trainer_args=_targs(),
                    write_codes=False)
        runs[name] = root / name
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_vqvae(root / "crashed", TINY_VQ, data_args=TINY_DATA,
                    trainer_args=_targs(callbacks=[Crash(7)]), write_codes=False)
    runs["at_crash"] = root / "at_crash.ckpt"
    shutil.copy(root / "crashed" / "last.ckpt", runs["at_crash"])
    train_vqvae(root / "crashed", TINY_VQ, data_args=TINY_DATA, trainer_args=_targs(),
                resume=True, write_codes=False)
    runs["crashed"] = root / "crashed"
    return runs


def test_training_is_deterministic_on_cpu(vqvae_runs):
    """Same seed, same steps: bit-identical weights, EMA codebook and optimizer state."""
    _assert_same_training_state(_state(vqvae_runs["straight"] / "last.ckpt"),
                                _state(vqvae_runs["again"] / "last.ckpt"))


def test_mid_epoch_checkpoint_resumes_at_the_next_batch(vqvae_runs):
    at_crash = _state(vqvae_runs["at_crash"])
    assert at_crash["global_step"] == 6 and at_crash["epoch"] == 1  # mid-epoch 1
    position = at_crash["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert position["epoch"] == 1 and position["batches"] == 1
    # crash at step 7, resume from step 6: ends exactly where the uninterrupted run ends
    _assert_same_training_state(_state(vqvae_runs["straight"] / "last.ckpt"),
                                _state(vqvae_runs["crashed"] / "last.ckpt"))


@pytest.mark.parametrize("extras", [{}, dict(ema_decay=0.9, dropout=0.2, weight_decay=0.05)],
                         ids=["plain", "ema-dropout-wd"])
def test_prior_resumes_mid_epoch_exactly(tiny_vqvae_run: Path, tmp_path: Path, extras: dict):
    codes = tiny_vqvae_run / "codes"
    targs = dict(_targs(), limit_train_batches=4)
    model = {**TINY_PRIOR, **extras}
    train_prior(codes, tmp_path / "straight", model, trainer_args=targs, batch_size=32)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_prior(codes, tmp_path / "crashed", model,
                    trainer_args=dict(targs, callbacks=[Crash(5)]), batch_size=32)
    assert _state(tmp_path / "crashed" / "last.ckpt")["global_step"] == 4
    train_prior(codes, tmp_path / "crashed", model, trainer_args=targs, batch_size=32,
                resume=True)
    if extras:  # the averaged weights are in the state dict the comparison covers
        assert any(k.startswith("ema.") for k in _state(tmp_path / "crashed" / "last.ckpt")["state_dict"])
    # label dropout is drawn from (seed, step, rank), so even it replays
    _assert_same_training_state(_state(tmp_path / "straight" / "last.ckpt"),
                                _state(tmp_path / "crashed" / "last.ckpt"))


# ------------------------------------------------------------- SIGKILL, subprocesses


def _mid_epoch_checkpoint(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        ckpt = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a half-written file would fail here (and the test later)
        return False
    return ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] > 0


def _kill_mid_epoch(argv: list, run: Path, log: Path) -> dict:
    """Start ``vqgen argv``, SIGKILL it once a mid-epoch checkpoint exists; the checkpoint."""
    proc = start(*argv, log=log)
    try:
        wait_for(lambda: _mid_epoch_checkpoint(run / "last.ckpt"), proc, what="a mid-epoch "
                 "checkpoint", log=log)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return _state(run / "last.ckpt")


def test_sigkill_train_vqvae_then_resume(tmp_path: Path):
    run = tmp_path / "run"
    steps, epochs = 12, 3
    argv = ["train-vqvae", "--data", "mnist5k", "--out", run, *TINY_MODEL_ARGS,
            "--max-epochs", epochs, "--limit-train-batches", steps, "--limit-val-batches", "2",
            "--batch-size", "32", "--accelerator", "cpu", "--device", "cpu",
            "--checkpoint-every-steps", "2"]
    killed = _kill_mid_epoch(argv, run, tmp_path / "kill.log")
    assert 0 < killed["global_step"] < steps * epochs
    assert not (run / "codes").exists()  # the killed run never got to its code maps
    done = vqgen(*argv, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    final = _state(run / "last.ckpt")
    assert final["global_step"] == steps * epochs  # the planned number of steps, no more
    lit = load_vqvae(run / "last.ckpt")
    assert read_code_maps(run / "codes" / "val").meta["num_codes"] == lit.num_codes
    # no temp files left; the run's manifest (what --overwrite may remove) is meant to stay
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != RUN_MANIFEST]
    assert not leftovers, leftovers
    assert "codes/val/meta.json" in json.loads((run / RUN_MANIFEST).read_text())["files"]


def test_sigkill_train_prior_then_resume(tiny_vqvae_run: Path, tmp_path: Path):
    run = tmp_path / "prior"
    steps, epochs = 8, 3
    argv = ["train-prior", "--codes", tiny_vqvae_run / "codes", "--out", run, "--hidden", "16",
            "--num-layers", "3", "--head-hidden", "16", "--max-epochs", epochs,
            "--limit-train-batches", steps, "--batch-size", "32", "--accelerator", "cpu",
            "--checkpoint-every-steps", "2"]
    killed = _kill_mid_epoch(argv, run, tmp_path / "kill.log")
    assert 0 < killed["global_step"] < steps * epochs
    done = vqgen(*argv, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _state(run / "last.ckpt")["global_step"] == steps * epochs
    assert load_prior(run / "last.ckpt").num_codes == 32


def test_sigkill_encode_leaves_nothing_that_looks_complete(tiny_vqvae_run: Path, tmp_path: Path):
    out = tmp_path / "codes"
    argv = ["encode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--out", out, "--device", "cpu",
            "--splits", "train", "--batch-size", "8"]
    proc = start(*argv, log=tmp_path / "kill.log")
    try:
        wait_for(lambda: (out / ".train.partial" / "codes.npy").exists(), proc,
                 what="encode to start writing", log=tmp_path / "kill.log")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # the split was being built in a hidden staging folder: nothing at out/train at all
    assert not (out / "train").exists()
    with pytest.raises(Exception, match="does not exist"):
        read_code_maps(out / "train")
    # the same command finishes the job, with no --overwrite needed
    again = vqgen(*argv)
    assert again.returncode == 0, again.stderr[-2000:]
    maps, ref = read_code_maps(out / "train"), read_code_maps(tiny_vqvae_run / "codes" / "train")
    assert len(maps) == len(ref) == 4500
    assert np.array_equal(maps.labels, ref.labels)
    # the training-time dump used batches of 512: float rounding in the kernels may flip a
    # near-tie between two codes (7 of 220,500 when measured), nothing more
    assert (maps.codes != ref.codes).mean() < 1e-3
    assert sorted(p.name for p in (out / "train").iterdir()) == ["codes.npy", "index.npy",
                                                                 "labels.npy", "meta.json"]
    assert sorted(p.name for p in out.iterdir()) == ["train"]  # the staging folder is gone


def test_sigkill_sample_leaves_no_output(tiny_vqvae_run: Path, tmp_path: Path):
    prior = tmp_path / "prior"
    assert main(["train-prior", "--codes", str(tiny_vqvae_run / "codes"), "--out", str(prior),
                 "--hidden", "8", "--num-layers", "2", "--head-hidden", "16", "--max-epochs", "1",
                 "--limit-train-batches", "2", "--accelerator", "cpu"]) == 0
    out = tmp_path / "samples"
    argv = ["sample", "--prior", prior / "last.ckpt", "--device", "cpu", "--out", out,
            "--num", "1000"]  # killed while it writes the PNGs (into a hidden temp folder)
    proc = start(*argv, log=tmp_path / "kill.log")
    try:
        wait_for(lambda: any(p.name.startswith(".samples.") for p in tmp_path.iterdir()), proc,
                 what="sample to start writing", log=tmp_path / "kill.log")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not out.exists()  # only a hidden temp folder, never a partial --out
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".samples.")]
    assert stale
    rerun = ["sample", "--prior", str(prior / "last.ckpt"), "--device", "cpu", "--out", str(out),
             "--num", "4"]
    assert main(rerun) == 0
    assert (out / "samples.json").exists() and (out / "codes.npy").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".samples.")], (
        "the dead run's temp folder was not cleaned up")


def test_stale_temp_of_a_live_process_is_kept(tmp_path: Path):
    """Only temps whose writer is gone are removed: a concurrent run's stay."""
    live = tmp_path / f".out.vqgen-{os.getppid()}.abcdefgh.tmp"  # the form make_temp_dir makes
    live.mkdir()
    (live / TEMP_MARK).touch()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("1")
    assert live.exists() and (tmp_path / "out" / "x").exists()
    assert np.array_equal(np.sort([p.name for p in tmp_path.iterdir()]),
                          np.sort([live.name, "out"]))


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch):
    """A save that dies half-way (disk full, kill) leaves the old last.ckpt whole."""
    from vqgen.stage1_vqvae.runtime.trainer import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_atomic_outputs_get_the_usual_permissions(tmp_path: Path):
    """Temp files and folders are private while written; the results are not."""
    from vqgen.stage1_vqvae.runtime.fsutil import atomic_file

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "report") as tmp:
            (tmp / "a.txt").write_text("x")
        with atomic_file(tmp_path / "done.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "done.json").stat().st_mode & 0o777 == 0o644


def test_resume_position_carries_over_to_another_world_size():
    """A run saved mid-epoch on 2 ranks and resumed on 1 (or 4) skips the same items."""
    from vqgen.stage1_vqvae.runtime.data_order import EpochShuffleSampler, ResumableLoader

    n, bs = 40, 4
    saved = {"epoch": 3, "batches": 2, "batch_size": bs, "world_size": 2}  # 16 items used
    used = set()
    for r in range(2):
        s = EpochShuffleSampler(n, seed=5, rank=r, world_size=2)
        s.set_epoch(3)
        used |= set(list(s)[: 2 * bs])
    for world in (1, 4):
        rest = []
        for r in range(world):
            loader = ResumableLoader(list(range(n)), batch_size=bs, progress=lambda: (0, 0),
                                     sampler=EpochShuffleSampler(n, seed=5, rank=r,
                                                                 world_size=world))
            loader.load_state_dict(saved)
            loader.sampler.set_epoch(3)
            rest += [int(i) for b in loader for i in b]
        assert sorted(rest) == sorted(set(range(n)) - used), world
