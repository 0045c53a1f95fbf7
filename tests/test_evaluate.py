"""``vqgen evaluate`` end to end on the tiny shared VQ-VAE and a tiny prior: the report's
files and numbers, the classifier cache, and every bad input of issue 4 (missing logs,
unlabelled data, N capped, mismatched pair, an occupied --out)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import TINY_NUM_CODES
from tests.test_cli_stage2 import save_vqvae_checkpoint
from tests.test_prior import tiny_prior, train_prior_argv
from vqgen.pipeline.cli import main
from vqgen.pipeline.cli.evaluate import add_evaluate
from vqgen.pipeline.defaults import DEMO_GUIDANCE, DEMO_TEMPERATURE, EXAMPLES
from vqgen.pipeline.evaluation.classifier import CLASSIFIER_CONFIG
from vqgen.pipeline.evaluation.data import eval_datasets
from vqgen.pipeline.evaluation.evaluate import evaluate
from vqgen.pipeline.evaluation.report import plot_curves, read_training_logs
from vqgen.pipeline.evaluation.samples import even_labels
from vqgen.pipeline.evaluation.stage2 import BOUND_FORMULA, prior_metrics
from vqgen.pipeline.generate import MismatchError, load_pair

N = 40  # samples of each kind
TINY_CLASSIFIER = dict(CLASSIFIER_CONFIG, epochs=1, width=4, features=16)
FAST_SIGMAS = (0.01, 0.05, 0.2)
SECTIONS = ("Stage one", "Stage two", "Whole model", "Samples", "Training curves", "Notes")


def run_eval(vqvae, prior, out: Path, cache: Path, data: str | None = None,
             lines: list[str] | None = None, **kw) -> dict:
    """evaluate() with the tiny test settings; progress lines go to ``lines``."""
    sink = lines if lines is not None else []
    return evaluate(vqvae, prior, data, out, num_samples=N, classifier_cache=cache,
                    classifier_config=TINY_CLASSIFIER, sigmas=FAST_SIGMAS, device="cpu",
                    log=sink.append, **kw)


@pytest.fixture(scope="module")
def prior_ckpt(tiny_vqvae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny class-conditional prior on the shared VQ-VAE's codes, trained one whole epoch
    (~1 s) so that it beats the unigram baseline. Read-only."""
    out = tmp_path_factory.mktemp("eval_prior") / "run"
    assert main(train_prior_argv(tiny_vqvae_run / "codes", out, "--limit-train-batches", "70",
                                 "--lr", "0.01")) == 0
    return out / "last.ckpt"


@pytest.fixture(scope="module")
def full_report(tiny_vqvae_run: Path, prior_ckpt: Path, tmp_path_factory) -> dict:
    """One whole report (both stages, samples, a fresh classifier). Read-only."""
    root = tmp_path_factory.mktemp("eval_report")
    lines: list[str] = []
    rep = run_eval(tiny_vqvae_run / "last.ckpt", prior_ckpt, root / "report", root / "cache",
                   lines=lines)
    return {"out": root / "report", "report": rep, "lines": lines, "cache": root / "cache",
            "root": root}


def _write_pngs(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(folder / f"{i:03d}.png")


# ---------------------------------------------------------------------- the whole report


def test_report_files_and_sections(full_report: dict):
    out, rep = full_report["out"], full_report["report"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(rep))
    page = (out / "index.html").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}" in page, section
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert {"reconstructions.png", "codes_histogram.png", "nll_heatmap.png",
            "samples_conditional.png", "samples_unconditional.png", "curves_vqvae.png",
            "curves_prior.png"} <= set(srcs)
    for src in srcs:  # relative, beside the page, real PNGs
        assert "/" not in src and (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert "<script" not in page and "http" not in page.replace("html lang", "")
    assert BOUND_FORMULA.replace(">", "&gt;") in page or BOUND_FORMULA in page
    # the report was renamed into place: no temp folder left beside it
    assert sorted(p.name for p in full_report["root"].iterdir()) == ["cache", "report"]
    with Image.open(out / "samples_conditional.png") as grid:  # one row per class
        assert grid.height > 9 * 28


def test_report_numbers_are_consistent(full_report: dict):
    rep = full_report["report"]
    s1, s2, wm, sm = rep["stage1"], rep["stage2"], rep["whole_model"], rep["samples"]
    assert s1["num_images"] == 500
    assert s1["psnr_db"] == pytest.approx(10 * math.log10(1 / s1["mse"]))
    assert 0 < s1["ssim"] <= 1
    assert sum(s1["code_counts"]) == 500 * 49 and len(s1["code_counts"]) == TINY_NUM_CODES
    assert s1["codebook_usage"] == pytest.approx(s1["codes_used"] / TINY_NUM_CODES)
    assert 1 <= s1["perplexity"] <= s1["codes_used"]

    b = s2["baselines"]
    assert b["uniform_bits_per_code"] == pytest.approx(math.log2(TINY_NUM_CODES))
    # a trained prior codes held-out maps in fewer bits than the unigram baseline, which in
    # turn beats the uniform code (the shared VQ-VAE uses its codes unevenly)
    assert s2["bits_per_code"] < 0.95 * b["unigram_heldout_cross_entropy_bits_per_code"]
    assert b["unigram_heldout_cross_entropy_bits_per_code"] < 0.95 * b["uniform_bits_per_code"]
    assert s2["conditional"] is True
    grid = np.array(s2["per_position_bits"])
    assert grid.shape == (7, 7) and grid.mean() == pytest.approx(s2["bits_per_code"])
    assert b["unigram_train_entropy_bits_per_code"] <= b["uniform_bits_per_code"]
    assert "TRAINING split" in b["unigram_definition"]

    assert wm["formula"] == BOUND_FORMULA and wm["sigma"] in FAST_SIGMAS
    assert wm["bits_per_dim"] == pytest.approx(wm["prior_bits_per_dim"] + wm["recon_bits_per_dim"])
    assert wm["prior_bits_per_dim"] == pytest.approx(s2["bits_per_code_uncond"] * 49 / 784)

    st = rep["settings"]
    assert st["conditional_sampling"] == {"guidance": DEMO_GUIDANCE, "temperature": DEMO_TEMPERATURE}
    assert st["unconditional_sampling"]["guidance"] == 1.0 and st["num_samples"] == N
    refs = sm["references"]
    # even one tiny epoch makes the classifier far better than chance (1/10)
    assert refs["classifier_heldout_accuracy"] > 0.4 and refs["num_reference"] == N
    # the references order as they must: real images are closer to real than blurred ones,
    # and samples of a barely trained model are further still
    assert 5 * refs["fd_real_vs_real"] < refs["fd_blurred_vs_real"]
    for kind in ("conditional", "unconditional"):
        assert sm[kind]["fd"] > 5 * refs["fd_real_vs_real"], kind
    cond = sm["conditional"]
    assert sum(cond["predicted_class_counts"]) == N
    # labels are spread evenly, so the overall accuracy is the mean of the per-class ones
    assert cond["class_accuracy"] == pytest.approx(np.mean(cond["per_class_accuracy"]))
    counts = np.array(sm["unconditional"]["predicted_class_counts"], dtype=float)
    p = counts[counts > 0] / counts.sum()
    assert sm["unconditional"]["class_entropy_fraction_of_log_k"] == pytest.approx(
        float(-(p * np.log(p)).sum()) / math.log(10), abs=1e-9)
    assert set(rep["timings_s"]) >= {"stage1", "stage2", "classifier_and_references", "samples",
                                    "total"}
    assert rep["notes"] == []  # nothing capped, labelled data, logs present


def test_stage_numbers_match_a_direct_computation(full_report: dict, tiny_vqvae_run: Path,
                                                  prior_ckpt: Path):
    """MSE and held-out NLL recomputed here the plain way agree with the report."""
    rep = full_report["report"]
    prior, lit = load_pair(prior_ckpt)
    _, val = eval_datasets(lit)
    x = val.images.float() / 255
    with torch.inference_mode():
        codes = lit.model.encode(x)
        mse = float(((lit.model.decode_codes(codes) - x) ** 2).mean())
        labels = torch.from_numpy(val.labels)
        nll = float(F.cross_entropy(prior.model(codes, labels), codes))
    assert rep["stage1"]["mse"] == pytest.approx(mse, rel=1e-5)
    assert rep["stage2"]["nll_nats_per_code"] == pytest.approx(nll, rel=1e-5)


def test_classifier_cache_is_reused(full_report: dict, tiny_vqvae_run: Path, prior_ckpt: Path,
                                    tmp_path: Path):
    first = full_report["report"]["samples"]
    path = Path(first["classifier"]["path"])
    assert first["classifier"]["reused"] is False
    assert path.parent == full_report["cache"] and path.name.startswith("classifier-mnist5k-")
    assert any(line.startswith("classifier: training") for line in full_report["lines"])
    stamp = path.stat().st_mtime_ns
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"state_dict", "meta"} and blob["meta"]["config"] == TINY_CLASSIFIER

    lines: list[str] = []
    again = run_eval(tiny_vqvae_run / "last.ckpt", prior_ckpt, tmp_path / "report",
                     full_report["cache"], lines=lines)["samples"]
    assert f"classifier: reusing {path}" in lines
    assert again["classifier"]["reused"] is True
    assert path.stat().st_mtime_ns == stamp
    assert list(full_report["cache"].iterdir()) == [path]
    # same seed, same classifier: the same numbers
    assert again["conditional"]["fd"] == pytest.approx(first["conditional"]["fd"])
    assert again["references"] == pytest.approx(first["references"])


# ---------------------------------------------------------------------- bad input


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgen")
    add_evaluate(parser.add_subparsers(dest="verb"))
    return parser


def test_vqvae_only_without_logs_is_a_stage_one_report_with_notes(tiny_vqvae_run: Path,
                                                                   tmp_path: Path):
    """Through the CLI function: no --prior, and a run folder without logs/."""
    run = tmp_path / "bare"
    run.mkdir()
    shutil.copy(tiny_vqvae_run / "last.ckpt", run / "last.ckpt")
    args = _parser().parse_args(["evaluate", "--vqvae", str(run / "last.ckpt"), "--device", "cpu",
                                 "--out", str(tmp_path / "report")])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert args.func(args) == 0
    rep = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert rep["stage2"] is None and rep["whole_model"] is None and rep["samples"] is None
    assert rep["curves"]["vqvae"] is None
    notes = " | ".join(rep["notes"])
    assert "no --prior" in notes and "no CSV training logs" in notes
    page = (tmp_path / "report" / "index.html").read_text()
    assert "no CSV training logs" in page
    assert "PSNR" in buf.getvalue() and "2 note(s)" in buf.getvalue()


def test_unlabelled_data_skips_the_classifier_with_a_note(tiny_vqvae_run: Path, prior_ckpt: Path,
                                                          tmp_path: Path):
    _write_pngs(tmp_path / "flat", 20, seed=0)
    rep = run_eval(tiny_vqvae_run / "last.ckpt", prior_ckpt, tmp_path / "report",
                   tmp_path / "cache", data=f"folder:{tmp_path / 'flat'}")
    notes = " | ".join(rep["notes"])
    assert "no class labels" in notes and "a classifier needs labels" in notes
    assert "references" not in rep["samples"] and "fd" not in rep["samples"]["unconditional"]
    assert rep["stage2"]["conditional"] is False and rep["stage1"]["num_images"] == 2
    assert (tmp_path / "report" / "samples_unconditional.png").is_file()
    assert not (tmp_path / "cache").exists()


def test_num_samples_above_the_training_split_is_capped_with_a_note(
        tiny_vqvae_run: Path, prior_ckpt: Path, tmp_path: Path):
    for cls, seed in (("a", 1), ("b", 2)):
        _write_pngs(tmp_path / "two" / cls, 20, seed)
    rep = run_eval(tiny_vqvae_run / "last.ckpt", prior_ckpt, tmp_path / "report",
                   tmp_path / "cache", data=f"folder:{tmp_path / 'two'}")
    sm = rep["samples"]
    assert sm["references"]["num_reference"] == 36  # 40 images, 4 held out
    assert sm["unconditional"]["num"] == N and sm["conditional"]["num"] == N
    notes = " | ".join(rep["notes"])
    assert f"--num-samples {N} > 36 training images" in notes and "N_ref=36" in notes
    assert "whole val split, 4 images" in notes
    # 10 prior classes, 2 data classes: no class accuracy, said so
    assert "class_accuracy" not in sm["conditional"] and "not scored" in notes


def test_mismatched_pair_is_an_error(prior_ckpt: Path, tmp_path: Path):
    other = save_vqvae_checkpoint(tmp_path / "k16.ckpt", num_codes=16)
    with pytest.raises(MismatchError, match="num_codes=16"):
        run_eval(other, prior_ckpt, tmp_path / "report", tmp_path / "cache")
    assert not (tmp_path / "report").exists()
    args = _parser().parse_args(["evaluate", "--vqvae", str(other), "--prior", str(prior_ckpt),
                                 "--device", "cpu", "--out", str(tmp_path / "report")])
    with pytest.raises(MismatchError):
        args.func(args)


def test_occupied_out_is_refused_unless_overwrite(tiny_vqvae_run: Path, tmp_path: Path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="--overwrite"):
        run_eval(tiny_vqvae_run / "last.ckpt", None, out, tmp_path / "cache")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run_eval(None, None, tmp_path / "other", tmp_path / "cache")


def test_cli_errors_are_one_line(prior_ckpt: Path, tmp_path: Path, capsys):
    from tests.test_cli_stage1 import assert_usage_error

    other = save_vqvae_checkpoint(tmp_path / "k16.ckpt", num_codes=16)
    rc = main(["evaluate", "--vqvae", str(other), "--prior", str(prior_ckpt), "--device", "cpu",
               "--out", str(tmp_path / "r")])
    assert_usage_error(rc, capsys.readouterr().err, "evaluate", "num_codes=16")
    rc = main(["evaluate", "--out", str(tmp_path / "r")])
    assert_usage_error(rc, capsys.readouterr().err, "evaluate", "--vqvae", "--prior")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------- pieces


def test_parser_defaults_follow_the_demo_and_help_ends_with_an_example():
    parser = _parser()
    args = parser.parse_args(["evaluate", "--out", "r"])
    assert (args.guidance, args.temperature, args.num_samples, args.seed) == (
        DEMO_GUIDANCE, DEMO_TEMPERATURE, 2000, 0)
    sub = parser._subparsers._group_actions[0].choices["evaluate"]
    assert sub.format_help().rstrip().endswith(EXAMPLES["evaluate"])
    ex = parser.parse_args(EXAMPLES["evaluate"].split()[1:])  # the example parses
    assert ex.data == "mnist5k" and ex.out == "report/"


def test_training_logs_merge_every_version_by_step(tmp_path: Path):
    def write(version: int, rows: str) -> None:
        d = tmp_path / "logs" / f"version_{version}"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text("epoch,step,train/loss,val/psnr\n" + rows)

    write(0, "0,10,1.0,\n0,20,0.8,\n0,20,,15.0\n")
    write(1, "1,20,0.7,\n1,30,0.5,\n1,30,,18.0\n")   # resumed at step 20
    write(10, "2,40,0.4,\n")                         # numeric order: after version_1
    series, files = read_training_logs(tmp_path)
    assert [f.parent.name for f in files] == ["version_0", "version_1", "version_10"]
    assert series["train/loss"] == [(10, 1.0), (20, 0.7), (30, 0.5), (40, 0.4)]
    assert series["val/psnr"] == [(20, 15.0), (30, 18.0)]
    res = plot_curves(tmp_path, "vqvae", tmp_path / "c.png")
    assert res is not None and res["columns"] == ["train/loss", "val/psnr"]
    assert (tmp_path / "c.png").is_file()
    assert plot_curves(tmp_path / "nothing", "prior", tmp_path / "n.png") is None
    assert not (tmp_path / "n.png").exists()


def test_prior_metrics_against_plain_cross_entropy():
    """Conditional NLL uses the labels, the unconditional one the null class; baselines
    come from the training counts (add-one smoothed for the held-out cross-entropy)."""
    prior = tiny_prior(num_codes=4, code_shape=(2, 3), num_classes=3)
    with torch.no_grad():  # random weights: labels must matter
        for p in prior.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    g = torch.Generator().manual_seed(0)
    val = torch.randint(0, 4, (10, 2, 3), generator=g)
    labels = torch.randint(0, 3, (10,), generator=g)
    train = np.zeros((2, 2, 3), dtype=np.int64)
    train[1, 0, :2] = 1  # counts 10, 2, 0, 0
    res = prior_metrics(prior, train, val, labels, batch_size=4)
    with torch.no_grad():
        cond = float(F.cross_entropy(prior.model(val, labels), val))
        unc = float(F.cross_entropy(prior.model(val, None), val))
    assert abs(cond - unc) > 1e-3
    assert res["nll_nats_per_code"] == pytest.approx(cond)
    assert res["nll_uncond_nats_per_code"] == pytest.approx(unc)
    assert np.mean(res["per_position_bits"]) == pytest.approx(cond / math.log(2))
    b = res["baselines"]
    assert b["uniform_bits_per_code"] == pytest.approx(2.0)
    p = np.array([10, 2, 0, 0]) / 12
    assert b["unigram_train_entropy_bits_per_code"] == pytest.approx(-(p[:2] * np.log2(p[:2])).sum())
    q = np.array([11, 3, 1, 1]) / 16
    want = -np.log2(q[val.flatten().numpy()]).mean()
    assert b["unigram_heldout_cross_entropy_bits_per_code"] == pytest.approx(want)
    assert prior_metrics(prior, train, val, None)["conditional"] is False


def test_even_labels_spread_the_classes():
    lab = even_labels(23, 10)
    counts = torch.bincount(lab, minlength=10)
    assert int(counts.max()) - int(counts.min()) <= 1 and int(counts.sum()) == 23
    assert torch.equal(lab, lab.sort().values)
    assert even_labels(20, 10).tolist() == [c for c in range(10) for _ in range(2)]
