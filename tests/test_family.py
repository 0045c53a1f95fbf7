"""The stage-one family through the trainer: the VQ-GAN (no adversarial gradient and no
discriminator step before --disc-start, exact resume after it started, an adversarial term that
really reaches the generator) and the Gaussian VAE (closed-form KL, no codes, sampling from
N(0, I)); every checkpoint rebuilt by load_vqvae alone, and the CLI on each."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import tiny_train_argv
from tests.test_faults import TINY_DATA, TINY_VQ, Crash, _targs
from vqgen.pipeline.cli import main
from vqgen.stage1_vqvae import gan
from vqgen.stage1_vqvae.gaussian import kl_divergence
from vqgen.stage1_vqvae.lit import LitGaussianVAE, LitVQGAN, LitVQVAE, load_vqvae
from vqgen.stage1_vqvae.train import train_vqvae

GAN = dict(gan=True, disc_width=8, perceptual="features")


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _train(out: Path, model_args: dict, **targs) -> dict:
    train_vqvae(out, model_args, data_args=TINY_DATA, trainer_args={**_targs(), **targs},
                write_codes=False)
    return _state(out / "last.ckpt")


def _same(a: dict, b: dict, prefix: str = "") -> list[str]:
    return [k for k in a if k.startswith(prefix) and not torch.equal(a[k], b[k])]


# ---------------------------------------------------------------- VQ-GAN: before the start


def test_before_disc_start_it_trains_exactly_as_the_vqvae(tmp_path: Path):
    """10 steps with the discriminator due at step 100: the generator's weights and EMA
    codebook are bit-identical to the plain VQ-VAE's (no adversarial or feature gradient),
    the discriminator equals its initialisation and its optimizer never stepped."""
    plain = _train(tmp_path / "plain", TINY_VQ)
    vqgan = _train(tmp_path / "gan", {**TINY_VQ, **GAN, "disc_start": 100})
    assert vqgan["global_step"] == plain["global_step"] == 10
    gen = {k: v for k, v in vqgan["state_dict"].items() if k.startswith("model.")}
    assert gen.keys() == plain["state_dict"].keys()
    assert not _same(gen, plain["state_dict"])
    pl.seed_everything(0, verbose=False)  # train_vqvae seeds, then builds the module
    fresh = LitVQGAN(**TINY_VQ, **GAN, disc_start=100, channels=1, image_size=(28, 28))
    init = {f"discriminator.{k}": v for k, v in fresh.discriminator.state_dict().items()}
    assert not _same(init, vqgan["state_dict"])
    assert vqgan["optimizer_states"][1]["state"] == {}  # Adam holds no step: never stepped
    assert len(vqgan["optimizer_states"][0]["state"]) > 0


# ---------------------------------------------------------------- VQ-GAN: exact resume


def test_resume_after_the_discriminator_started_is_bit_identical(tmp_path: Path):
    """Discriminator on from step 3; crash at step 7 (after the mid-epoch checkpoint at 6),
    resume: both optimizers, the scheduler, both networks and the codebook end bit-identical
    to an uninterrupted run."""
    args = {**TINY_VQ, **GAN, "disc_start": 3}
    straight = _train(tmp_path / "straight", args)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tmp_path / "crashed", args, callbacks=[Crash(7)])
    assert _state(tmp_path / "crashed" / "last.ckpt")["global_step"] == 6
    train_vqvae(tmp_path / "crashed", args, data_args=TINY_DATA, trainer_args=_targs(),
                resume=True, write_codes=False)
    resumed = _state(tmp_path / "crashed" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 10
    assert not _same(straight["state_dict"], resumed["state_dict"])
    assert any(k.startswith("discriminator.") for k in straight["state_dict"])
    assert len(straight["optimizer_states"]) == 2
    for oa, ob in zip(straight["optimizer_states"], resumed["optimizer_states"], strict=True):
        assert oa["state"].keys() == ob["state"].keys() and oa["state"]
        for sa, sb in zip(oa["state"].values(), ob["state"].values(), strict=True):
            for key in sa:
                assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    assert straight["lr_schedulers"] == resumed["lr_schedulers"]


# ---------------------------------------------------------------- VQ-GAN: the term is live


def test_the_adversarial_term_moves_the_generator_against_the_discriminator(tmp_path: Path):
    """From the same start, one step with the adversarial term (disc_weight 0.8) and one
    without (0): the discriminator after the step is the same in both (it saw the same
    images); judged by it, the generator that took the adversarial gradient has the lower
    generator loss -mean D(G(x)). Disconnect the term (detach the reconstruction on its path,
    drop the weight) and the two generators are equal, and this fails."""
    ckpts = _one_step_each(tmp_path, {"perceptual": "none"},
                           {"adv": {"disc_weight": 0.8}, "none": {"disc_weight": 0.0}})
    images = _val_images(64)
    disc = ckpts["adv"].discriminator.eval()
    with torch.no_grad():
        losses = {name: float(gan.hinge_g_loss(disc(lit.model(images)[0])[0]))
                  for name, lit in ckpts.items()}
    assert losses["adv"] < losses["none"], losses


def test_feature_matching_moves_the_generator_towards_the_originals_features(tmp_path: Path):
    """The term the default VQ-GAN gains from (README, "Three stage-one models"): from the
    same start, one step with feature matching and one without (no adversarial term in
    either): the discriminator after the step is the same in both; in its features, the
    reconstructions of the generator that took the feature gradient are the closer to the
    originals'. Drop or disconnect the term and the generators are equal: this fails."""
    ckpts = _one_step_each(tmp_path, {"disc_weight": 0.0},
                           {"features": {"perceptual": "features"}, "none": {"perceptual": "none"}})
    images = _val_images(64)
    disc = ckpts["features"].discriminator.eval()
    with torch.no_grad():
        real = disc(images)[1]
        losses = {name: float(gan.feature_matching_loss(disc(lit.model(images)[0])[1], real))
                  for name, lit in ckpts.items()}
    assert losses["features"] < losses["none"], losses


def _one_step_each(tmp_path: Path, shared: dict, variants: dict[str, dict]) -> dict:
    """One VQ-GAN training step per variant from the same start (discriminator on from step
    0) -> {name: loaded model}; checks the two discriminators took the same step (they saw
    the same images) and the two decoders did not."""
    common = {**TINY_VQ, "gan": True, "disc_width": 8, "disc_start": 0, "warmup_steps": 1,
              "lr": 1e-3, **shared}
    ckpts = {}
    for name, args in variants.items():
        _train(tmp_path / name, {**common, **args}, max_steps=1, checkpoint_every_steps=0)
        ckpts[name] = load_vqvae(tmp_path / name / "last.ckpt")
    a, b = (lit.state_dict() for lit in ckpts.values())
    assert not _same(a, b, "discriminator.")
    assert _same(a, b, "model.decoder.")
    return ckpts


def _val_images(n: int) -> torch.Tensor:
    from vqgen.stage1_vqvae.data import build_dataset

    ds = build_dataset("mnist5k", "val", channels=1, image_size=(28, 28))
    return torch.stack([ds[i][0] for i in range(n)])


# ---------------------------------------------------------------- Gaussian VAE


def test_gaussian_kl_equals_the_closed_form():
    torch.manual_seed(0)
    mean = torch.randn(3, 4, 5, 6) * 2
    logvar = torch.randn(3, 4, 5, 6)
    q = torch.distributions.Normal(mean.double(), (0.5 * logvar.double()).exp())
    p = torch.distributions.Normal(torch.zeros_like(q.loc), torch.ones_like(q.loc))
    want = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(kl_divergence(mean, logvar).double(), want, rtol=1e-5)
    # at the prior the divergence is exactly zero
    assert kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory: pytest.TempPathFactory, tiny_vqvae_run: Path) -> dict[str, Path]:
    """docs/stage-one-family.md's three commands on tiny settings: a VQ-GAN and a Gaussian VAE beside the
    session's tiny VQ-VAE."""
    root = tmp_path_factory.mktemp("family")
    runs = {"vq": tiny_vqvae_run}
    for name, extra in (("vqgan", ("--gan", "--disc-start", "2", "--disc-width", "8")),
                        ("vae", ("--bottleneck", "gaussian"))):
        assert main(tiny_train_argv(root / name, *extra)) == 0
        runs[name] = root / name
    return runs


@pytest.mark.parametrize(("size", "channels"), [((28, 28), 1), ((64, 64), 3)])
def test_default_discriminator_is_sized_by_the_image_and_recorded(size, channels):
    """disc_width / disc_layers 0 (the defaults) resolve by image size, the module is built
    with the resolved numbers and the hyper-parameters (so the checkpoint) hold them; an
    explicit width wins."""
    lit = LitVQGAN(gan=True, image_size=size, channels=channels)
    width, layers = gan.disc_width_for(size), gan.disc_layers_for(size)
    assert (lit.hparams.disc_width, lit.hparams.disc_layers) == (width, layers)
    assert lit.discriminator.blocks[0][0].out_channels == width
    assert len(lit.discriminator.blocks) == layers + 1
    assert LitVQGAN(gan=True, image_size=size, channels=channels,
                    disc_width=8).discriminator.blocks[0][0].out_channels == 8


def test_load_vqvae_rebuilds_each_from_the_checkpoint_alone(family_runs: dict[str, Path]):
    kinds = {name: type(load_vqvae(run / "last.ckpt")) for name, run in family_runs.items()}
    assert kinds == {"vq": LitVQVAE, "vqgan": LitVQGAN, "vae": LitGaussianVAE}
    vqgan = load_vqvae(family_runs["vqgan"] / "last.ckpt")
    assert vqgan.hparams.disc_layers == gan.disc_layers_for((28, 28))  # the resolved depth
    assert (family_runs["vqgan"] / "codes" / "val" / "meta.json").is_file()
    assert not (family_runs["vae"] / "codes").exists()  # no codes to write


def test_vqgan_checkpoint_works_downstream(family_runs: dict[str, Path], tmp_path: Path):
    ckpt = family_runs["vqgan"] / "last.ckpt"
    assert main(["encode", "--vqvae", str(ckpt), "--out", str(tmp_path / "codes"),
                 "--splits", "val", "--device", "cpu"]) == 0
    assert main(["train-prior", "--codes", str(family_runs["vqgan"] / "codes"), "--out",
                 str(tmp_path / "prior"), "--hidden", "8", "--num-layers", "2", "--head-hidden",
                 "8", "--max-epochs", "1", "--limit-train-batches", "2", "--limit-val-batches",
                 "1", "--accelerator", "cpu"]) == 0
    assert main(["sample", "--prior", str(tmp_path / "prior" / "last.ckpt"), "--num", "4",
                 "--out", str(tmp_path / "samples"), "--device", "cpu"]) == 0
    assert (tmp_path / "samples" / "codes.npy").is_file()


def test_gaussian_checkpoint_is_refused_for_codes_and_sampled_from_the_prior(
        family_runs: dict[str, Path], tmp_path: Path, capsys):
    ckpt = family_runs["vae"] / "last.ckpt"
    for argv in (["encode", "--vqvae", str(ckpt), "--out", str(tmp_path / "c")],
                 ["train-prior", "--codes", str(family_runs["vae"] / "codes"), "--out",
                  str(tmp_path / "p")]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Gaussian" in err and "no discrete codes" in err
        assert not (tmp_path / "c").exists() and not (tmp_path / "p").exists()
    out = tmp_path / "s"
    assert main(["sample", "--vqvae", str(ckpt), "--num", "6", "--seed", "3", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert len(list(out.glob("0*.png"))) == 6 and not (out / "codes.npy").exists()
    # the images are the decoder at z ~ N(0, I) drawn from the seed
    lit = load_vqvae(ckpt)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn((6, lit.model.code_dim, *lit.model.code_shape), generator=gen)
    want = lit.model.decode_latents(z)
    from PIL import Image
    got = torch.tensor(list(Image.open(out / "000002.png").getdata()), dtype=torch.float32)
    assert torch.allclose(got / 255, want[2].flatten(), atol=0.5 / 255 + 1e-6)


def test_flag_mistakes_are_one_line_errors(tmp_path: Path, capsys):
    for extra, words in ((("--disc-start", "5"), "add --gan"),
                         (("--gan", "--bottleneck", "gaussian"), "gaussian")):
        capsys.readouterr()
        assert main(tiny_train_argv(tmp_path / "r", *extra)) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "r").exists()


def test_vqgan_copy_resumes_through_the_cli(family_runs: dict[str, Path], tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(family_runs["vqgan"], run)
    assert main(tiny_train_argv(run, "--resume", max_epochs=2)) == 0
    assert _state(run / "last.ckpt")["global_step"] == 10


# ---------------------------------------------------------------- evaluate --compare


def test_sharpness_ratio_orders_blur_and_noise():
    from vqgen.pipeline import metrics as M
    from vqgen.pipeline.evaluation.compare import sharpness_ratio

    x = _val_images(32)
    assert sharpness_ratio(x, x) == pytest.approx(1.0)
    assert sharpness_ratio(M.box_blur3(x), x) < 0.7
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert sharpness_ratio(noisy, x) > 1.05  # clamping at 0 removes half the noise on black


def test_readme_compare_command(family_runs: dict[str, Path], tmp_path: Path, monkeypatch,
                                capsys):
    """`vqgen evaluate --vqvae VQGAN --compare VQ VAE --out report/` as the README shows it
    (a tiny scoring classifier): one table, one figure, consistent with the main report."""
    import json

    import vqgen.pipeline.evaluation.evaluate as evaluate_module
    from tests.test_evaluate import TINY_CLASSIFIER

    monkeypatch.setattr(evaluate_module, "CLASSIFIER_CONFIG", TINY_CLASSIFIER)
    out = tmp_path / "report"
    argv = ["evaluate", "--vqvae", str(family_runs["vqgan"] / "last.ckpt"), "--compare",
            str(family_runs["vq"] / "last.ckpt"), str(family_runs["vae"] / "last.ckpt"),
            "--out", str(out), "--device", "cpu", "--classifier-cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    rows = report["comparison"]["rows"]
    assert [r["kind"] for r in rows] == ["VQ-GAN", "VQ-VAE", "Gaussian VAE"]
    for r in rows:
        assert r["rfd"] is not None and r["rfd"] >= 0 and 0 < r["sharpness_ratio"]
        assert 0 < r["bits_per_dim"] < 8 and r["name"][:12] in printed
    # the main model's row and its stage-one section are two computations of one number
    assert rows[0]["psnr_db"] == pytest.approx(report["stage1"]["psnr_db"], abs=1e-6)
    assert rows[0]["codebook_usage"] == pytest.approx(report["stage1"]["codebook_usage"])
    assert rows[2]["codebook_usage"] is None
    # the VAE's own samples (z ~ N(0, I)) are scored beside its reconstructions (other
    # images: another distance); a VQ model's samples need a prior
    assert rows[0]["sample_fd"] is None and rows[1]["sample_fd"] is None
    assert rows[2]["sample_fd"] >= 0 and abs(rows[2]["sample_fd"] - rows[2]["rfd"]) > 1e-3
    assert (out / "comparison.png").is_file() and "side by side" in (out / "index.html").read_text()
    # a Gaussian VAE as the main model: no code-based section, still compared
    rep2 = tmp_path / "report2"
    assert main(["evaluate", "--vqvae", str(family_runs["vae"] / "last.ckpt"), "--compare",
                 str(family_runs["vq"] / "last.ckpt"), "--out", str(rep2), "--device", "cpu",
                 "--classifier-cache", str(tmp_path / "cache")]) == 0
    r2 = json.loads((rep2 / "metrics.json").read_text())
    assert r2["stage1"] is None and len(r2["comparison"]["rows"]) == 2
    assert r2["comparison"]["rows"][0]["psnr_db"] == pytest.approx(rows[2]["psnr_db"])
    assert r2["comparison"]["rows"][0]["sample_fd"] == pytest.approx(rows[2]["sample_fd"])


def test_each_kind_exports_and_loads_as_itself(family_runs: dict[str, Path], tmp_path: Path):
    """`vqgen export` of a VQ-VAE, a VQ-GAN and a Gaussian VAE run: the folder rebuilds the
    same class with the same network weights (strictly), and reconstructs the same."""
    from vqgen.stage1_vqvae.data import build_dataset

    images = torch.stack([build_dataset("mnist5k", "val")[i][0] for i in range(4)])
    for name, run in family_runs.items():
        out = tmp_path / name
        assert main(["export", str(run / "last.ckpt"), "--out", str(out)]) == 0
        a, b = load_vqvae(run / "last.ckpt"), load_vqvae(out)
        assert type(b) is type(a)
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        with torch.no_grad():
            assert torch.equal(a.model.reconstruct(images), b.model.reconstruct(images))
        assert type(type(a).from_pretrained(out)) is type(a)
