"""The stage-two CLI in-process: train-prior, sample and demo on tiny settings, the whole
chain train-vqvae -> encode -> train-prior -> sample, and every bad input of issue 3
(exit 2, one line on stderr, nothing written)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_NUM_CODES
from tests.test_cli_stage1 import assert_usage_error, run, tree
from tests.test_prior import train_prior_argv
from vqgen.pipeline.cli import main
from vqgen.stage1_vqvae.codes import read_code_maps, write_code_maps
from vqgen.stage1_vqvae.lit import LitVQVAE, load_vqvae
from vqgen.stage1_vqvae.runtime.checkpoint import checkpoint_stamp
from vqgen.stage1_vqvae.runtime.grid import to_uint8
from vqgen.stage2_prior.lit import load_prior

NUM_CLASSES = 10


def sample_argv(prior: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", "--prior", str(prior), "--device", "cpu", "--out", str(out), *extra]


def save_vqvae_checkpoint(path: Path, **hparams) -> Path:
    """An untrained tiny VQ-VAE saved the way vqgen saves one (no training needed)."""
    lit = LitVQVAE(hidden=8, res_hidden=4, num_res=1, code_dim=4, **hparams)
    torch.save({"state_dict": lit.state_dict(), "hyper_parameters": dict(lit.hparams),
                "vqgen": checkpoint_stamp("vqvae")}, path)
    return path


def rewrite_meta(folder: Path, **changes) -> None:
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def prior_run(tiny_vqvae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train-vqvae (shared fixture, which also encodes) -> train-prior. Read-only."""
    out = tmp_path_factory.mktemp("prior") / "run"
    assert main(train_prior_argv(tiny_vqvae_run / "codes", out)) == 0
    return out


@pytest.fixture(scope="module")
def prior_ckpt(prior_run: Path) -> Path:
    return prior_run / "last.ckpt"




@pytest.fixture(scope="module")
def other_vqvaes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """VQ-VAEs that do not fit the shared prior: K=16, and K=32 with 8x8 codes."""
    root = tmp_path_factory.mktemp("other_vqvaes")
    return {
        "k16": save_vqvae_checkpoint(root / "k16.ckpt", num_codes=16),
        "8x8": save_vqvae_checkpoint(root / "g8.ckpt", num_codes=TINY_NUM_CODES,
                                     image_size=(32, 32)),
    }


def read_samples(out: Path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    codes = np.load(out / "codes.npy")
    labels = np.load(out / "labels.npy") if (out / "labels.npy").exists() else None
    return codes, labels, json.loads((out / "samples.json").read_text())


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# ---------------------------------------------------------------------- train-prior


def test_train_prior_run_layout(prior_run: Path):
    for name in ("last.ckpt", "best.ckpt"):
        assert (prior_run / name).is_file(), name
    assert list((prior_run / "logs").rglob("metrics.csv"))


def test_train_prior_resume_continues_and_keeps_its_config(prior_run: Path, tmp_path: Path):
    run_dir = tmp_path / "prior"
    shutil.copytree(prior_run, run_dir)
    first = torch.load(run_dir / "last.ckpt", weights_only=True)
    # --hidden is ignored on resume: the checkpoint is the config
    assert main(["train-prior", "--codes", "ignored", "--out", str(run_dir), "--resume",
                 "--hidden", "32", "--max-epochs", "2", "--limit-train-batches", "3",
                 "--accelerator", "cpu"]) == 0
    again = torch.load(run_dir / "last.ckpt", weights_only=True)
    assert again["global_step"] == 2 * first["global_step"] > 0
    assert again["hyper_parameters"] == first["hyper_parameters"]


def test_train_prior_resume_trains_in_train_mode(prior_run: Path, tmp_path: Path, monkeypatch):
    """A resumed run trains the module in train mode, like a fresh run (Lightning keeps the
    mode the module arrives in, and load_prior returns it in eval mode)."""
    from vqgen.stage2_prior.lit import LitPrior

    modes = []
    step = LitPrior.training_step

    def spy(self, batch, batch_idx):
        modes.append(self.training and self.model.training)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(LitPrior, "training_step", spy)
    run_dir = tmp_path / "prior"
    shutil.copytree(prior_run, run_dir)
    assert main(["train-prior", "--codes", "ignored", "--out", str(run_dir), "--resume",
                 "--max-epochs", "2", "--limit-train-batches", "1", "--accelerator", "cpu"]) == 0
    assert modes and all(modes), f"training steps ran in eval mode: {modes}"


# ---------------------------------------------------------------------- sample


def test_sample_writes_grid_pngs_codes_and_settings(prior_ckpt: Path, tiny_vqvae_run: Path,
                                                    tmp_path: Path, capsys):
    out = tmp_path / "s"
    rc, stdout, err = run(capsys, *sample_argv(prior_ckpt, out, "--num", "5", "--seed", "3"))
    assert rc == 0, err
    assert "grid.png" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["grid.png", "codes.npy", "samples.json"] + [f"{i:06d}.png" for i in range(5)])
    codes, labels, settings = read_samples(out)
    assert codes.shape == (5, 7, 7) and codes.dtype == np.uint16
    assert codes.max() < TINY_NUM_CODES
    assert labels is None  # no class asked for: unconditional samples
    assert settings["count"] == 5 and settings["seed"] == 3
    # each PNG is the VQ-VAE's decoding of the matching code grid
    vqvae = load_vqvae(tiny_vqvae_run / "last.ckpt")
    with torch.no_grad():
        decoded = to_uint8(vqvae.model.decode_codes(torch.from_numpy(codes.astype(np.int64))))
    for i in range(5):
        png = np.asarray(Image.open(out / f"{i:06d}.png"))
        assert png.shape == (28, 28)
        np.testing.assert_array_equal(png, decoded[i, ..., 0])
    width, height = Image.open(out / "grid.png").size
    assert width >= 5 * 28 and 28 <= height < 2 * 28 * 5  # one row of five


def test_per_class_gives_one_labelled_row_per_class(prior_ckpt: Path, tmp_path: Path, capsys):
    out = tmp_path / "s"
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, out, "--per-class", "2"))
    assert rc == 0, err
    codes, labels, settings = read_samples(out)
    assert codes.shape == (2 * NUM_CLASSES, 7, 7)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(NUM_CLASSES), 2))
    assert labels.dtype == np.int64
    assert len(list(out.glob("0*.png"))) == 2 * NUM_CLASSES
    assert settings["per_class"] == 2 and settings["count"] == 20
    # the same layout without classes (unconditional, 2 a row) has no room for row labels
    plain = tmp_path / "plain"
    assert run(capsys, *sample_argv(prior_ckpt, plain, "--num", "20", "--nrow", "2"))[0] == 0
    width, height = Image.open(out / "grid.png").size
    plain_width, plain_height = Image.open(plain / "grid.png").size
    assert height == plain_height > width  # ten rows of two
    assert width > plain_width  # class names on the left of each row


def test_class_by_index_and_by_name(prior_ckpt: Path, tmp_path: Path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(capsys, *sample_argv(prior_ckpt, a, "--class", "3", "--num", "4"))[0] == 0
    _, labels, settings = read_samples(a)
    np.testing.assert_array_equal(labels, np.full(4, 3))
    assert settings["class_index"] == 3
    assert run(capsys, *sample_argv(prior_ckpt, b, "--class", "3", "--num", "4"))[0] == 0
    assert files(a) == files(b)


def test_same_seed_same_bytes_other_seed_other_codes(prior_ckpt: Path, tmp_path: Path, capsys):
    outs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        outs[name] = tmp_path / name
        argv = sample_argv(prior_ckpt, outs[name], "--num", "6", "--seed", seed, "--batch-size", "4")
        assert run(capsys, *argv)[0] == 0
    a, b = files(outs["a"]), files(outs["b"])
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs with the same seed"
    assert not np.array_equal(read_samples(outs["a"])[0], read_samples(outs["c"])[0])


@pytest.mark.parametrize("knobs", [
    (),
    ("--class", "3", "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9", "--guidance", "2"),
])
def test_naive_and_cached_samplers_agree(prior_ckpt: Path, tmp_path: Path, capsys, knobs):
    for sampler in ("cached", "naive"):
        argv = sample_argv(prior_ckpt, tmp_path / sampler, "--num", "5", "--seed", "2",
                           "--sampler", sampler, *knobs)
        assert run(capsys, *argv)[0] == 0
    cached = (tmp_path / "cached" / "codes.npy").read_bytes()
    assert cached == (tmp_path / "naive" / "codes.npy").read_bytes()
    assert (tmp_path / "cached" / "grid.png").read_bytes() == \
        (tmp_path / "naive" / "grid.png").read_bytes()


def test_vqvae_comes_from_the_prior_and_vqvae_overrides(prior_ckpt: Path, tiny_vqvae_run: Path,
                                                        tmp_path: Path, capsys):
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, tmp_path / "found", "--num", "3"))
    assert rc == 0 and "note:" not in err
    found = read_samples(tmp_path / "found")
    assert Path(found[2]["vqvae"]).resolve() == (tiny_vqvae_run / "last.ckpt").resolve()
    # the same VQ-VAE with a changed decoder: same codes, other pictures
    ckpt = torch.load(tiny_vqvae_run / "last.ckpt", weights_only=True)
    ckpt["state_dict"] = {k: (v + 0.5 if k.startswith("model.decoder") and v.is_floating_point()
                              else v) for k, v in ckpt["state_dict"].items()}
    other = tmp_path / "changed.ckpt"
    torch.save(ckpt, other)
    # not the VQ-VAE the codes came from: refused, unless the user says they mean it
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, tmp_path / "over", "--num", "3",
                                          "--vqvae", other))
    assert_usage_error(rc, err, "sample", "sha256", "--allow-other-vqvae")
    assert not (tmp_path / "over").exists()
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, tmp_path / "over", "--num", "3",
                                          "--vqvae", other, "--allow-other-vqvae"))
    assert rc == 0
    assert "--allow-other-vqvae" in err  # the note that this is not the codes' VQ-VAE
    over = read_samples(tmp_path / "over")
    assert over[2]["vqvae"] == str(other)
    np.testing.assert_array_equal(over[0], found[0])
    assert (tmp_path / "over" / "grid.png").read_bytes() != \
        (tmp_path / "found" / "grid.png").read_bytes()


def test_unconditional_prior_samples(tiny_uncond_prior: Path, tmp_path: Path, capsys):
    out = tmp_path / "s"
    rc, _, err = run(capsys, *sample_argv(tiny_uncond_prior, out, "--num", "3"))
    assert rc == 0, err
    codes, labels, _ = read_samples(out)
    assert codes.shape == (3, 7, 7) and labels is None


# ---------------------------------------------------------------------- bad input: train-prior


def _bad_code_folder(case: str, run_dir: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "codes"
    if case == "missing":
        return root, ["does not exist"]
    if case == "empty":
        root.mkdir()
        return root, ["train"]
    if case == "split-without-meta":
        shutil.copytree(run_dir / "codes", root)
        (root / "train" / "meta.json").unlink()
        return root, ["meta.json"]
    if case == "single-split":
        return run_dir / "codes" / "train", ["single split"]
    if case == "only-train":
        shutil.copytree(run_dir / "codes" / "train", root / "train")
        return root, ["val"]
    # train/ and val/ each whole and valid, but made differently
    key = case.removeprefix("disagree-")
    shutil.copytree(run_dir / "codes" / "train", root / "train")
    val = read_code_maps(run_dir / "codes" / "val", mmap=False)
    meta = {k: v for k, v in val.meta.items()
            if k not in ("format_version", "num_codes", "code_shape", "count")}
    num_codes, labels = val.num_codes, val.labels
    if key == "num_codes":
        num_codes = 64
    elif key == "vqvae_sha256":
        meta["vqvae_sha256"] = "0" * 64
    elif key == "class_names":
        meta["class_names"] = [f"digit {i}" for i in range(NUM_CLASSES)]
    write_code_maps(root / "val", val.codes, labels, num_codes=num_codes, meta=meta)
    read_code_maps(root / "val")  # self-consistent: only the disagreement is wrong
    return root, ["disagree", key]


@pytest.mark.parametrize("case", ["missing", "empty", "split-without-meta", "single-split",
                                  "only-train", "disagree-num_codes", "disagree-vqvae_sha256",
                                  "disagree-class_names"])
def test_train_prior_refuses_bad_code_folders(case, tiny_vqvae_run: Path, tmp_path: Path, capsys):
    codes, needles = _bad_code_folder(case, tiny_vqvae_run, tmp_path)
    out = tmp_path / "prior"
    rc, _, err = run(capsys, *train_prior_argv(codes, out))
    assert_usage_error(rc, err, "train-prior", *needles)
    assert not out.exists()


def test_train_prior_resume_with_nothing_to_resume(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "prior"
    rc, _, err = run(capsys, *train_prior_argv(tiny_vqvae_run / "codes", out, "--resume"))
    assert_usage_error(rc, err, "train-prior", "nothing to resume")
    assert not out.exists()


def test_train_prior_into_an_existing_run_is_refused(prior_run: Path, tiny_vqvae_run: Path,
                                                     capsys):
    before = tree(prior_run)
    mtime = (prior_run / "last.ckpt").stat().st_mtime_ns
    rc, _, err = run(capsys, *train_prior_argv(tiny_vqvae_run / "codes", prior_run))
    assert_usage_error(rc, err, "train-prior", "--resume", "--overwrite")
    assert tree(prior_run) == before
    assert (prior_run / "last.ckpt").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1"])
def test_train_prior_bad_cond_drop(value, tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "prior"
    rc, _, err = run(capsys, *train_prior_argv(tiny_vqvae_run / "codes", out, "--cond-drop", value))
    assert_usage_error(rc, err, "train-prior", "--cond-drop")
    assert not out.exists()


# ---------------------------------------------------------------------- bad input: checkpoints


def test_prior_given_as_vqvae(prior_ckpt: Path, tmp_path: Path, capsys):
    out = tmp_path / "s"
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, out, "--vqvae", prior_ckpt))
    assert_usage_error(rc, err, "sample", "is a prior checkpoint", "--prior")
    assert not out.exists()


def test_vqvae_given_as_prior(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "s"
    rc, _, err = run(capsys, *sample_argv(tiny_vqvae_run / "last.ckpt", out))
    assert_usage_error(rc, err, "sample", "is a vqvae checkpoint", "--vqvae")
    assert not out.exists()


@pytest.mark.parametrize("which,needles", [
    ("k16", [f"num_codes={TINY_NUM_CODES}", "num_codes=16"]),
    ("8x8", ["7x7", "8x8"]),
])
def test_mismatched_pair(which, needles, prior_ckpt: Path, other_vqvaes, tmp_path: Path, capsys):
    out = tmp_path / "s"
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, out, "--vqvae", other_vqvaes[which]))
    assert_usage_error(rc, err, "sample", *needles)
    assert not out.exists()


def test_recorded_vqvae_is_gone(prior_ckpt: Path, tmp_path: Path, capsys):
    ckpt = torch.load(prior_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["vqvae_checkpoint"] = str(tmp_path / "moved" / "last.ckpt")
    moved = tmp_path / "prior.ckpt"
    torch.save(ckpt, moved)
    out = tmp_path / "s"
    rc, _, err = run(capsys, *sample_argv(moved, out))
    assert_usage_error(rc, err, "sample", "moved", "--vqvae")
    assert not out.exists()


# ---------------------------------------------------------------------- bad input: options

K = str(TINY_NUM_CODES)
BAD_OPTIONS = {
    "class-too-big": (["--class", "10"], ["10", "0..9"]),
    "class-negative": (["--class", "-1"], ["-1"]),
    "class-unknown-name": (["--class", "seven"], ["seven"]),
    "class-and-per-class": (["--class", "1", "--per-class", "2"], ["--per-class"]),
    "temperature-0": (["--temperature", "0"], ["temperature"]),
    "temperature-negative": (["--temperature", "-1"], ["temperature"]),
    "top-k-0": (["--top-k", "0"], ["top_k"]),
    "top-k-above-K": (["--top-k", str(TINY_NUM_CODES + 1)], [str(TINY_NUM_CODES + 1), K]),
    "top-p-0": (["--top-p", "0"], ["top_p"]),
    "top-p-above-1": (["--top-p", "1.5"], ["top_p", "1.5"]),
    "num-0": (["--num", "0"], ["--num"]),
    "num-negative": (["--num", "-3"], ["--num", "-3"]),
    "per-class-0": (["--per-class", "0"], ["--per-class"]),
    "guidance-negative": (["--class", "1", "--guidance", "-1"], ["guidance"]),
    "guidance-without-class": (["--guidance", "2"], ["guidance"]),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_sampling_options(case, prior_ckpt: Path, tmp_path: Path, capsys):
    extra, needles = BAD_OPTIONS[case]
    out = tmp_path / "s"
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, out, *extra))
    assert_usage_error(rc, err, "sample", *needles)
    assert not out.exists()


@pytest.mark.parametrize("extra", [["--class", "3"], ["--per-class", "2"]])
def test_class_for_an_unconditional_prior(extra, tiny_uncond_prior: Path, tmp_path: Path, capsys):
    out = tmp_path / "s"
    rc, _, err = run(capsys, *sample_argv(tiny_uncond_prior, out, *extra))
    assert_usage_error(rc, err, "sample", "unconditional")
    assert not out.exists()


def test_out_with_samples_needs_overwrite(prior_ckpt: Path, tmp_path: Path, capsys):
    out = tmp_path / "s"
    assert run(capsys, *sample_argv(prior_ckpt, out, "--num", "4"))[0] == 0
    before = files(out)
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, out, "--num", "3", "--seed", "5"))
    assert_usage_error(rc, err, "sample", "--overwrite")
    assert files(out) == before
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, out, "--num", "3", "--seed", "5",
                                          "--overwrite"))
    assert rc == 0, err
    codes, _, settings = read_samples(out)
    assert codes.shape == (3, 7, 7) and settings["seed"] == 5
    assert not (out / "000003.png").exists()  # replaced whole, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp folders left


def test_out_that_is_a_file(prior_ckpt: Path, tmp_path: Path, capsys):
    out = tmp_path / "s"
    out.write_text("mine")
    rc, _, err = run(capsys, *sample_argv(prior_ckpt, out))
    assert_usage_error(rc, err, "sample", "is a file")
    assert out.read_text() == "mine"


# ---------------------------------------------------------------------- demo

TINY_PRESET = dict(hidden=16, res_hidden=8, num_res=1, code_dim=8, num_codes=32, batch_size=64)
TINY_PRIOR = dict(hidden=8, num_layers=2, head_hidden=16)


def run_demo_cli(out: Path, *extra: str) -> tuple[int, str]:
    """``vqgen demo`` with tiny models (1 epoch per stage, 1 sample per class) -> (rc, stdout)."""
    from vqgen.stage1_vqvae import lit as stage1_lit
    from vqgen.stage2_prior import train as stage2_train

    argv = ["demo", "--out", str(out), "--vqvae-epochs", "1", "--prior-epochs", "1",
            "--per-class", "1", "--accelerator", "cpu", "--device", "cpu", *extra]
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        mp.setitem(stage1_lit.PRESETS, "mnist", {**stage1_lit.PRESETS["mnist"], **TINY_PRESET})
        for key, value in TINY_PRIOR.items():
            mp.setitem(stage2_train.PRIOR_DEFAULTS, key, value)
        rc = main(argv)
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One finished tiny demo. Read-only: tests that re-run it copy it first."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    rc, stdout = run_demo_cli(out)
    assert rc == 0, stdout
    return out, stdout


def mtimes(out: Path) -> dict[str, int]:
    return {name: (out / name).stat().st_mtime_ns
            for name in ("vqvae/last.ckpt", "vqvae/codes/train/meta.json", "prior/last.ckpt")}


def test_demo_writes_every_stage(demo_run):
    out, stdout = demo_run
    for name in ("vqvae/last.ckpt", "vqvae/done.json", "vqvae/codes/train/meta.json",
                 "vqvae/codes/val/meta.json", "prior/last.ckpt", "prior/done.json",
                 "samples/grid.png", "samples/codes.npy"):
        assert (out / name).is_file(), name
    assert str(out / "samples" / "grid.png") in stdout
    np.testing.assert_array_equal(np.load(out / "samples" / "labels.npy"), np.arange(NUM_CLASSES))
    assert load_vqvae(out / "vqvae" / "last.ckpt").hparams.hidden == TINY_PRESET["hidden"]
    hp = load_prior(out / "prior" / "last.ckpt").hparams
    assert hp.hidden == TINY_PRIOR["hidden"] and hp.num_classes == NUM_CLASSES
    assert Path(hp.vqvae_checkpoint) == (out / "vqvae" / "last.ckpt").resolve()
    for stage in ("vqvae", "prior"):
        assert isinstance(json.loads((out / stage / "done.json").read_text()), dict)


def test_demo_rerun_reuses_finished_stages(demo_run):
    out, _ = demo_run
    before = mtimes(out)
    grid = (out / "samples" / "grid.png").read_bytes()
    rc, stdout = run_demo_cli(out)
    assert rc == 0, stdout
    assert stdout.count("reusing") == 2, stdout
    assert mtimes(out) == before
    assert (out / "samples" / "grid.png").read_bytes() == grid  # same seed, same picture


def test_demo_resumes_an_unfinished_prior(demo_run, tmp_path: Path):
    src, _ = demo_run
    out = tmp_path / "demo"
    shutil.copytree(src, out)
    (out / "prior" / "done.json").unlink()  # stopped after its first of two epochs
    before = mtimes(out)
    first = torch.load(out / "prior" / "last.ckpt", weights_only=True)
    rc, stdout = run_demo_cli(out, "--prior-epochs", "2")
    assert rc == 0, stdout
    assert "stage one: reusing" in stdout and "resuming the prior" in stdout
    assert {k: v for k, v in mtimes(out).items() if k.startswith("vqvae")} == \
        {k: v for k, v in before.items() if k.startswith("vqvae")}
    again = torch.load(out / "prior" / "last.ckpt", weights_only=True)
    assert again["global_step"] == 2 * first["global_step"] > 0
    assert (out / "prior" / "done.json").is_file()


@pytest.mark.parametrize("stage", ["prior", "vqvae"])
def test_demo_finishes_a_stage_stopped_before_its_marker(stage, demo_run, tmp_path: Path):
    """Ctrl-C after a stage's last checkpoint but before its done.json (for stage one: while
    it writes the code maps): the re-run has nothing left to train and must still finish."""
    src, _ = demo_run
    out = tmp_path / "demo"
    shutil.copytree(src, out)
    (out / stage / "done.json").unlink()
    rc, stdout = run_demo_cli(out)
    assert rc == 0, stdout
    assert (out / stage / "done.json").is_file()
    assert (out / "samples" / "grid.png").is_file()


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, as written (the shipped mnist pair, no training), does what
    its comments say."""
    from tests.test_readme import README_TEXT, code_blocks

    (body,) = [b for lang, b in code_blocks(README_TEXT) if lang == "python"]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(body, "README.md", "exec"), scope)
    out = scope["out"]
    assert out.codes.shape == (16, 7, 7) and out.images.shape == (16, 1, 28, 28)
    assert out.labels.tolist() == [7] * 16
    assert len(list((tmp_path / "my_sevens").glob("*.png"))) == 16
    assert scope["codes"].shape == (16, 7, 7) and len(scope["back"]) == 16
    from vqgen.pipeline.codec.vqz import MAGIC

    assert scope["data"][:4] == MAGIC


def test_demo_keeps_the_users_files_and_refuses_a_folder_not_its_own(demo_run, tmp_path: Path):
    """demo has no --overwrite: in its own folder a re-run keeps every file the user added
    (inside its run and sample folders too); a folder that is not a demo's is refused whole."""
    src, _ = demo_run
    out = tmp_path / "demo"
    shutil.copytree(src, out)
    assert (out / "demo.json").is_file()
    (out / "prior" / "done.json").unlink()  # so the prior trains again (a fresh run here)
    (out / "prior" / "last.ckpt").unlink()
    mine = {"vqvae/logs/mine.txt": "a", "vqvae/previews/mine.png": "b",
            "vqvae/codes/mine.txt": "c", "prior/logs/mine.txt": "d", "samples/mine.txt": "e",
            "notes.md": "f"}
    for rel, text in mine.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    rc, stdout = run_demo_cli(out)
    assert rc == 0, stdout
    for rel, text in mine.items():
        assert (out / rel).read_text() == text, rel
    # a folder of the user's own samples (no demo.json, no demo run): refused, untouched
    theirs = tmp_path / "theirs"
    (theirs / "samples").mkdir(parents=True)
    (theirs / "samples" / "grid.png").write_bytes(b"my grid")
    (theirs / "samples" / "000003.png").write_bytes(b"my png")
    before = tree(theirs)
    rc, stdout = run_demo_cli(theirs)
    assert rc == 2
    assert tree(theirs) == before and (theirs / "samples" / "grid.png").read_bytes() == b"my grid"
    # its samples/ without samples.json: grid.png is no longer provably the demo's: refused
    (out / "samples" / "samples.json").unlink()
    rc, stdout = run_demo_cli(out)
    assert rc == 2 and (out / "samples" / "mine.txt").read_text() == "e"


def test_demo_refuses_bad_guidance_before_any_work(tmp_path: Path, capsys):
    rc, _, err = run(capsys, "demo", "--out", tmp_path / "d", "--guidance", "-5")
    assert_usage_error(rc, err, "demo", "--guidance", "'-5'")
    assert not (tmp_path / "d").exists()


def test_grid_row_labels_with_newlines_and_long_names_are_drawn_on_one_line():
    """A class folder named "cats\\nand dogs" trained fine, then crashed sample --per-class
    in the grid's label drawing (Pillow measures no multi-line text)."""
    from vqgen.stage1_vqvae.runtime.grid import MAX_LABEL_CHARS, make_grid_image, printable_label

    labels = ["cats\nand dogs", "x" * 300, "tab\there"]
    grid = make_grid_image(torch.rand(3, 1, 28, 28), 1, labels)
    assert grid.size[1] == 3 * (56 + 2) + 2
    assert printable_label("cats\nand dogs") == "cats and dogs"
    assert len(printable_label("x" * 300)) == MAX_LABEL_CHARS
    narrow = make_grid_image(torch.rand(3, 1, 28, 28), 1, ["a", "b", "c"])
    assert grid.size[0] - narrow.size[0] < 400  # a 300-character name does not widen it much
