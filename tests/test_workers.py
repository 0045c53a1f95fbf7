"""DataLoader workers (--num-workers auto), pinned memory, resume with workers, and stage
two's memory-mapped code maps widened to int64 only as batches are drawn."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tests.test_faults import TINY_DATA, TINY_VQ, Crash, _assert_same_training_state, _state, _targs
from vqgen.pipeline.cli import build_parser, main
from vqgen.stage1_vqvae.data import build_dataset
from vqgen.stage1_vqvae.runtime.data_order import EpochShuffleSampler, make_loader, resolve_workers
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.data import CodeDataset, CodeMapDataModule, collate_codes


@pytest.fixture
def cpus(monkeypatch):
    def set_cpus(n: int) -> None:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(n)), raising=False)
        monkeypatch.setattr("os.cpu_count", lambda: n)
    return set_cpus


def test_auto_workers_follow_the_rule(tiny_image_folder: Path, cpus):
    folder = build_dataset(f"folder:{tiny_image_folder}", "train", channels=3, image_size=(16, 16))
    memory = build_dataset("mnist5k", "train", channels=1, image_size=(28, 28))
    assert folder.reads_files and not memory.reads_files
    for n, processes, want in ((2, 1, 1), (5, 1, 4), (64, 1, 8), (5, 2, 1), (1, 1, 0)):
        cpus(n)
        assert resolve_workers("auto", folder, processes) == want, (n, processes)
        assert resolve_workers("auto", memory, processes) == 0
    assert resolve_workers(3, memory) == 3  # an explicit number is kept
    for bad in (-1, "many", True, 1.5):
        with pytest.raises(ValueError, match="auto"):
            resolve_workers(bad, memory)


def test_training_loader_workers_persist_and_pin_only_on_gpu(tiny_image_folder: Path, cpus):
    cpus(4)
    ds = build_dataset(f"folder:{tiny_image_folder}", "train", channels=3, image_size=(16, 16))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    loader = make_loader(ds, batch_size=4, seed=0, training=True, trainer=trainer, num_workers="auto")
    assert loader.num_workers == 3 and loader.persistent_workers and not loader.pin_memory
    once = make_loader(ds, batch_size=4, seed=0, training=False, num_workers="auto")
    assert once.num_workers == 3 and not once.persistent_workers  # no Trainer: one pass
    assert make_loader(ds, batch_size=4, seed=0, training=False, num_workers=0).num_workers == 0


@pytest.mark.parametrize("verb", ["train-vqvae", "train-prior", "encode"])
def test_num_workers_defaults_to_auto_and_says_the_rule(verb: str, capsys):
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.choices).choices[verb]
    action = next(a for a in sub._actions if "--num-workers" in a.option_strings)
    assert action.default == "auto"
    assert "image folders" in action.help and "in-memory" in action.help
    need = {"train-vqvae": [], "train-prior": ["--codes", "x"], "encode": ["--vqvae", "x", "--out", "y"]}
    with pytest.raises(SystemExit) as e:
        parser.parse_args([verb, *need[verb], "--num-workers", "lots"])
    assert e.value.code == 2 and "expected auto or an integer" in capsys.readouterr().err


def test_sampler_order_is_unchanged_by_the_array_shard():
    """The shard is an int64 array now (memory); the order is the one resumes rely on."""
    for n, world in ((10, 1), (10, 3), (7, 4)):
        for rank in range(world):
            s = EpochShuffleSampler(n, seed=5, rank=rank, world_size=world)
            s.set_epoch(2)
            g = torch.Generator().manual_seed(5 * 100003 + 2)
            order = torch.randperm(n, generator=g).tolist()
            total = -(-n // world) * world
            want = (order * 2)[:total][rank::world]
            got = list(s)
            assert got == want and all(type(i) is int for i in got)


def test_resume_with_worker_processes_is_exact(tmp_path: Path):
    """Crash mid-epoch with 2 workers, resume with 2: ends where a 0-worker run ends."""
    straight = tmp_path / "straight"
    train_vqvae(straight, TINY_VQ, data_args=dict(TINY_DATA, num_workers=0),
                trainer_args=_targs(), write_codes=False)
    crashed = tmp_path / "crashed"
    data = dict(TINY_DATA, num_workers=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_vqvae(crashed, TINY_VQ, data_args=data, trainer_args=_targs(callbacks=[Crash(7)]),
                    write_codes=False)
    assert _state(crashed / "last.ckpt")["global_step"] == 6  # mid-epoch 1
    train_vqvae(crashed, TINY_VQ, data_args=data, trainer_args=_targs(), resume=True,
                write_codes=False)
    _assert_same_training_state(_state(straight / "last.ckpt"), _state(crashed / "last.ckpt"))


# ---------------------------------------------------------------- stage two data


def test_code_maps_stay_memory_mapped_and_batches_are_int64(tiny_vqvae_run: Path):
    dm = CodeMapDataModule(str(tiny_vqvae_run / "codes"), batch_size=16, num_workers=0)
    dm.setup()
    ds = dm._sets["train"]
    assert isinstance(ds.codes, np.memmap) and ds.codes.dtype == np.uint16
    codes, labels = next(iter(dm.train_dataloader()))
    assert codes.dtype == torch.int64 and codes.shape == (16, 7, 7)
    assert labels.dtype == torch.int64 and labels.shape == (16,)
    # the batch is the file's rows, in the sampler's order
    order = list(EpochShuffleSampler(len(ds), seed=0))[:16]
    assert np.array_equal(codes.numpy(), np.asarray(ds.codes[order]).astype(np.int64))
    assert np.array_equal(labels.numpy(), np.asarray(ds.labels[order]))


def test_code_dataset_pickles_as_file_names_not_data(tiny_vqvae_run: Path):
    """A spawned worker (macOS) gets the file names; it maps the files itself."""
    maps = CodeMapDataModule(str(tiny_vqvae_run / "codes"), num_workers=0).maps["train"]
    ds = CodeDataset(maps)
    blob = pickle.dumps(ds)
    assert len(blob) < 2000 < maps.codes.nbytes
    back = pickle.loads(blob)
    assert isinstance(back.codes, np.memmap)
    a, b = collate_codes([ds[i] for i in range(5)]), collate_codes([back[i] for i in range(5)])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_unlabelled_code_maps_give_minus_one(tiny_vqvae_run: Path, tmp_path: Path):
    from vqgen.stage1_vqvae.codes import read_code_maps, write_code_maps

    src = read_code_maps(tiny_vqvae_run / "codes" / "train")
    meta = {k: v for k, v in src.meta.items() if k not in ("count", "code_shape", "num_codes")}
    meta.update(num_classes=0, class_names=[])
    write_code_maps(tmp_path / "u", np.asarray(src.codes[:3]), None, num_codes=src.num_codes,
                    meta=meta)
    codes, labels = collate_codes([CodeDataset(read_code_maps(tmp_path / "u"))[i] for i in range(3)])
    assert labels.tolist() == [-1, -1, -1] and codes.dtype == torch.int64


def test_train_prior_with_auto_workers_runs(tiny_vqvae_run: Path, tmp_path: Path):
    out = tmp_path / "prior"
    assert main(["train-prior", "--codes", str(tiny_vqvae_run / "codes"), "--out", str(out),
                 "--hidden", "8", "--num-layers", "2", "--head-hidden", "8", "--max-steps", "3",
                 "--limit-val-batches", "1", "--accelerator", "cpu"]) == 0
    assert (out / "last.ckpt").is_file()
