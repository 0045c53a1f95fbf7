"""Issue 12: nothing a user types may lose their files or silently give a wrong result.

Every case runs in-process through ``pipeline.cli.main(argv)`` (a real subprocess only
for SIGKILL) and checks the exit code, the one-line message naming the thing at fault,
and what is and is not left on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.subproc import start, wait_for
from tests.test_cli_stage1 import assert_usage_error, run
from vqgen.pipeline.cli import main
from vqgen.pipeline.generate import load_pair, sample
from vqgen.stage1_vqvae.codes import read_code_maps, write_code_maps
from vqgen.stage1_vqvae.data import build_dataset

PRIOR_ARGS = ["--hidden", "8", "--num-layers", "2", "--head-hidden", "16", "--max-epochs", "1",
              "--limit-train-batches", "2", "--accelerator", "cpu"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def train_prior(codes: Path, out: Path) -> Path:
    assert main(["train-prior", "--codes", str(codes), "--out", str(out), *PRIOR_ARGS]) == 0
    return out / "last.ckpt"


@pytest.fixture(scope="module")
def prior(tiny_vqvae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prior on the shared code maps (read-only)."""
    return train_prior(tiny_vqvae_run / "codes", tmp_path_factory.mktemp("rel") / "prior")


def images(root: Path, classes: list[str], n: int = 5, ext: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                root / c / f"{c}{i}{ext}")
    return root


# ---------------------------------------------------------------------- data loss


def test_sample_overwrite_replaces_only_its_own_files(prior: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    argv = ["sample", "--prior", prior, "--device", "cpu", "--out", out]
    rc, _, err = run(capsys, *argv, "--num", "4")
    assert_usage_error(rc, err, "sample", "thesis.tex", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert run(capsys, *argv, "--num", "4", "--overwrite")[0] == 0
    assert json.loads((out / "samples.json").read_text())["files"] == [
        "000000.png", "000001.png", "000002.png", "000003.png", "codes.npy", "grid.png"]
    # a second --overwrite with fewer images removes the old extra ones, keeps the thesis
    assert run(capsys, *argv, "--num", "2", "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "000000.png", "000001.png", "codes.npy", "grid.png", "samples.json", "thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folders left


def test_decode_overwrite_never_writes_over_a_file_it_did_not_write(
        tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.png").write_bytes(b"my own grid")
    (out / "mine.txt").write_text("keep")
    before = snapshot(out)
    rc, _, err = run(capsys, "decode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--codes",
                     tiny_vqvae_run / "codes" / "val", "--limit", "2", "--device", "cpu",
                     "--out", out, "--overwrite")
    assert_usage_error(rc, err, "decode", "grid.png", "did not write")
    assert snapshot(out) == before


@pytest.mark.parametrize("case", ["sample-into-prior-run", "decode-into-its-codes",
                                  "train-prior-into-vqvae-run", "encode-into-vqvae-run"])
def test_overwrite_never_touches_an_input(case: str, tiny_vqvae_run: Path, prior: Path,
                                          tmp_path: Path, capsys):
    vq = tmp_path / "vq"
    shutil.copytree(tiny_vqvae_run, vq)
    prior_run = tmp_path / "prior"
    shutil.copytree(prior.parent, prior_run)
    argv, root, flag = {
        "sample-into-prior-run": (["sample", "--prior", prior_run / "last.ckpt", "--device", "cpu",
                                   "--num", "2", "--out", prior_run], prior_run, "--prior"),
        "decode-into-its-codes": (["decode", "--vqvae", vq / "last.ckpt", "--codes",
                                   vq / "codes" / "val", "--device", "cpu", "--out",
                                   vq / "codes" / "val"], vq, "--codes"),
        "train-prior-into-vqvae-run": (["train-prior", "--codes", vq / "codes", "--out", vq,
                                        *PRIOR_ARGS], vq, "--codes"),
        "encode-into-vqvae-run": (["encode", "--vqvae", vq / "last.ckpt", "--device", "cpu",
                                   "--out", vq], vq, "--vqvae"),
    }[case]
    before = snapshot(root)
    rc, _, err = run(capsys, *argv, "--overwrite")
    assert_usage_error(rc, err, argv[0], flag, "input")
    assert snapshot(root) == before


def test_killed_reencode_keeps_the_previous_split(tiny_vqvae_run: Path, tmp_path: Path):
    out = tmp_path / "codes"
    shutil.copytree(tiny_vqvae_run / "codes", out)
    before = snapshot(out / "train")
    argv = ["encode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--out", out, "--device", "cpu",
            "--splits", "train", "--batch-size", "8", "--overwrite"]
    proc = start(*argv, log=tmp_path / "kill.log")
    try:
        wait_for(lambda: (out / ".train.partial" / "codes.npy").exists(), proc,
                 what="the re-encode to start writing", log=tmp_path / "kill.log")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(out / "train") == before  # untouched, byte for byte
    assert len(read_code_maps(out / "train")) == 4500
    # the next run cleans the dead run's staging folder up
    assert main([str(a) for a in argv]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]


# ---------------------------------------------------------------------- silently wrong


def test_symlink_loop_lists_each_image_once_in_one_split(tmp_path: Path):
    root = images(tmp_path / "data", ["a", "b"], n=10)
    (root / "a" / "again").symlink_to(".")
    (root / "b" / "up").symlink_to("..")
    kw = dict(channels=1, image_size=(28, 28), val_fraction=0.2, seed=0)
    train, val = (build_dataset(f"folder:{root}", s, **kw) for s in ("train", "val"))
    real = [str(Path(p).resolve()) for p in train.paths + val.paths]
    assert len(real) == len(set(real)) == 20
    assert not {str(Path(p).resolve()) for p in train.paths} & {str(Path(p).resolve())
                                                                for p in val.paths}


def test_self_link_and_unreadable_files_are_named_gif_is_read(
        tiny_vqvae_run: Path, tmp_path: Path, capsys):
    root = images(tmp_path / "data", ["a", "b"], n=4, ext=".gif")
    (root / "a" / "me.png").symlink_to("me.png")
    (root / "b" / "notes.txt").write_text("not an image")
    out = tmp_path / "codes"
    rc, _, err = run(capsys, "encode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--data",
                     f"folder:{root}", "--val-fraction", "0.25", "--device", "cpu", "--out", out)
    assert rc == 0, err
    assert "skipped 2" in err and "a/me.png" in err and "b/notes.txt" in err
    assert len(read_code_maps(out / "train")) + len(read_code_maps(out / "val")) == 8


def test_class_name_wins_over_index(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    codes = tmp_path / "codes"
    shutil.copytree(tiny_vqvae_run / "codes", codes)
    names = [str(i + 1) for i in range(10)]  # classes named 1..10, at indices 0..9
    for split in ("train", "val"):
        p = codes / split / "meta.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "class_names": names}))
    ckpt = train_prior(codes, tmp_path / "prior")
    for value, index in (("1", 0), ("#1", 1), ("10", 9)):
        out = tmp_path / f"s{index}"
        rc, _, err = run(capsys, "sample", "--prior", ckpt, "--class", value, "--num", "2",
                         "--device", "cpu", "--out", out)
        assert rc == 0, err
        assert set(np.load(out / "labels.npy").tolist()) == {index}, value


def test_replaced_vqvae_is_refused_unless_meant(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    vq = tmp_path / "vq"
    shutil.copytree(tiny_vqvae_run, vq)
    for split in ("train", "val"):  # the copied codes name the copied VQ-VAE
        p = vq / "codes" / split / "meta.json"
        p.write_text(json.dumps({**json.loads(p.read_text()),
                                 "vqvae_checkpoint": str(vq / "last.ckpt")}))
    ckpt = train_prior(vq / "codes", tmp_path / "prior")
    other = torch.load(vq / "last.ckpt", weights_only=True)
    other["state_dict"] = {k: v + 0.5 if k.startswith("model.decoder") and v.is_floating_point()
                           else v for k, v in other["state_dict"].items()}
    torch.save(other, vq / "last.ckpt")  # same num_codes, other weights, other sha256
    base = ["sample", "--prior", ckpt, "--num", "2", "--device", "cpu"]
    rc, _, err = run(capsys, *base, "--out", tmp_path / "a")
    assert_usage_error(rc, err, "sample", str(vq / "last.ckpt"), "sha256", "--allow-other-vqvae")
    rc, _, err = run(capsys, *base, "--allow-other-vqvae", "--out", tmp_path / "a")
    assert_usage_error(rc, err, "sample", "--allow-other-vqvae", "--vqvae")
    assert not (tmp_path / "a").exists()
    rc, _, err = run(capsys, *base, "--vqvae", vq / "last.ckpt", "--allow-other-vqvae",
                     "--out", tmp_path / "a")
    assert rc == 0 and "--allow-other-vqvae" in err


@pytest.mark.parametrize("verb", ["train-vqvae", "train-prior"])
@pytest.mark.parametrize("flag", ["--max-steps", "--limit-train-batches"])
def test_training_nothing_is_refused_up_front(verb: str, flag: str, tiny_vqvae_run: Path,
                                             tmp_path: Path, capsys):
    out = tmp_path / "run"
    extra = (["--codes", tiny_vqvae_run / "codes", *PRIOR_ARGS] if verb == "train-prior"
             else ["--accelerator", "cpu", "--max-epochs", "1"])
    rc, _, err = run(capsys, verb, "--out", out, *extra, flag, "0")
    assert_usage_error(rc, err, verb, flag, "nothing")
    assert not out.exists()  # no logs/ left behind


@pytest.mark.parametrize("argv, needles", [
    (["sample", "--per-class", "2", "--num", "5"], ["--per-class", "--num"]),
    (["train-vqvae", "--beta", "-1"], ["--beta", "-1"]),
    (["train-vqvae", "--decay", "2"], ["--decay", "2"]),
    (["train-vqvae", "--image-size", "100000"], ["--image-size", "4096"]),
    (["sample", "--seed", str(2**70)], ["--seed"]),
    (["train-prior", "--seed", str(2**70)], ["--seed"]),
    (["sample", "--device", "nonsense"], ["--device", "nonsense"]),
    (["sample", "--num", "1000000000"], ["--num 1000000000", "GiB"]),
    # the count is checked before 10**12 labels are built (that was a MemoryError traceback)
    (["sample", "--per-class", "100000000000"], ["--per-class 100000000000", "GiB"]),
    (["train-prior", "--num-workers", "-1"], ["--num-workers"]),
    (["train-prior", "--kernel-size", "10001"], ["--kernel-size 10001", "at most 15"]),
    (["train-prior", "--max-steps", "-5"], ["--max-steps -5"]),
    (["train-vqvae", "--limit-val-batches", "0"], ["--limit-val-batches"]),
])
def test_bad_values_are_one_line(argv: list[str], needles: list[str], tiny_vqvae_run: Path,
                                 prior: Path, tmp_path: Path, capsys):
    verb, out = argv[0], tmp_path / "out"
    extra = {"sample": ["--prior", prior, "--device", "cpu"],
             "train-prior": ["--codes", tiny_vqvae_run / "codes", *PRIOR_ARGS],
             "train-vqvae": ["--accelerator", "cpu"]}[verb]
    rc, _, err = run(capsys, *argv[:1], *extra, *argv[1:], "--out", out)
    assert_usage_error(rc, err, verb, *needles)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_device_cuda_without_cuda(prior: Path, tmp_path: Path, capsys):
    rc, _, err = run(capsys, "sample", "--prior", prior, "--device", "cuda", "--out", tmp_path / "o")
    assert_usage_error(rc, err, "sample", "--device cuda", "CUDA")


def test_empty_val_split_is_refused(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    codes = tmp_path / "codes"
    shutil.copytree(tiny_vqvae_run / "codes" / "train", codes / "train")
    meta = read_code_maps(codes / "train").meta
    write_code_maps(codes / "val", np.zeros((0, 7, 7), np.int64), np.zeros(0, np.int64),
                    num_codes=meta["num_codes"], meta={**meta, "count": 0})
    rc, _, err = run(capsys, "train-prior", "--codes", codes, "--out", tmp_path / "p", *PRIOR_ARGS)
    assert_usage_error(rc, err, "train-prior", "val", "no code maps")
    assert not (tmp_path / "p").exists()


def test_sampling_does_not_depend_on_the_batch_size(prior: Path):
    p, vq = load_pair(prior)
    labels = torch.arange(7) % 10
    ref = sample(p, vq, 7, labels=labels, seed=3, batch_size=7).codes
    for bs, sampler in ((1, "cached"), (3, "cached"), (64, "naive")):
        got = sample(p, vq, 7, labels=labels, seed=3, batch_size=bs, sampler=sampler).codes
        assert torch.equal(got, ref), (bs, sampler)
    # the first images of a longer run are the same images
    assert torch.equal(sample(p, vq, 3, labels=labels[:3], seed=3).codes, ref[:3])
    assert not torch.equal(sample(p, vq, 7, labels=labels, seed=4).codes, ref)


def test_code_maps_record_each_rows_source(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    root = images(tmp_path / "data", ["a", "b"], n=5)
    out = tmp_path / "codes"
    assert run(capsys, "encode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--data",
               f"folder:{root}", "--val-fraction", "0.2", "--device", "cpu", "--out", out)[0] == 0
    listed = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    seen = []
    for split in ("train", "val"):
        maps = read_code_maps(out / split)
        paths = maps.paths()
        assert [listed[i] for i in maps.index] == paths  # index: position in the file list
        assert [p.split("/")[0] for p in paths] == [["a", "b"][c] for c in maps.labels]
        seen += paths
    assert sorted(seen) == listed
    # data sets without files record the dataset index
    mnist = read_code_maps(tiny_vqvae_run / "codes" / "val")
    assert mnist.paths() is None
    ds = build_dataset("mnist5k", "val", channels=1, image_size=(28, 28), val_fraction=0.1,
                       seed=0)
    assert np.array_equal(mnist.index, ds.indices)


# ---------------------------------------------------------------------- one line, no traceback


@pytest.mark.parametrize("change, needles", [
    ({"num_codes": None}, ["num_codes", "None"]),
    ({"format_version": [1]}, ["format_version"]),
    ({"num_codes": 1000000000}, ["num_codes", "1000000000"]),
    ({"num_classes": 12}, ["num_classes", "class_names"]),
])
def test_bad_meta_values(change: dict, needles: list[str], tiny_vqvae_run: Path,
                         tmp_path: Path, capsys):
    codes = tmp_path / "codes"
    shutil.copytree(tiny_vqvae_run / "codes", codes)
    for split in ("train", "val"):
        p = codes / split / "meta.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), **change}))
    rc, _, err = run(capsys, "train-prior", "--codes", codes, "--out", tmp_path / "p", *PRIOR_ARGS)
    assert_usage_error(rc, err, "train-prior", "meta.json", *needles)
    rc, _, err = run(capsys, "decode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--codes",
                     codes / "val", "--device", "cpu", "--out", tmp_path / "d")
    assert_usage_error(rc, err, "decode", "meta.json", *needles)
    assert not (tmp_path / "p").exists() and not (tmp_path / "d").exists()


def test_decode_of_an_empty_code_map(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    write_code_maps(tmp_path / "empty", np.zeros((0, 7, 7), np.int64), None, num_codes=32)
    rc, _, err = run(capsys, "decode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--codes",
                     tmp_path / "empty", "--device", "cpu", "--out", tmp_path / "d")
    assert_usage_error(rc, err, "decode", "no code maps")
    assert not (tmp_path / "d").exists()


def test_hostile_checkpoint_hyper_parameters(prior: Path, tmp_path: Path, capsys):
    ckpt = torch.load(prior, weights_only=True)
    ckpt["hyper_parameters"]["num_layers"] = 1000000
    torch.save(ckpt, tmp_path / "hostile.ckpt")
    rc, _, err = run(capsys, "sample", "--prior", tmp_path / "hostile.ckpt", "--device", "cpu",
                     "--out", tmp_path / "o")
    assert_usage_error(rc, err, "sample", "hostile.ckpt", "num_layers=1000000")


def test_unwritable_out_is_found_before_the_work(prior: Path, tmp_path: Path, capsys,
                                                 monkeypatch: pytest.MonkeyPatch):
    import vqgen.pipeline.generate as generate

    def never(*a, **k):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(generate, "sample", never)
    rc, _, err = run(capsys, "sample", "--prior", prior, "--device", "cpu",
                     "--out", prior / "under-a-file")
    assert_usage_error(rc, err, "sample", "last.ckpt", "is a file")
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder cannot be simulated
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        rc, _, err = run(capsys, "sample", "--prior", prior, "--device", "cpu", "--out", ro / "s")
        assert_usage_error(rc, err, "sample", "cannot be written")
    if Path("/sys").is_dir():  # a file system nobody may create files in
        rc, _, err = run(capsys, "sample", "--prior", prior, "--device", "cpu",
                         "--out", "/sys/vqgen-out")
        assert_usage_error(rc, err, "sample", "/sys/vqgen-out", "cannot be written")


def test_classifier_cache_is_the_users_cache_folder(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    from vqgen.pipeline.evaluation.classifier import CACHE_ENV, user_cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert user_cache_dir() == tmp_path / "xdg" / "vqgen"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert user_cache_dir() == tmp_path / "home" / ".cache" / "vqgen"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert user_cache_dir() == tmp_path / "mine"
    assert tmp_path / "data" not in user_cache_dir().parents  # never ./data of the cwd
