"""Stage two as a library: LitPrior (checkpoint round trip, hparams from the code maps,
logged metrics, conditioning dropout, untrained NLL) and the pipeline helpers that fit a
prior to a VQ-VAE (check_compatible, make_labels, resolve_class, load_pair, sample)."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import TINY_NUM_CODES
from vqgen.pipeline.cli import main
from vqgen.pipeline.generate import (
    MismatchError,
    check_compatible,
    load_pair,
    make_labels,
    resolve_class,
    sample,
)
from vqgen.stage1_vqvae.codes import read_code_maps, write_code_maps
from vqgen.stage1_vqvae.lit import LitVQVAE
from vqgen.stage1_vqvae.runtime.checkpoint import CheckpointError, file_sha256
from vqgen.stage2_prior.data import CodeMapDataModule
from vqgen.stage2_prior.lit import LitPrior, load_prior
from vqgen.stage2_prior.train import train_prior

# the tiny prior every stage-two test trains (a fraction of a second on one thread)
TINY_PRIOR_ARGS = ("--hidden", "8", "--num-layers", "2", "--head-hidden", "16",
                   "--max-epochs", "1", "--limit-train-batches", "3", "--accelerator", "cpu")


def train_prior_argv(codes: Path, out: Path, *extra: str) -> list[str]:
    """argv for ``vqgen train-prior`` with the tiny settings."""
    return ["train-prior", "--codes", str(codes), "--out", str(out), *TINY_PRIOR_ARGS, *extra]


def tiny_prior(num_codes: int = TINY_NUM_CODES, code_shape=(7, 7), num_classes: int = 10,
               **kw) -> LitPrior:
    kw = {"hidden": 8, "num_layers": 2, "head_hidden": 16, **kw}
    return LitPrior(num_codes=num_codes, code_shape=code_shape, num_classes=num_classes, **kw)


def tiny_vqvae(num_codes: int = TINY_NUM_CODES, image_size=(28, 28)) -> LitVQVAE:
    return LitVQVAE(hidden=8, res_hidden=4, num_res=1, code_dim=4, num_codes=num_codes,
                    image_size=image_size)


@pytest.fixture(scope="module")
def prior_run(tiny_vqvae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prior trained through the CLI on the shared VQ-VAE's codes. Read-only."""
    out = tmp_path_factory.mktemp("prior") / "run"
    assert main(train_prior_argv(tiny_vqvae_run / "codes", out, "--cond-drop", "0.5")) == 0
    return out


def _val_batch(run: Path, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    maps = read_code_maps(run / "codes" / "val")
    codes = torch.from_numpy(np.asarray(maps.codes[:n]).astype(np.int64))
    labels = torch.from_numpy(np.asarray(maps.labels[:n]).astype(np.int64))
    return codes, labels


# ---------------------------------------------------------------------- checkpoints


def test_prior_weights_that_do_not_fit_the_hparams_raise_checkpoint_error(prior_run: Path,
                                                                         tmp_path: Path):
    ckpt = torch.load(prior_run / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["hidden"] = 2 * ckpt["hyper_parameters"]["hidden"]
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as e:
        load_prior(path)
    assert str(path) in str(e.value) and "do not fit" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["last.ckpt", "best.ckpt"])
def test_checkpoint_round_trip_without_arguments(prior_run: Path, tiny_vqvae_run: Path, name: str):
    path = prior_run / name
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["vqgen"]["kind"] == "prior"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lit = LitPrior.load_from_checkpoint(path, map_location="cpu").eval()
    loaded = load_prior(path, averaged=False)  # as trained: the raw weights and their average
    assert not loaded.training
    assert dict(lit.hparams) == dict(loaded.hparams) == dict(ckpt["hyper_parameters"])
    codes, labels = _val_batch(tiny_vqvae_run)
    with torch.no_grad():
        a, b = lit(codes, labels), loaded(codes, labels)
    assert a.shape == (16, TINY_NUM_CODES, 7, 7)
    assert torch.equal(a, b)
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # trained weights, not a fresh init (an untrained head is all zeros)
    assert a.abs().max() > 0
    # what every verb loads: the averaged weights, as the model, and no second copy
    averaged = load_prior(path)
    assert averaged.ema is None and any(k.startswith("ema.") for k in ckpt["state_dict"])
    for key, value in averaged.model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"ema.{key}"]), key


def test_hparams_come_from_the_code_maps(prior_run: Path, tiny_vqvae_run: Path):
    meta = json.loads((tiny_vqvae_run / "codes" / "train" / "meta.json").read_text())
    hp = load_prior(prior_run / "last.ckpt").hparams
    assert hp.num_codes == meta["num_codes"] == TINY_NUM_CODES
    assert tuple(hp.code_shape) == tuple(meta["code_shape"]) == (7, 7)
    assert hp.num_classes == meta["num_classes"] == 10
    assert list(hp.class_names) == meta["class_names"] == [str(i) for i in range(10)]
    vq = (tiny_vqvae_run / "last.ckpt").resolve()
    assert hp.vqvae_checkpoint == str(vq)
    assert hp.vqvae_sha256 == file_sha256(vq)
    assert Path(hp.codes_dir) == (tiny_vqvae_run / "codes").resolve()
    assert hp.cond_drop == 0.5
    # sampling knobs are call arguments, never hyper-parameters
    assert not {"temperature", "top_k", "top_p", "guidance", "num"} & set(hp)


def test_hparams_follow_other_code_maps(tmp_path: Path):
    """Non-default facts (K=5, a 3x4 grid, three named classes, no VQ-VAE) reach the prior."""
    rng = np.random.default_rng(0)
    root = tmp_path / "codes"
    meta = {"num_classes": 3, "class_names": ["cat", "dog", "eel"], "vqvae_checkpoint": None,
            "vqvae_sha256": None, "source": "test"}
    for split, n in (("train", 24), ("val", 8)):
        write_code_maps(root / split, rng.integers(0, 5, (n, 3, 4)), rng.integers(0, 3, n),
                        num_codes=5, meta=meta)
    res = train_prior(root, tmp_path / "prior",
                      dict(hidden=4, num_layers=1, head_hidden=4, cond_drop=0.1),
                      trainer_args=dict(max_epochs=1, accelerator="cpu"), batch_size=8)
    lit = load_prior(res.last)
    hp = lit.hparams
    assert (hp.num_codes, tuple(hp.code_shape), hp.num_classes) == (5, (3, 4), 3)
    assert tuple(hp.class_names) == ("cat", "dog", "eel")
    assert (hp.vqvae_checkpoint, hp.vqvae_sha256) == ("", "")
    assert lit.model.num_codes == 5 and lit.model.code_shape == (3, 4)
    assert lit(torch.zeros(2, 3, 4, dtype=torch.long), torch.tensor([0, 2])).shape == (2, 5, 3, 4)


def test_train_prior_has_no_flags_for_facts_of_the_codes(tiny_vqvae_run: Path, tmp_path: Path,
                                                          capsys):
    for flag, value in (("--num-codes", "8"), ("--code-shape", "7x7"), ("--num-classes", "3")):
        rc = main(train_prior_argv(tiny_vqvae_run / "codes", tmp_path / "p", flag, value))
        assert rc == 2, flag
        assert "unrecognized arguments" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------- metrics


def test_val_nll_and_bits_per_code_in_the_csv_log(prior_run: Path):
    (log,) = (prior_run / "logs").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(log.open()) if r.get("val/nll")]
    assert rows, f"no val/nll rows in {log}"
    for r in rows:
        nll, bits = float(r["val/nll"]), float(r["val/bits_per_code"])
        assert 0 < nll < 2 * math.log(TINY_NUM_CODES)
        assert bits == pytest.approx(nll / math.log(2), rel=1e-5)
        assert r.get("val/nll_uncond"), "a class-conditional prior logs val/nll_uncond"


def _validate(lit: LitPrior, codes_dir: Path) -> dict[str, float]:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own deprecation noise
        (metrics,) = trainer.validate(lit, datamodule=CodeMapDataModule(str(codes_dir)),
                                      verbose=False)
    return metrics


def test_untrained_val_nll_is_log_k(tiny_vqvae_run: Path):
    metrics = _validate(tiny_prior(), tiny_vqvae_run / "codes")
    log_k = math.log(TINY_NUM_CODES)
    assert metrics["val/nll"] == pytest.approx(log_k, abs=0.05 * log_k)
    assert metrics["val/bits_per_code"] == pytest.approx(math.log2(TINY_NUM_CODES), abs=0.25)
    assert metrics["val/nll_uncond"] == pytest.approx(log_k, abs=0.05 * log_k)


# ---------------------------------------------------------------------- conditioning dropout


def _labels_seen_in_training(lit: LitPrior, codes: torch.Tensor, labels: torch.Tensor):
    """Run one training_step; return the labels the network was called with."""
    seen = []
    forward = lit.model.forward

    def spy(c, lab=None, **kw):
        seen.append(None if lab is None else lab.clone())
        return forward(c, lab, **kw)

    lit.model.forward = spy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = lit.training_step((codes, labels), 0)
    assert torch.isfinite(loss)
    (lab,) = seen
    return lab


def test_cond_drop_replaces_some_labels_by_the_null_class():
    torch.manual_seed(0)
    codes = torch.randint(0, TINY_NUM_CODES, (256, 7, 7))
    labels = torch.arange(256) % 10
    lab = _labels_seen_in_training(tiny_prior(cond_drop=0.5), codes, labels)
    dropped = lab == 10  # the null class
    assert 0.35 < float(dropped.float().mean()) < 0.65
    assert torch.equal(lab[~dropped], labels[~dropped])


def test_cond_drop_zero_keeps_every_label():
    codes = torch.randint(0, TINY_NUM_CODES, (64, 7, 7))
    labels = torch.arange(64) % 10
    assert torch.equal(_labels_seen_in_training(tiny_prior(cond_drop=0.0), codes, labels), labels)


def test_unconditional_prior_trains_without_labels():
    codes = torch.randint(0, TINY_NUM_CODES, (8, 7, 7))
    lab = _labels_seen_in_training(tiny_prior(num_classes=0, cond_drop=0.5), codes,
                                   torch.full((8,), -1))
    assert lab is None


@pytest.mark.parametrize("p", [1.0, 1.5, -0.1])
def test_cond_drop_out_of_range_is_refused(p: float):
    with pytest.raises(ValueError, match="cond-drop"):
        tiny_prior(cond_drop=p)


# ---------------------------------------------------------------------- check_compatible


def test_fitting_pair_passes():
    check_compatible(tiny_prior(), tiny_vqvae())
    check_compatible(tiny_prior(code_shape=(7, 8)), tiny_vqvae(image_size=(28, 32)))


def test_different_num_codes_names_both_values():
    with pytest.raises(MismatchError) as e:
        check_compatible(tiny_prior(num_codes=32), tiny_vqvae(num_codes=16))
    assert "num_codes=32" in str(e.value) and "num_codes=16" in str(e.value)
    assert isinstance(e.value, ValueError)  # so the CLI reports it as bad input


@pytest.mark.parametrize("prior_shape,image_size,vq_text", [
    ((7, 7), (32, 32), "8x8"),
    ((7, 7), (28, 32), "7x8"),
    ((8, 7), (28, 32), "7x8"),  # transposed grids do not fit either
])
def test_different_code_shape_names_both_shapes(prior_shape, image_size, vq_text):
    with pytest.raises(MismatchError) as e:
        check_compatible(tiny_prior(code_shape=prior_shape), tiny_vqvae(image_size=image_size))
    assert f"{prior_shape[0]}x{prior_shape[1]}" in str(e.value)
    assert vq_text in str(e.value)


# ---------------------------------------------------------------------- labels and classes


def test_make_labels():
    prior = tiny_prior(num_classes=3, class_names=("cat", "dog", "eel"))
    assert make_labels(prior, 5, None, None) is None
    assert torch.equal(make_labels(prior, 4, 2, None), torch.full((4,), 2))
    assert torch.equal(make_labels(prior, 99, None, 2), torch.tensor([0, 0, 1, 1, 2, 2]))
    for bad in (3, -1):
        with pytest.raises(ValueError, match="out of range"):
            make_labels(prior, 4, bad, None)
    uncond = tiny_prior(num_classes=0)
    assert make_labels(uncond, 4, None, None) is None
    for class_index, per_class in ((0, None), (None, 1)):
        with pytest.raises(ValueError, match="unconditional"):
            make_labels(uncond, 4, class_index, per_class)


def test_resolve_class_by_index_or_name():
    prior = tiny_prior(num_classes=3, class_names=("cat", "dog", "eel"))
    assert resolve_class(prior, None) is None
    assert resolve_class(prior, "#1") == 1  # an index is written #N
    assert resolve_class(prior, "eel") == 2
    with pytest.raises(ValueError, match="cow"):
        resolve_class(prior, "cow")
    with pytest.raises(ValueError, match="#N"):  # a bare number is not a name here
        resolve_class(prior, "1")
    # classes named by numbers: the name wins over the index
    numbered = tiny_prior(num_classes=3, class_names=("1", "2", "3"))
    assert resolve_class(numbered, "1") == 0 and resolve_class(numbered, "#1") == 1


# ---------------------------------------------------------------------- Python API (README)


def test_load_pair_and_sample(prior_run: Path, tiny_vqvae_run: Path):
    prior, vqvae = load_pair(prior_run / "last.ckpt")
    assert Path(vqvae.checkpoint_path) == (tiny_vqvae_run / "last.ckpt").resolve()
    out = sample(prior, vqvae, 5, seed=0)
    assert out.codes.shape == (5, 7, 7) and out.codes.dtype == torch.long
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < TINY_NUM_CODES
    assert out.images.shape == (5, 1, 28, 28)
    assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1
    assert out.labels is None
    with torch.no_grad():
        decoded = vqvae.model.decode_codes(out.codes).clamp(0, 1)
    torch.testing.assert_close(out.images.clamp(0, 1), decoded)
    again = sample(prior, vqvae, 5, seed=0)
    assert torch.equal(again.codes, out.codes) and torch.equal(again.images, out.images)
    assert not torch.equal(sample(prior, vqvae, 5, seed=1).codes, out.codes)
    labels = torch.tensor([3, 3, 7])
    cond = sample(prior, vqvae, 3, labels=labels, seed=0, top_k=4, temperature=0.5)
    assert torch.equal(cond.labels, labels) and cond.codes.shape == (3, 7, 7)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(num=0), "num"), (dict(num=-3), "num"),
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_k=TINY_NUM_CODES + 1), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(guidance=2.0), "guidance"),  # guidance without a class
])
def test_sample_refuses_bad_knobs(kwargs, needle):
    prior, vqvae = tiny_prior(), tiny_vqvae()
    num = kwargs.pop("num", 2)
    with pytest.raises(ValueError, match=needle):
        sample(prior, vqvae, num, **kwargs)


# ------------------------------------------- unconditional samples of a conditional prior


def test_training_records_the_class_counts(prior_run: Path, tiny_vqvae_run: Path):
    prior = load_prior(prior_run / "last.ckpt")
    labels = np.asarray(read_code_maps(tiny_vqvae_run / "codes" / "train").labels)
    expected = np.bincount(labels, minlength=prior.model.num_classes)
    assert list(prior.hparams.class_counts) == expected.tolist()


def test_unconditional_mixture_draws_the_class_then_the_image(prior_run: Path):
    """Image i: its class from its own generator (training frequencies), then its codes
    given that class from the same generator; batch size does not matter; "null" is the
    null-class model."""
    from vqgen.pipeline.generate import class_frequencies, image_seed
    from vqgen.stage2_prior.sampling import sample as sample_codes

    prior, vqvae = load_pair(prior_run / "last.ckpt")
    k = prior.model.num_classes
    # all the training mass on one class: every image is drawn given it
    prior.hparams.class_counts = tuple(10 if c == 3 else 0 for c in range(k))
    assert class_frequencies(prior).tolist() == [1.0 if c == 3 else 0.0 for c in range(k)]
    out = sample(prior, vqvae, 6, seed=5, batch_size=4)
    assert out.labels is None
    for i in range(6):
        g = torch.Generator().manual_seed(image_seed(5, i))
        y = torch.multinomial(class_frequencies(prior), 1, generator=g)
        assert int(y) == 3
        want = sample_codes(prior.model, 1, labels=y, generator=[g])
        assert torch.equal(out.codes[i], want[0]), i
    assert torch.equal(sample(prior, vqvae, 6, seed=5, batch_size=6).codes, out.codes)
    null = sample(prior, vqvae, 6, seed=5, unconditional="null")
    g = [torch.Generator().manual_seed(image_seed(5, i)) for i in range(6)]
    assert torch.equal(null.codes, sample_codes(prior.model, 6, labels=None, generator=g))
    assert not torch.equal(null.codes, out.codes)


def test_class_frequencies_fall_back_to_uniform(prior_run: Path):
    from vqgen.pipeline.generate import class_frequencies

    prior = load_prior(prior_run / "last.ckpt")
    k = prior.model.num_classes
    for bad in ((), (1,) * (k + 1), (-1,) + (1,) * (k - 1), (0,) * k):
        prior.hparams.class_counts = bad
        torch.testing.assert_close(class_frequencies(prior), torch.full((k,), 1.0 / k))
