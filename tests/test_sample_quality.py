"""Sample-quality measures added for issue 11: precision/recall of samples (Kynkäänniemi et al.
2019) and Inception FID/KID from a user-supplied weights file (plumbing tested with a randomly
initialised InceptionV3 saved in the real file's format)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_cli_stage1 import assert_usage_error
from tests.test_evaluate import FAST_SIGMAS, TINY_CLASSIFIER, _write_pngs, prior_ckpt  # noqa: F401
from vqgen.pipeline.cli import main
from vqgen.pipeline.evaluation import inception
from vqgen.pipeline.evaluation.evaluate import evaluate
from vqgen.pipeline.evaluation.samples import precision_recall


def _feature_extractor():
    """torch-fidelity's InceptionV3 module (the `inception` extra; CI installs it)."""
    return pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")


def test_precision_recall_by_hand():
    """1-D, k = 1. Real radii: 1, 1, 1, 1, 7 (10's nearest is 3). Fake 0.5 is in 0's ball, 5 in
    10's, 20 in none: precision 2/3. Fake radii 4.5, 4.5, 15: every real point is covered
    (10 by 20's ball): recall 1."""
    real = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    fake = np.array([[0.5], [5.0], [20.0]])
    pr = precision_recall(real, fake, k=1)
    assert pr["precision"] == pytest.approx(2 / 3) and pr["recall"] == 1.0


def test_precision_recall_separate_fidelity_from_diversity():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 8))
    same = precision_recall(real, rng.normal(size=(400, 8)))
    collapsed = precision_recall(real, real[:1] + 1e-2 * rng.normal(size=(400, 8)))  # one mode
    far = precision_recall(real, rng.normal(size=(400, 8)) + 20.0)
    assert same["precision"] > 0.8 and same["recall"] > 0.8
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1  # faithful, not diverse
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    assert precision_recall(real, real[:3])["precision"] is None  # no more than k points


def random_inception_weights(path: Path) -> Path:
    """A randomly initialised torch-fidelity InceptionV3 saved like the real weights file
    (a plain state dict); the download in its constructor is stubbed out."""
    fe = _feature_extractor()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def test_the_expected_hash_comes_from_torch_fidelity():
    _feature_extractor()
    assert inception.expected_sha256_prefix() == "6726825d"


def test_inception_fid_kid_beside_the_classifier_fd(tiny_vqvae_run: Path, prior_ckpt: Path,  # noqa: F811
                                                    tmp_path: Path, monkeypatch):
    weights = random_inception_weights(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    for cls, seed in (("a", 1), ("b", 2)):
        _write_pngs(tmp_path / "two" / cls, 20, seed)
    monkeypatch.setattr(inception, "_CHECK_SHA256", False)  # the test's own random network
    rep = evaluate(tiny_vqvae_run / "last.ckpt", prior_ckpt, f"folder:{tmp_path / 'two'}",
                   tmp_path / "report", num_samples=4, classifier_cache=tmp_path / "cache",
                   classifier_config=TINY_CLASSIFIER, sigmas=FAST_SIGMAS, device="cpu",
                   inception_weights=weights, log=lambda s: None)
    inc = rep["samples"]["inception"]
    for kind in ("conditional", "unconditional"):
        assert math.isfinite(inc[kind]["fid"]) and math.isfinite(inc[kind]["kid_mean"])
        assert inc[kind]["num_fake"] == 4 and inc[kind]["num_real"] == 4  # 4 held-out images
        assert 0 <= rep["samples"][kind]["precision"] <= 1 and 0 <= rep["samples"][kind]["recall"] <= 1
    assert inc["weights_sha256"] == inception.check_weights(weights)
    refs = rep["samples"]["references"]
    assert 0 <= refs["precision_blurred"] <= 1 and 0 <= refs["recall_real"] <= 1
    written = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert written["samples"]["inception"]["conditional"]["fid"] == inc["conditional"]["fid"]
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Inception FID" in html and "not comparable with published FIDs" in html
    assert "precision" in html and "recall" in html


def test_a_wrong_weights_file_is_refused_in_one_line(prior_ckpt: Path, tmp_path: Path,  # noqa: F811
                                                     capsys):
    weights = random_inception_weights(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    out = tmp_path / "report"
    rc = main(["evaluate", "--prior", str(prior_ckpt), "--device", "cpu", "--out", str(out),
               "--inception-weights", str(weights)])
    assert_usage_error(rc, capsys.readouterr().err, "evaluate", "sha256", "6726825d")
    assert not out.exists()
    rc = main(["evaluate", "--prior", str(prior_ckpt), "--device", "cpu", "--out", str(out),
               "--inception-weights", str(tmp_path / "missing.pth")])
    assert_usage_error(rc, capsys.readouterr().err, "evaluate", "not a file")
    assert not out.exists()


@pytest.mark.parametrize("extra, guidance, temperature, defaults", [
    (["--per-class", "1"], 2.0, 0.9, ["guidance", "temperature"]),
    (["--class", "3", "--num", "2", "--guidance", "3"], 3.0, 0.9, ["temperature"]),
    (["--num", "2"], 1.0, 1.0, ["guidance", "temperature"]),  # no class: no guidance
])
def test_sample_defaults_follow_the_measurements_and_are_recorded(
        prior_ckpt: Path, tmp_path: Path, extra, guidance, temperature, defaults):  # noqa: F811
    from vqgen.pipeline.defaults import SAMPLE_GUIDANCE, SAMPLE_TEMPERATURE

    assert (SAMPLE_GUIDANCE, SAMPLE_TEMPERATURE) == (2.0, 0.9)  # benchmarks/guidance.py's pick
    out = tmp_path / "s"
    assert main(["sample", "--prior", str(prior_ckpt), "--device", "cpu", "--out", str(out),
                 *extra]) == 0
    rec = json.loads((out / "samples.json").read_text())
    assert (rec["guidance"], rec["temperature"]) == (guidance, temperature)
    assert rec["defaults_used"] == defaults
