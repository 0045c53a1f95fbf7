"""VQ-VAE shapes, the Lightning module (fast_dev_run, whole-epoch validation metrics), the
checkpoint round trip and the safe checkpoint reader; the package import direction."""

from __future__ import annotations

import math
import os
import pickle
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from vqgen.stage1_vqvae.data import VQDataModule, build_dataset
from vqgen.stage1_vqvae.lit import PRESETS, LitVQVAE, load_vqvae
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.runtime.checkpoint import CHECKPOINT_FORMAT, CheckpointError, read_checkpoint


def tiny_vqvae(**kw) -> VQVAE:
    args = dict(hidden=8, res_hidden=4, num_res=1, code_dim=4, num_codes=16)
    args.update(kw)
    return VQVAE(**args)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "channels, size, downsample, grid",
    [
        (1, (28, 28), 4, (7, 7)),
        (3, (32, 32), 4, (8, 8)),
        (1, (28, 56), 4, (7, 14)),
        (3, (56, 24), 4, (14, 6)),
        (1, (32, 32), 8, (4, 4)),
        (3, (56, 40), 8, (7, 5)),
        (1, (16, 16), 2, (8, 8)),
    ],
)
def test_encode_decode_shapes_and_range(channels, size, downsample, grid):
    model = tiny_vqvae(in_channels=channels, image_size=size, downsample=downsample).eval()
    assert model.code_shape == grid
    images = torch.rand(3, channels, *size)
    codes = model.encode(images)
    assert codes.shape == (3, *grid) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    out = model.decode_codes(codes)
    assert out.shape == (3, channels, *size) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    recon, fwd_codes, losses = model(images)
    assert recon.shape == images.shape and torch.equal(fwd_codes, codes)
    assert set(losses) >= {"commitment_loss", "codebook_loss", "loss"}


def test_decode_codes_clamps_to_unit_range():
    model = tiny_vqvae().eval()
    with torch.no_grad():  # make the decoder output far outside [0, 1]
        model.quantizer.codebook.mul_(0).add_(torch.randn_like(model.quantizer.codebook) * 50)
    out = model.decode_codes(torch.randint(0, 16, (4, 7, 7)))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


@pytest.mark.parametrize(
    "size, downsample", [((30, 28), 4), ((28, 30), 4), ((28, 28), 8), ((36, 36), 8)]
)
def test_image_size_not_divisible_names_the_factor(size, downsample):
    with pytest.raises(ValueError, match=rf"divisible by the down-sampling factor {downsample}"):
        tiny_vqvae(image_size=size, downsample=downsample)


@pytest.mark.parametrize("downsample", [0, 1, 3, 6, -4])
def test_downsample_must_be_a_power_of_two(downsample):
    with pytest.raises(ValueError, match="power of two"):
        tiny_vqvae(image_size=(24, 24), downsample=downsample)


def test_encode_changes_no_state_in_train_mode():
    model = tiny_vqvae().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode(torch.rand(4, 1, 28, 28))
    model.decode_codes(torch.randint(0, 16, (2, 7, 7)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_presets_give_the_documented_grids():
    for name, grid in (("mnist", (7, 7)), ("cifar", (8, 8))):
        p = PRESETS[name]
        h, w = p["image_size"]
        assert (h // p["downsample"], w // p["downsample"]) == grid
        lit = LitVQVAE(**{k: v for k, v in p.items() if k != "max_epochs"})
        assert lit.code_shape == grid and lit.num_codes == p["num_codes"]


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_loads_with_weights_only_and_is_stamped(tiny_vqvae_run: Path):
    ckpt = torch.load(tiny_vqvae_run / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["vqgen"]["kind"] == "vqvae"
    assert ckpt["vqgen"]["format_version"] == CHECKPOINT_FORMAT
    hp = ckpt["hyper_parameters"]
    assert hp["num_codes"] == 32 and hp["code_dim"] == 8 and tuple(hp["image_size"]) == (28, 28)
    assert hp["num_classes"] == 10 and len(hp["class_names"]) == 10
    # every init argument is a plain value
    plain = (int, float, str, bool, tuple, list, type(None))
    assert all(isinstance(v, plain) for v in hp.values()), hp


def test_load_from_checkpoint_with_no_extra_arguments(tiny_vqvae_run: Path):
    path = tiny_vqvae_run / "last.ckpt"
    lit = LitVQVAE.load_from_checkpoint(path, map_location="cpu").eval()
    ref = load_vqvae(path)
    assert lit.code_shape == ref.code_shape == (7, 7) and lit.num_codes == 32
    images = torch.rand(5, 1, 28, 28)
    assert torch.equal(lit.model.encode(images), ref.model.encode(images))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, lit.state_dict()[k]), k


def test_load_vqvae_round_trip_gives_identical_codes(tiny_vqvae_run: Path, tmp_path: Path):
    lit = load_vqvae(tiny_vqvae_run / "last.ckpt")
    assert not lit.training and lit.checkpoint_path.endswith("last.ckpt")
    images = torch.rand(6, 1, 28, 28)
    codes = lit.model.encode(images)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(lit)
    path = tmp_path / "again.ckpt"
    trainer.save_checkpoint(path)
    again = load_vqvae(path)
    assert torch.equal(again.model.encode(images), codes)
    assert torch.equal(again.model.decode_codes(codes), lit.model.decode_codes(codes))
    # the checkpoint carries the whole data description too
    assert again.hparams.data == "mnist5k" and tuple(again.hparams.image_size) == (28, 28)


def test_fast_dev_run_on_cpu_and_checkpoint_round_trip(tmp_path: Path):
    lit = LitVQVAE(hidden=8, res_hidden=4, num_res=1, code_dim=4, num_codes=16, batch_size=16)
    dm = VQDataModule("mnist5k", batch_size=16)
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(lit, datamodule=dm)
    assert trainer.state.finished and trainer.global_step == 1
    m = trainer.callback_metrics
    for key in ("train/loss", "val/recon_loss", "val/psnr", "val/perplexity", "val/codebook_usage"):
        assert key in m and math.isfinite(float(m[key])), key
    assert 0 < float(m["val/codebook_usage"]) <= 1
    assert 1 <= float(m["val/perplexity"]) <= 16 + 1e-3
    assert not bool(lit.model.quantizer.kmeans_pending)  # k-means ran on the first batch
    # round trip: the saved checkpoint alone rebuilds the same model
    path = tmp_path / "dev.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["vqgen"]["kind"] == "vqvae"
    loaded = load_vqvae(path)
    lit.eval()
    images = torch.rand(8, 1, 28, 28)
    assert torch.equal(loaded.model.encode(images), lit.model.encode(images))
    for k, v in lit.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    again = LitVQVAE.load_from_checkpoint(path, map_location="cpu").eval()
    assert torch.equal(again.model.encode(images), lit.model.encode(images))


def test_validation_metrics_cover_the_whole_epoch(tiny_vqvae_run: Path):
    """Usage and PSNR are over every validation batch, not the last one or a mean of batches."""
    lit = load_vqvae(tiny_vqvae_run / "last.ckpt")
    ds = build_dataset("mnist5k", "val")
    sub = Subset(ds, range(70))  # 5 batches of 16, the last one ragged
    loader = DataLoader(sub, batch_size=16)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    (metrics,) = trainer.validate(lit, dataloaders=loader, verbose=False)
    images = torch.stack([sub[i][0] for i in range(len(sub))])
    codes = lit.model.encode(images)
    recon = lit.model.decode_codes(codes)
    mse = float(((recon - images) ** 2).mean())
    counts = torch.bincount(codes.flatten(), minlength=32).double()
    p = counts / counts.sum()
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    assert metrics["val/codebook_usage"] == pytest.approx(int((counts > 0).sum()) / 32)
    assert metrics["val/recon_loss"] == pytest.approx(mse, rel=1e-4)
    assert metrics["val/psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-4)
    assert metrics["val/perplexity"] == pytest.approx(perplexity, rel=1e-4)


# --------------------------------------------------------------------------- bad checkpoints


def _truncated(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_says_truncated(tiny_vqvae_run: Path, tmp_path: Path, fraction):
    bad = _truncated(tiny_vqvae_run / "last.ckpt", tmp_path / "cut.ckpt", fraction)
    with pytest.raises(CheckpointError) as e:
        load_vqvae(bad)
    msg = str(e.value)
    assert str(bad) in msg and "\n" not in msg
    assert "truncated" in msg.replace(str(bad), "<path>"), msg  # (the tmp path says it too)


class _Custom:
    def __init__(self) -> None:
        self.weights = [1.0, 2.0]


class _Evil:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_random_pickle_is_refused(tmp_path: Path):
    path = tmp_path / "custom.ckpt"
    path.write_bytes(pickle.dumps(_Custom()))
    with pytest.raises(CheckpointError, match="safe loader|not a"):
        load_vqvae(path)


@pytest.mark.parametrize("wrap", ["bare", "torch_save"])
def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path: Path, wrap: str):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    if wrap == "bare":
        path.write_bytes(pickle.dumps(_Evil(marker)))
    else:  # a real zip checkpoint with the payload inside the state dict
        torch.save({"state_dict": {"x": _Evil(marker)}, "vqgen": {"kind": "vqvae"}}, path)
    with pytest.raises(CheckpointError):
        load_vqvae(path)
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world, not a checkpoint\n", bytes(range(256)) * 4, b"PK\x03\x04" + b"\0" * 64],
    ids=["empty", "text", "binary", "zip-magic"],
)
def test_garbage_files_raise_checkpoint_error(tmp_path: Path, content: bytes):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path, "vqvae")
    assert str(path) in str(e.value)


def _edited(tiny_vqvae_run: Path, tmp_path: Path, edit) -> Path:
    ckpt = torch.load(tiny_vqvae_run / "last.ckpt", map_location="cpu", weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    return path


def test_prior_checkpoint_is_refused_as_a_prior(tiny_vqvae_run: Path, tmp_path: Path):
    path = _edited(tiny_vqvae_run, tmp_path, lambda c: c["vqgen"].__setitem__("kind", "prior"))
    with pytest.raises(CheckpointError, match="is a prior checkpoint"):
        load_vqvae(path)
    assert read_checkpoint(path, "prior")["vqgen"]["kind"] == "prior"  # fine where a prior belongs


def test_newer_format_version_is_refused(tiny_vqvae_run: Path, tmp_path: Path):
    path = _edited(tiny_vqvae_run, tmp_path,
                   lambda c: c["vqgen"].__setitem__("format_version", CHECKPOINT_FORMAT + 1))
    with pytest.raises(CheckpointError, match="newer than this vqgen"):
        load_vqvae(path)


def test_unstamped_lightning_checkpoint_is_refused(tiny_vqvae_run: Path, tmp_path: Path):
    path = _edited(tiny_vqvae_run, tmp_path, lambda c: c.pop("vqgen"))
    with pytest.raises(CheckpointError, match="not a vqgen checkpoint"):
        load_vqvae(path)


def test_weights_that_do_not_fit_the_hparams_raise_checkpoint_error(tiny_vqvae_run, tmp_path):
    path = _edited(tiny_vqvae_run, tmp_path,
                   lambda c: c["hyper_parameters"].__setitem__("num_codes", 64))
    with pytest.raises(CheckpointError) as e:
        load_vqvae(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_checkpoint_and_folder(tiny_vqvae_run: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vqvae(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        load_vqvae(tiny_vqvae_run)


def test_a_copied_checkpoint_still_loads(tiny_vqvae_run: Path, tmp_path: Path):
    dst = tmp_path / "copy.ckpt"
    shutil.copy(tiny_vqvae_run / "last.ckpt", dst)
    assert load_vqvae(dst).num_codes == 32
