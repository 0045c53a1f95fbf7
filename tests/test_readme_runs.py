"""Every ``vqgen`` command of README.md and the docs pages runs, in page order
(``test_readme.PAGES``, each distinct command once), in-process (``pipeline.cli.main``) in
one scratch working directory, and writes the outputs the page names; then every page's
Python block runs there, on what the commands wrote. The verbs, flags and paths are the
pages' own; tiny settings are substituted where the real ones would take minutes (smaller
models, one epoch, fewer samples, a one-epoch classifier): ``TINY`` lists each substitution.

Only the commands of docs/scaling.md are not run: they need 4 GPUs and a second node; they
are parsed by ``test_readme.py`` and DDP itself is exercised in ``test_distributed.py``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_MODEL_ARGS, TINY_TRAIN_ARGS
from tests.test_cli_stage2 import TINY_PRESET, TINY_PRIOR
from tests.test_evaluate import TINY_CLASSIFIER
from tests.test_prior import TINY_PRIOR_ARGS
from tests.test_readme import COMMANDS, python_blocks
from vqgen.pipeline.cli import main
from vqgen.pipeline.cli import serve as serve_verb
from vqgen.pipeline.codec.vqz import MAGIC
from vqgen.pipeline.evaluation.evaluate import CLASSIFIER_CONFIG
from vqgen.stage1_vqvae import lit as stage1_lit
from vqgen.stage1_vqvae.data import build_dataset
from vqgen.stage1_vqvae.runtime.grid import save_png
from vqgen.stage2_prior import train as stage2_train

NEEDS_GPUS = [c for c in COMMANDS if "--accelerator gpu" in c]

# appended to the pages' argv per verb (argparse keeps the last value of a repeated flag)
TINY: dict[str, tuple[str, ...]] = {
    "demo": ("--vqvae-epochs", "1", "--prior-epochs", "1", "--per-class", "1",
             "--accelerator", "cpu", "--device", "cpu"),
    # K=64, not the shared fixture's 32: the pages sample with --top-k 50
    "train-vqvae": (*TINY_MODEL_ARGS, "--num-codes", "64", *TINY_TRAIN_ARGS, "--max-epochs", "1"),
    "encode": ("--device", "cpu"),
    "reconstruct": ("--device", "cpu"),
    "decode": ("--device", "cpu"),
    "train-prior": TINY_PRIOR_ARGS,
    "sample": ("--device", "cpu"),
    "evaluate": ("--num-samples", "40", "--device", "cpu"),
    "compress": ("--device", "cpu"),
    "decompress": ("--device", "cpu"),
    "inpaint": ("--device", "cpu"),
    "repair": ("--device", "cpu"),
    "serve": ("--port", "0", "--device", "cpu"),  # visited once, then stopped: _visit_page
    "export": ("--device", "cpu"),
}
DIGITS = 3  # images in the `digits/` folder the pages compress


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "vqgen"
    return [*words[1:], *TINY[words[1]]]


def _option(command: str, flag: str) -> str:
    words = shlex.split(command)
    return words[words.index(flag) + 1]


def _visit_page(url: str) -> None:
    """`vqgen serve` is up: its page answers; returning stops it."""
    import urllib.request

    with urllib.request.urlopen(url + "/config", timeout=30) as r:
        assert r.status == 200 and json.loads(r.read())["title"] == "vqgen"


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, str]]]:
    """Run the pages' commands in order in one scratch folder (later ones read what
    earlier ones wrote, as on the pages) -> (folder, {command: (exit code, stdout)})."""
    cwd = tmp_path_factory.mktemp("readme")
    results: dict[str, tuple[int, str]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        # the demo's models and the evaluation classifier at test size
        mp.setitem(stage1_lit.PRESETS, "mnist", {**stage1_lit.PRESETS["mnist"], **TINY_PRESET})
        for key, value in TINY_PRIOR.items():
            mp.setitem(stage2_train.PRIOR_DEFAULTS, key, value)
        for key, value in TINY_CLASSIFIER.items():
            mp.setitem(CLASSIFIER_CONFIG, key, value)
        mp.setattr(serve_verb, "serve_forever", _visit_page)
        digits = cwd / "digits"  # the user's own folder of images on the pages
        digits.mkdir()
        val = build_dataset("mnist5k", "val")
        for i in range(DIGITS):
            save_png(val[i][0], digits / f"d{i}.png")
        # the user's own files the inpaint / repair examples name
        save_png(val[3][0], cwd / "photo.png")
        photos = cwd / "photos"  # colour photos for the shipped cifar10 pair
        photos.mkdir()
        rng = np.random.default_rng(0)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
        save_png(val[4][0], cwd / "damaged.png")
        mask = np.zeros((56, 56), np.uint8)
        mask[:28] = 255  # top half, at twice the image size
        Image.fromarray(mask).save(cwd / "mask.png")
        for command in COMMANDS:
            if command in NEEDS_GPUS:
                continue
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = main(_argv(command))
            results[command] = (rc, buf.getvalue())
            if rc != 0:
                break  # later commands read this one's outputs
    return cwd, results


def test_only_the_multi_gpu_commands_are_left_out():
    assert len(NEEDS_GPUS) == 3 and all("--devices 4" in c for c in NEEDS_GPUS)
    assert {shlex.split(c)[1] for c in COMMANDS if c not in NEEDS_GPUS} == set(TINY)


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _csv_columns(run: Path) -> set[str]:
    columns: set[str] = set()
    for path in (run / "logs").rglob("metrics.csv"):
        with open(path, newline="") as f:
            columns |= set(next(csv.reader(f)))
    return columns


def _code_maps(folder: Path, count: int | None = None) -> None:
    for name in ("codes.npy", "labels.npy", "meta.json"):
        assert (folder / name).is_file(), folder / name
    meta = json.loads((folder / "meta.json").read_text())
    codes = np.load(folder / "codes.npy", mmap_mode="r")
    assert codes.dtype == np.uint16 and codes.shape[1:] == tuple(meta["code_shape"])
    assert count is None or codes.shape[0] == count


def check_outputs(cwd: Path, command: str, stdout: str) -> None:
    """The outputs the pages name for this command."""
    verb = shlex.split(command)[1]
    if verb == "demo":
        assert (cwd / "checkpoints/demo/samples/grid.png").is_file()
        assert "checkpoints/demo/samples/grid.png" in stdout  # it prints where things went
    elif verb == "train-vqvae":
        run = cwd / _option(command, "--out")
        assert (run / "last.ckpt").is_file() and (run / "best.ckpt").is_file()
        assert list((run / "previews").glob("*.png")), "no reconstruction grid per epoch"
        if "--bottleneck gaussian" in command:  # a continuous VAE: no codes, an ELBO instead
            assert not (run / "codes").exists()
            assert {"val/recon_loss", "val/psnr", "val/bits_per_dim"} <= _csv_columns(run)
            return
        for split, count in (("train", 4500), ("val", 500)):
            _code_maps(run / "codes" / split, count)
        assert {"val/recon_loss", "val/psnr", "val/perplexity", "val/codebook_usage"} \
            <= _csv_columns(run)
    elif verb == "encode":
        out = cwd / _option(command, "--out")
        _code_maps(out / "train", 4500)
        _code_maps(out / "val", 500)
    elif verb == "reconstruct":
        assert _png(cwd / _option(command, "--out"))[0] > 28
    elif verb == "decode":
        out = cwd / _option(command, "--out")
        assert len(list(out.glob("[0-9]*.png"))) == 500 and (out / "grid.png").is_file()
    elif verb == "train-prior":
        run = cwd / _option(command, "--out")
        assert (run / "last.ckpt").is_file()
        assert {"val/nll", "val/bits_per_code"} <= _csv_columns(run)
    elif verb == "sample":
        out = cwd / _option(command, "--out")
        codes = np.load(out / "codes.npy")
        settings = json.loads((out / "samples.json").read_text())
        num = (10 * int(_option(command, "--per-class")) if "--per-class" in command
               else int(_option(command, "--num")) if "--num" in command else 64)
        assert codes.shape[0] == settings["count"] == num
        assert len([p for p in out.glob("*.png") if p.name != "grid.png"]) == num
        assert (out / "grid.png").is_file()
        asked = "--class" in command or "--per-class" in command
        assert (out / "labels.npy").is_file() == asked  # labels.npy when a class was asked for
        if "--class" in command:
            labels = np.load(out / "labels.npy")
            assert set(labels.tolist()) == {int(_option(command, "--class"))}
    elif verb == "evaluate":
        out = cwd / _option(command, "--out")
        metrics = json.loads((out / "metrics.json").read_text())
        assert {"stage1", "stage2", "samples"} <= set(metrics)
        if "--compare" in command:  # one row per model and the side-by-side figure
            names = shlex.split(command)
            assert len(metrics["comparison"]["rows"]) == 1 + len(
                names[names.index("--compare") + 1 : names.index("--out")])
            assert (out / "comparison.png").is_file()
        page = (out / "index.html").read_text()
        assert '<img src="' in page and list(out.glob("*.png"))
    elif verb == "compress":
        out = cwd / _option(command, "--out")
        assert out.read_bytes()[:4] == MAGIC
        if "--report" in command:
            report = json.loads((cwd / _option(command, "--report")).read_text())
            assert report["images"] == (500 if "--data" in command else DIGITS)
            assert report["total_bits"] == 8 * out.stat().st_size
            assert report["overhead"] >= 1.0 and report["psnr_db"] > 0  # a 1-epoch tiny model
    elif verb == "decompress":
        out = cwd / _option(command, "--out")
        assert sorted(p.name for p in out.glob("*.png")) == [f"d{i}.png" for i in range(DIGITS)]
        assert np.load(out / "codes.npy").shape[0] == DIGITS and (out / "decoded.json").is_file()
    elif verb in ("inpaint", "repair"):
        out = cwd / _option(command, "--out")
        doc = json.loads((out / "inpaint.json").read_text())
        n = len(range(*map(int, _option(command, "--index").split(":")))) \
            if "--index" in command else 1
        num = int(_option(command, "--num")) if "--num" in command else \
            (8 if verb == "inpaint" else 1)
        assert np.load(out / "codes.npy").shape == (n, num, 7, 7) and doc["count"] == n
        assert {f"{i:06d}_{k}.png" for i in range(n) for k in range(num)} \
            <= {p.name for p in out.glob("*.png")}
        assert (out / "grid.png").is_file()
        assert (out / "labels.npy").is_file() == ("--data" in command)
        if verb == "repair":
            assert np.load(out / "surprisal.npy").shape == (n, 7, 7)
            assert (out / "surprisal.png").is_file()
    elif verb == "export":
        out = cwd / _option(command, "--out")
        config = json.loads((out / "config.json").read_text())
        assert config["kind"] == "pair" and (out / "README.md").is_file()
        assert (out / "prior" / "model.safetensors").is_file()
        if "--report" in command:  # the card quotes the report
            assert "## Measured" in (out / "README.md").read_text() and config["metrics"]["stage1"]
    elif verb == "serve":  # the page answered (_visit_page); it says where and cleans up
        assert "http://127.0.0.1:" in stdout and "vqgen serve: stopped" in stdout
        work = re.search(r"uploads and results: (\S+)", stdout).group(1)
        assert not Path(work).exists()
    else:  # a verb added to a page without a check here
        raise AssertionError(f"no output check for the command {command!r}")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in NEEDS_GPUS])
def test_readme_command_runs_and_writes_what_the_readme_names(readme_runs, command: str):
    cwd, results = readme_runs
    assert command in results, f"not reached: an earlier command failed ({results})"
    rc, stdout = results[command]
    assert rc == 0, f"{command} exited {rc}:\n{stdout[-2000:]}"
    check_outputs(cwd, command, stdout)


@pytest.mark.parametrize(("page", "body"), python_blocks(),
                         ids=[f"{page}-{i}" for i, (page, _) in enumerate(python_blocks())])
def test_python_example_runs_on_what_the_commands_wrote(readme_runs, monkeypatch, page, body):
    """Each page's Python block, as written, in the folder where the demo (at test size)
    wrote checkpoints/demo."""
    cwd, results = readme_runs
    assert results.get("vqgen demo", (None,))[0] == 0, "the demo did not run"
    monkeypatch.chdir(cwd)
    scope: dict = {}
    exec(compile(body, page, "exec"), scope)
    if "out" in scope:  # sample(..., 16, labels=...)
        assert scope["out"].codes.shape[0] == scope["out"].images.shape[0] == 16
