"""The stage-one CLI in-process: help, each verb on tiny settings, resume, and every bad
input from issue 2 (exit 2, one line on stderr, nothing written)."""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_NUM_CODES, TINY_STEPS_PER_EPOCH, tiny_train_argv
from vqgen.pipeline.cli import build_parser, main
from vqgen.stage1_vqvae.codes import read_code_maps, write_code_maps
from vqgen.stage1_vqvae.data import build_dataset
from vqgen.stage1_vqvae.lit import load_vqvae
from vqgen.stage1_vqvae.runtime.grid import to_uint8

STAGE1_VERBS = ("train-vqvae", "encode", "reconstruct", "decode")
# tiny model for CLI runs that train their own VQ-VAE
SMALL = ["--hidden", "8", "--res-hidden", "4", "--num-res", "1", "--code-dim", "4",
         "--num-codes", "8", "--accelerator", "cpu", "--device", "cpu"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_usage_error(rc: int, err: str, verb: str, *needles: str) -> str:
    """Exit code 2 and exactly one line ``vqgen VERB: error: ...`` on stderr, no traceback."""
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith(f"vqgen {verb}: error: "), lines[0]
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs.choices)


# ---------------------------------------------------------------------- help


def test_stage1_verbs_exist():
    assert set(STAGE1_VERBS) <= set(subcommands())


@pytest.mark.parametrize("verb", sorted(subcommands()))
def test_every_verb_help_shows_a_runnable_example(capsys, verb: str):
    rc, out, _ = run(capsys, verb, "--help")
    assert rc == 0
    assert "example:" in out
    example = out.split("example:", 1)[1].strip().splitlines()[0].strip()
    assert example.startswith(f"vqgen {verb} ")
    # the example parses with this very parser
    args = build_parser().parse_args(example.split()[1:])
    assert args.verb == verb


def test_top_level_help_and_no_verb(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and all(v in out for v in STAGE1_VERBS)
    rc, _, err = run(capsys)
    assert rc == 2 and "usage" in err


# ---------------------------------------------------------------------- the fixture run


def test_train_vqvae_run_layout(tiny_vqvae_run: Path):
    names = set(tree(tiny_vqvae_run))
    assert {"last.ckpt", "best.ckpt", "codes/train/codes.npy", "codes/val/labels.npy",
            "codes/val/meta.json"} <= names
    assert any(n.startswith("logs/") and n.endswith("metrics.csv") for n in names)
    assert any(n.startswith("previews/") and n.endswith(".png") for n in names)
    ckpt = torch.load(tiny_vqvae_run / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == TINY_STEPS_PER_EPOCH
    header = next((tiny_vqvae_run / "logs").rglob("metrics.csv")).read_text().splitlines()[0]
    # (train/loss is logged every 20 steps, more than this run has)
    for key in ("val/recon_loss", "val/psnr", "val/perplexity", "val/codebook_usage"):
        assert key in header, key


# ---------------------------------------------------------------------- encode, reconstruct, decode


def test_encode_writes_every_split(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "codes"
    rc, stdout, err = run(capsys, "encode", "--vqvae", tiny_vqvae_run / "last.ckpt",
                          "--device", "cpu", "--out", out)
    assert rc == 0, err
    for split, n in (("train", 4500), ("val", 500)):
        maps = read_code_maps(out / split)
        assert len(maps) == n and maps.code_shape == (7, 7) and maps.num_codes == TINY_NUM_CODES
        assert str(out / split) in stdout


def test_encode_image_folder(tiny_vqvae_run: Path, tiny_image_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "codes"
    rc, _, err = run(capsys, "encode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--data",
                     f"folder:{tiny_image_folder}", "--device", "cpu", "--out", out)
    assert rc == 0, err
    train, val = read_code_maps(out / "train"), read_code_maps(out / "val")
    assert len(train) + len(val) == 12 and len(val) >= 1
    assert train.meta["class_names"] == ["cat", "dog"] and train.num_classes == 2
    assert sorted(set(train.labels.tolist())) == [0, 1]
    # dataset order, converted the way the checkpoint was trained (1 channel, 28x28)
    lit = load_vqvae(tiny_vqvae_run / "last.ckpt")
    ds = build_dataset(f"folder:{tiny_image_folder}", "train", channels=1, image_size=(28, 28))
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    assert np.array_equal(np.asarray(train.codes), lit.model.encode(images).numpy())


@pytest.fixture(scope="module")
def folder_run(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny colour VQ-VAE trained on the image folder with a non-default --val-fraction."""
    out = tmp_path_factory.mktemp("folder_run") / "run"
    rc = main(["train-vqvae", "--data", f"folder:{tiny_image_folder}", "--channels", "3",
               "--image-size", "16x24", "--batch-size", "4", "--val-fraction", "0.25",
               "--max-epochs", "1", "--out", str(out), *SMALL])
    assert rc == 0
    return out


def test_train_vqvae_on_an_image_folder(folder_run: Path):
    train = read_code_maps(folder_run / "codes" / "train")
    val = read_code_maps(folder_run / "codes" / "val")
    assert train.code_shape == (4, 6) and train.meta["channels"] == 3
    assert train.meta["image_size"] == [16, 24]
    assert train.meta["class_names"] == ["cat", "dog"]
    assert (len(train), len(val)) == (9, 3)  # --val-fraction 0.25 of 12


def test_encode_splits_data_the_way_the_checkpoint_was_trained(folder_run: Path, tmp_path: Path,
                                                               capsys):
    """Without --val-fraction, encode uses the checkpoint's split, so its val maps are the
    held-out images of training (not a different split that overlaps the training set)."""
    out = tmp_path / "codes"
    rc, _, err = run(capsys, "encode", "--vqvae", folder_run / "last.ckpt", "--device", "cpu",
                     "--out", out)
    assert rc == 0, err
    for split in ("train", "val"):
        assert len(read_code_maps(out / split)) == len(read_code_maps(folder_run / "codes" / split))
        for name in ("codes.npy", "labels.npy", "meta.json"):
            got = (out / split / name).read_bytes()
            assert got == (folder_run / "codes" / split / name).read_bytes(), f"{split}/{name}"


def test_reconstruct_prints_psnr_and_writes_a_png(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "recon.png"
    rc, stdout, err = run(capsys, "reconstruct", "--vqvae", tiny_vqvae_run / "last.ckpt",
                          "--split", "val", "--num", "12", "--device", "cpu", "--out", out)
    assert rc == 0, err
    assert out.is_file()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 8 * 28 and img.height > 2 * 28
    # the printed PSNR is the PSNR of those 12 images
    lit = load_vqvae(tiny_vqvae_run / "last.ckpt")
    ds = build_dataset("mnist5k", "val")
    images = torch.stack([ds[i][0] for i in range(12)])
    mse = float(((lit.model.decode_codes(lit.model.encode(images)) - images) ** 2).mean())
    assert "PSNR" in stdout and f"{10 * math.log10(1 / mse):.2f} dB" in stdout
    # refuses to replace it without --overwrite
    rc, _, err = run(capsys, "reconstruct", "--vqvae", tiny_vqvae_run / "last.ckpt",
                     "--num", "4", "--device", "cpu", "--out", out)
    assert_usage_error(rc, err, "reconstruct", "--overwrite")


def test_decode_writes_pngs_and_a_grid(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "decoded"
    codes_dir = tiny_vqvae_run / "codes" / "val"
    rc, _, err = run(capsys, "decode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--codes",
                     codes_dir, "--limit", "7", "--batch-size", "3", "--device", "cpu",
                     "--out", out)
    assert rc == 0, err
    assert tree(out) == [f"{i:06d}.png" for i in range(7)] + ["decoded.json", "grid.png"]
    lit = load_vqvae(tiny_vqvae_run / "last.ckpt")
    codes = torch.from_numpy(np.asarray(read_code_maps(codes_dir).codes[:7]).astype(np.int64))
    expect = to_uint8(lit.model.decode_codes(codes))
    for i in (0, 3, 6):
        with Image.open(out / f"{i:06d}.png") as img:
            assert img.size == (28, 28)
            assert np.array_equal(np.asarray(img), expect[i, ..., 0])


def test_decode_a_bare_npy(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    np.save(tmp_path / "one.npy", np.arange(49).reshape(7, 7) % TINY_NUM_CODES)
    rc, _, err = run(capsys, "decode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--codes",
                     tmp_path / "one.npy", "--device", "cpu", "--out", tmp_path / "d")
    assert rc == 0, err
    assert tree(tmp_path / "d") == ["000000.png", "decoded.json", "grid.png"]


# ---------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def resumed(tiny_vqvae_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """(epoch-1 checkpoint, the run resumed to 2 epochs, an uninterrupted 2-epoch run)."""
    base = tmp_path_factory.mktemp("resume")
    run_dir = base / "resumed"
    shutil.copytree(tiny_vqvae_run, run_dir)
    first = torch.load(run_dir / "last.ckpt", weights_only=True)
    assert main(tiny_train_argv(run_dir, "--resume", "--no-codes", max_epochs=2)) == 0
    again = torch.load(run_dir / "last.ckpt", weights_only=True)
    assert main(tiny_train_argv(base / "straight", "--no-codes", max_epochs=2)) == 0
    straight = torch.load(base / "straight" / "last.ckpt", weights_only=True)
    return first, again, straight


def test_resume_continues_the_step_count(resumed):
    first, again, straight = resumed
    assert first["global_step"] == TINY_STEPS_PER_EPOCH and first["epoch"] == 0
    assert again["global_step"] == 2 * TINY_STEPS_PER_EPOCH and again["epoch"] == 1
    assert straight["global_step"] == again["global_step"]
    assert again["hyper_parameters"] == first["hyper_parameters"]


def test_resume_keeps_training_the_codebook(resumed):
    """The resumed epoch updates the EMA codebook statistics like any training epoch."""
    first, again, _ = resumed
    q = "model.quantizer."
    before, after = first["state_dict"], again["state_dict"]
    assert not torch.equal(before[q + "ema_count"], after[q + "ema_count"]), (
        "the quantizer's EMA statistics did not move during the resumed epoch "
        "(the model was trained in eval mode?)"
    )
    assert not torch.equal(before[q + "codebook"], after[q + "codebook"])


def test_resume_is_exact(resumed):
    """1 epoch + --resume to 2 epochs ends where an uninterrupted 2-epoch run ends, so the
    epoch-1 weights, optimizer and quantizer state were the starting point."""
    first, again, straight = resumed
    differ = [k for k, v in straight["state_dict"].items()
              if not torch.allclose(v.float(), again["state_dict"][k].float(), atol=1e-6, rtol=0)]
    assert not differ, f"resumed run differs from the uninterrupted one in {differ}"
    # and training did happen after the resume
    assert any(not torch.equal(v, again["state_dict"][k]) for k, v in first["state_dict"].items())


def test_resume_with_nothing_to_resume(tmp_path: Path, capsys):
    out = tmp_path / "fresh"
    rc, _, err = run(capsys, *tiny_train_argv(out, "--resume"))
    assert_usage_error(rc, err, "train-vqvae", "nothing to resume")
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("x")
    rc, _, err = run(capsys, *tiny_train_argv(out, "--resume"))
    assert_usage_error(rc, err, "train-vqvae", "nothing to resume")
    assert tree(out) == ["notes.txt"]


def test_train_into_an_existing_run_is_refused(tiny_vqvae_run: Path, capsys):
    before = tree(tiny_vqvae_run)
    mtime = (tiny_vqvae_run / "last.ckpt").stat().st_mtime_ns
    rc, _, err = run(capsys, *tiny_train_argv(tiny_vqvae_run))
    assert_usage_error(rc, err, "train-vqvae", "--resume", "--overwrite")
    assert tree(tiny_vqvae_run) == before
    assert (tiny_vqvae_run / "last.ckpt").stat().st_mtime_ns == mtime


def test_train_into_a_folder_of_other_files_is_refused(tmp_path: Path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    rc, _, err = run(capsys, *tiny_train_argv(tmp_path / "run"))
    assert_usage_error(rc, err, "train-vqvae", "--overwrite")
    assert tree(tmp_path / "run") == ["keep.txt"]
    rc, _, err = run(capsys, *tiny_train_argv(tmp_path / "run" / "keep.txt"))
    assert_usage_error(rc, err, "train-vqvae", "is a file")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------- bad input: data


@pytest.fixture()
def corrupt_folder(tiny_image_folder: Path, tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    shutil.copytree(tiny_image_folder, root)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return root


def _data_argvs(verb: str, data: str, out: Path, ckpt: Path) -> list[str]:
    if verb == "train-vqvae":
        return ["train-vqvae", "--data", data, "--out", str(out), "--max-epochs", "1",
                "--batch-size", "4", "--image-size", "16", *SMALL]
    if verb == "encode":
        return ["encode", "--vqvae", str(ckpt), "--data", data, "--device", "cpu",
                "--out", str(out)]
    return ["reconstruct", "--vqvae", str(ckpt), "--data", data, "--device", "cpu",
            "--out", str(out / "r.png")]


@pytest.mark.parametrize("verb", ["train-vqvae", "encode", "reconstruct"])
def test_missing_data_path(verb, tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, *_data_argvs(verb, "folder:/nonexistent/images", out,
                                          tiny_vqvae_run / "last.ckpt"))
    assert_usage_error(rc, err, verb, "/nonexistent/images", "does not exist")
    assert not out.exists()


@pytest.mark.parametrize("verb", ["train-vqvae", "encode"])
def test_empty_folder_spec(verb, tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, *_data_argvs(verb, "folder:", out, tiny_vqvae_run / "last.ckpt"))
    assert_usage_error(rc, err, verb, "folder:PATH")
    assert not out.exists()


@pytest.mark.parametrize("verb", ["train-vqvae", "encode"])
@pytest.mark.parametrize("content", ["empty", "no-images"])
def test_folder_without_readable_images(verb, content, tiny_vqvae_run, tmp_path: Path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    if content == "no-images":
        (data / "readme.txt").write_text("no pictures here")
        (data / "notes.csv").write_text("a,b\n")
    out = tmp_path / "out"
    ckpt = tiny_vqvae_run / "last.ckpt"
    rc, _, err = run(capsys, *_data_argvs(verb, f"folder:{data}", out, ckpt))
    assert_usage_error(rc, err, verb, "no image files", str(data))
    assert not out.exists()


@pytest.mark.parametrize("verb", ["encode", "train-vqvae"])
def test_corrupt_image_is_named_and_nothing_is_written(verb, corrupt_folder, tiny_vqvae_run,
                                                       tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, *_data_argvs(verb, f"folder:{corrupt_folder}", out,
                                          tiny_vqvae_run / "last.ckpt"))
    assert_usage_error(rc, err, verb, "broken.png")
    assert tree(out) == [], f"a failed {verb} left {tree(out)} in --out"


def test_corrupt_image_in_reconstruct(corrupt_folder, tiny_vqvae_run, tmp_path: Path, capsys):
    out = tmp_path / "r.png"
    for split in ("train", "val"):  # the broken file sits in one of the two splits
        rc, _, err = run(capsys, "reconstruct", "--vqvae", tiny_vqvae_run / "last.ckpt", "--data",
                         f"folder:{corrupt_folder}", "--split", split, "--device", "cpu",
                         "--out", out)
        if rc == 2:
            assert_usage_error(rc, err, "reconstruct", "broken.png")
            assert not out.exists()
            break
        out.unlink()
    else:
        pytest.fail("the corrupt image was never reported")


@pytest.mark.parametrize("verb", ["train-vqvae", "encode", "reconstruct"])
def test_unknown_data(verb, tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, *_data_argvs(verb, "imagenet-21k", out, tiny_vqvae_run / "last.ckpt"))
    assert_usage_error(rc, err, verb, "imagenet-21k", "mnist5k")
    assert not out.exists()


@pytest.mark.parametrize("size, downsample", [("30", None), ("28x30", None), ("28", "8")])
def test_image_size_not_divisible(size, downsample, tmp_path: Path, capsys):
    extra = ["--downsample", downsample] if downsample else []
    out = tmp_path / "out"
    rc, _, err = run(capsys, *tiny_train_argv(out, "--image-size", size, *extra))
    factor = downsample or "4"
    assert_usage_error(rc, err, "train-vqvae", f"down-sampling factor {factor}")
    assert not out.exists()


@pytest.mark.parametrize("downsample", ["0", "3", "-4"])
def test_bad_downsample(downsample, tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, *tiny_train_argv(out, "--downsample", downsample))
    assert rc == 2, err
    assert "Traceback" not in err and "downsample" in err.replace(str(tmp_path), "<tmp>")
    assert not out.exists()


# ---------------------------------------------------------------------- bad input: checkpoints


def _bad_checkpoint(kind: str, good: Path, tmp_path: Path) -> tuple[Path, str]:
    """(path, a phrase the error must contain)."""
    path = tmp_path / "bad.ckpt"  # neutral: the message, not the path, must say what is wrong
    if kind == "prior":
        ckpt = torch.load(good, weights_only=True)
        ckpt["vqgen"]["kind"] = "prior"
        torch.save(ckpt, path)
        return path, "is a prior checkpoint"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "is truncated"
    if kind == "pickle":
        import pickle

        path.write_bytes(pickle.dumps({"state_dict": {"w": [1, 2, 3]}, "junk": object()}))
        return path, str(path)
    if kind == "text":
        path.write_text("this is a text file\n")
        return path, str(path)
    if kind == "missing":
        return tmp_path / "missing.ckpt", "does not exist"
    raise AssertionError(kind)


BAD_CKPTS = ["prior", "truncated", "pickle", "text", "missing"]


@pytest.mark.parametrize("kind", BAD_CKPTS)
@pytest.mark.parametrize("verb", ["encode", "reconstruct", "decode"])
def test_not_a_vqvae_checkpoint(verb, kind, tiny_vqvae_run: Path, tmp_path: Path, capsys):
    path, phrase = _bad_checkpoint(kind, tiny_vqvae_run / "last.ckpt", tmp_path)
    out = tmp_path / ("out.png" if verb == "reconstruct" else "out")
    argv = [verb, "--vqvae", path, "--device", "cpu", "--out", out]
    if verb == "decode":
        argv += ["--codes", tiny_vqvae_run / "codes" / "val"]
    rc, _, err = run(capsys, *argv)
    assert_usage_error(rc, err, verb, phrase)
    assert not out.exists()


# ---------------------------------------------------------------------- bad input: codes, --out


@pytest.mark.parametrize("case", ["too-large", "negative", "grid", "float", "meta-num-codes",
                                  "folder-without-meta", "missing"])
def test_decode_refuses_codes_that_do_not_fit(case, tiny_vqvae_run: Path, tmp_path: Path, capsys):
    if case == "too-large":
        codes = tmp_path / "c.npy"
        np.save(codes, np.full((3, 7, 7), TINY_NUM_CODES, np.int64))
        needles = ["c.npy", f"num_codes={TINY_NUM_CODES}"]
    elif case == "negative":
        codes = tmp_path / "c.npy"
        np.save(codes, np.full((3, 7, 7), -1, np.int64))
        needles = ["c.npy", "outside"]
    elif case == "grid":
        codes = tmp_path / "c.npy"
        np.save(codes, np.zeros((3, 8, 8), np.int64))
        needles = ["c.npy", "8x8", "7x7"]
    elif case == "float":
        codes = tmp_path / "c.npy"
        np.save(codes, np.zeros((3, 7, 7), np.float32))
        needles = ["c.npy", "integer"]
    elif case == "meta-num-codes":  # values fit, but the maps were made with another codebook
        codes = write_code_maps(tmp_path / "m", np.zeros((2, 7, 7), int), None, num_codes=64)
        needles = ["num_codes=64", str(TINY_NUM_CODES)]
    elif case == "folder-without-meta":
        codes = tmp_path / "m"
        codes.mkdir()
        needles = ["run `vqgen encode` first"]
    else:
        codes = tmp_path / "nope.npy"
        needles = ["nope.npy"]
    out = tmp_path / "out"
    rc, _, err = run(capsys, "decode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--codes", codes,
                     "--device", "cpu", "--out", out)
    assert_usage_error(rc, err, "decode", *needles)
    assert not out.exists()


def test_decode_refuses_a_nonempty_out(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    argv = ["decode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--codes",
            tiny_vqvae_run / "codes" / "val", "--limit", "2", "--device", "cpu", "--out", out]
    rc, _, err = run(capsys, *argv)
    assert_usage_error(rc, err, "decode", "--overwrite")
    assert tree(out) == ["mine.txt"]
    # --overwrite writes decode's files beside it and keeps mine.txt byte-identical
    rc, _, err = run(capsys, *argv, "--overwrite")
    assert rc == 0, err
    assert tree(out) == ["000000.png", "000001.png", "decoded.json", "grid.png", "mine.txt"]
    assert (out / "mine.txt").read_text() == "keep"


def test_encode_out_that_is_not_a_code_map_folder(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    argv = ["encode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--splits", "val", "--device",
            "cpu", "--out", out]
    rc, _, err = run(capsys, *argv)
    assert_usage_error(rc, err, "encode", "thesis.tex", "did not write", "--overwrite")
    assert tree(out) == ["thesis.tex"]
    # a plain file as --out
    rc, _, err = run(capsys, "encode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--device", "cpu",
                     "--out", out / "thesis.tex")
    assert_usage_error(rc, err, "encode", "thesis.tex")
    assert (out / "thesis.tex").read_text() == "precious"
    # --overwrite lets it through and keeps the foreign file
    rc, _, err = run(capsys, *argv, "--overwrite")
    assert rc == 0, err
    assert read_code_maps(out / "val").num_codes == TINY_NUM_CODES
    assert (out / "thesis.tex").read_text() == "precious"


def test_encode_bad_splits(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, "encode", "--vqvae", tiny_vqvae_run / "last.ckpt", "--splits",
                     "train,test", "--out", out)
    assert_usage_error(rc, err, "encode", "--splits")
    assert not out.exists()


def test_last_ckpt_is_refreshed_when_validation_does_not_improve(tmp_path: Path) -> None:
    """lr 0, a frozen EMA codebook and no restarts: epoch 2's validation equals epoch 1's, so
    "best" is not refreshed; last.ckpt must still hold the final step (Lightning's own
    save_last would leave it at epoch 1)."""
    out = tmp_path / "run"
    argv = tiny_train_argv(out, "--lr", "0", "--decay", "1.0", "--dead-after", "0", "--no-codes",
                           max_epochs=2)
    assert main(argv) == 0
    last = torch.load(out / "last.ckpt", weights_only=True)
    best = torch.load(out / "best.ckpt", weights_only=True)
    assert last["global_step"] == 2 * TINY_STEPS_PER_EPOCH
    assert best["global_step"] == TINY_STEPS_PER_EPOCH


def test_overwrite_removes_only_what_the_run_wrote(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    """--overwrite deletes the previous run's files by its manifest, not by folder name: the
    user's notes inside logs/, previews/ and codes/ survive; one inside a code-map folder,
    which a run replaces whole, is refused before anything is deleted."""
    import json

    out = tmp_path / "run"
    shutil.copytree(tiny_vqvae_run, out)
    owned = json.loads((out / ".vqgen-run.json").read_text())["files"]
    assert "last.ckpt" in owned and "codes/train/codes.npy" in owned
    assert any(f.startswith("logs/") and f.endswith("metrics.csv") for f in owned)
    mine = {"logs/mine.txt": "a", "previews/notes.md": "b", "codes/README": "c"}
    for rel, text in mine.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    (out / "codes" / "val" / "label-notes.txt").write_text("d")
    old_ckpt = (out / "last.ckpt").read_bytes()
    rc, _, err = run(capsys, *tiny_train_argv(out, "--overwrite"))
    assert_usage_error(rc, err, "train-vqvae", "codes/val/label-notes.txt", "replaces whole")
    assert (out / "last.ckpt").read_bytes() == old_ckpt  # refused before anything went
    (out / "codes" / "val" / "label-notes.txt").unlink()
    rc, _, err = run(capsys, *tiny_train_argv(out, "--overwrite", "--seed", "1"))
    assert rc == 0, err
    for rel, text in mine.items():
        assert (out / rel).read_text() == text, rel
    assert (out / "last.ckpt").read_bytes() != old_ckpt
    now = json.loads((out / ".vqgen-run.json").read_text())
    assert not set(mine) & set(now["files"]) and set(mine) <= set(now["user"])
    assert "codes/train/meta.json" in now["files"]
