"""Pretrained folders (``vqgen export``, ``save_pretrained`` / ``from_pretrained``), the
shipped models, names on ``--prior`` / ``--vqvae``, and :class:`vqgen.Pipeline`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgen.pipeline.api import Pipeline, python_message
from vqgen.pipeline.cli import main
from vqgen.pipeline.generate import MismatchError, load_pair
from vqgen.stage1_vqvae.lit import LitVQVAE, load_vqvae
from vqgen.stage1_vqvae.runtime.checkpoint import CheckpointError, file_sha256
from vqgen.stage1_vqvae.runtime.errors import MissingInputError, UserError
from vqgen.stage1_vqvae.runtime.pretrained import (
    CONFIG,
    WEIGHTS,
    resolve_model,
    shipped_dir,
    shipped_models,
)
from vqgen.stage2_prior.lit import LitPrior, load_prior


@pytest.fixture(scope="module")
def pair(tiny_prior_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vqgen export`` of the session's tiny prior run (with the VQ-VAE it records)."""
    out = tmp_path_factory.mktemp("export") / "tiny-pair"
    assert main(["export", str(tiny_prior_run / "last.ckpt"), "--out", str(out), "--name", "tiny",
                 "--trained-on", "mnist5k, 5 batches", "--device", "cpu"]) == 0
    return out


def _models(path) -> tuple[LitPrior, LitVQVAE]:
    return load_pair(path)


def test_export_writes_the_folder_format_and_keeps_the_sha256_link(pair: Path, tiny_prior_run: Path):
    config = json.loads((pair / CONFIG).read_text())
    assert (config["kind"], config["vqvae"], config["prior"]) == ("pair", "vqvae", "prior")
    assert config["name"] == "tiny"
    vq = json.loads((pair / "vqvae" / CONFIG).read_text())
    pr = json.loads((pair / "prior" / CONFIG).read_text())
    assert vq["sha256"] == file_sha256(pair / "vqvae" / WEIGHTS)
    assert pr["sha256"] == file_sha256(pair / "prior" / WEIGHTS)
    # the prior names its VQ-VAE by that folder's weights, and the run it came from is kept
    assert pr["hyper_parameters"]["vqvae_sha256"] == vq["sha256"]
    assert pr["hyper_parameters"]["vqvae_checkpoint"] == "../vqvae"
    run_prior = load_prior(tiny_prior_run / "last.ckpt")
    assert vq["source"]["sha256"] == run_prior.hparams.vqvae_sha256
    assert pr["training"]["steps"] > 0 and "seconds" in pr["training"]
    card = (pair / "README.md").read_text()
    assert "# tiny" in card and "mnist5k, 5 batches" in card and "Pipeline.from_pretrained" in card


def test_exported_pair_holds_the_same_weights_and_samples_the_same(pair: Path, tiny_prior_run: Path):
    prior0, vq0 = _models(tiny_prior_run / "last.ckpt")
    prior1, vq1 = _models(pair)
    for a, b in ((prior0.model, prior1.model), (vq0.model, vq1.model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert prior1.ema is None and dict(prior1.hparams) == {
        **dict(prior0.hparams), "vqvae_checkpoint": str((pair / "vqvae").resolve()),
        "vqvae_sha256": prior1.hparams.vqvae_sha256}
    a = Pipeline(prior0, vq0).sample(6, classes=1, seed=3)
    b = Pipeline.from_pretrained(pair, device="cpu").sample(6, classes=1, seed=3)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.images, b.images)


def test_every_verb_takes_the_folder_and_its_parts(pair: Path, tmp_path: Path):
    assert main(["sample", "--prior", str(pair), "--num", "4", "--class", "2", "--device", "cpu",
                 "--out", str(tmp_path / "s")]) == 0
    meta = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert (meta["guidance"], meta["temperature"]) == (2.0, 0.9)
    assert main(["sample", "--prior", str(pair / "prior"), "--vqvae", str(pair / "vqvae"),
                 "--num", "2", "--device", "cpu", "--out", str(tmp_path / "s2")]) == 0
    assert main(["reconstruct", "--vqvae", str(pair), "--data", "mnist5k", "--split", "val",
                 "--out", str(tmp_path / "r.png")]) == 0
    pngs = [str(tmp_path / "s" / f"00000{i}.png") for i in range(3)]
    assert main(["compress", "--prior", str(pair), *pngs, "--out", str(tmp_path / "v.vqz")]) == 0
    assert main(["decompress", str(tmp_path / "v.vqz"), "--out", str(tmp_path / "dec")]) == 0
    assert len(list((tmp_path / "dec").glob("*.png"))) == 3


def test_a_run_prior_fits_the_exported_vqvae_and_a_foreign_one_is_refused(
        pair: Path, tiny_prior_run: Path, tmp_path: Path):
    # the run's prior records the run's VQ-VAE checkpoint; its export is the same weights
    prior, vq = load_pair(tiny_prior_run / "last.ckpt", pair / "vqvae")
    assert vq.checkpoint_path == str(pair / "vqvae")
    other = tmp_path / "other"
    shutil.copytree(pair, other)
    lit = load_vqvae(other / "vqvae")
    with torch.no_grad():
        lit.model.quantizer.codebook.add_(0.5)  # other weights, same sizes
    lit.save_pretrained(other / "vqvae")
    with pytest.raises(MismatchError, match="is not the VQ-VAE the prior's codes were made with"):
        load_pair(pair / "prior", other / "vqvae")


def test_damaged_or_edited_folders_are_refused_in_one_line(pair: Path, tmp_path: Path):
    bad = tmp_path / "bad"
    shutil.copytree(pair, bad)
    w = bad / "prior" / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged or was edited"):
        load_prior(bad)
    # a config whose sizes disagree with the weights is refused before anything is built
    shutil.rmtree(bad)
    shutil.copytree(pair, bad)
    cfg_path = bad / "prior" / CONFIG
    cfg = json.loads(cfg_path.read_text())
    cfg["hyper_parameters"]["num_layers"] = 10**6
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit its weights.*num_layers"):
        load_prior(bad)
    cfg["hyper_parameters"]["num_layers"] = json.loads((pair / "prior" / CONFIG).read_text())[
        "hyper_parameters"]["num_layers"]
    cfg["hyper_parameters"]["surprise"] = 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown hyper-parameter surprise"):
        load_prior(bad)
    # a prior folder given as the VQ-VAE names the right option
    with pytest.raises(CheckpointError, match="pretrained prior, expected a vqvae; pass it as --prior"):
        load_vqvae(pair / "prior")


def test_weights_load_strictly(pair: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    from vqgen.stage1_vqvae.runtime.checkpoint import file_sha256 as sha

    for change in ("extra", "missing"):
        bad = tmp_path / change
        shutil.copytree(pair / "vqvae", bad)
        state = load_file(str(bad / WEIGHTS))
        if change == "extra":
            state["stray.weight"] = torch.zeros(1)
        else:
            state.pop(sorted(k for k in state if k.startswith("decoder."))[-1])
        save_file(state, str(bad / WEIGHTS))
        cfg = json.loads((bad / CONFIG).read_text())
        cfg["sha256"] = sha(bad / WEIGHTS)  # a consistent folder, only the keys are wrong
        (bad / CONFIG).write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match="(Unexpected|Missing) key"):
            load_vqvae(bad)


def test_names_local_paths_win_and_unknown_names_list_the_shipped(pair: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingInputError) as e:
        resolve_model("nosuchmodel")
    msg = str(e.value)
    assert "\n" not in msg and "shipped:" in msg
    for name in shipped_models():
        assert name in msg
    # a folder called like a shipped model, in the working folder, is what loads
    shutil.copytree(pair, tmp_path / "mnist")
    assert resolve_model("mnist") == Path("mnist")
    assert Path(load_prior("mnist").checkpoint_path).resolve() == (tmp_path / "mnist" / "prior").resolve()
    with pytest.raises(UserError, match="not a Hub model id"):
        resolve_model("hf://not an id")
    # a path that does not exist is named as such (not looked up as a name)
    with pytest.raises(MissingInputError, match="does not exist"):
        load_prior("runs/none/last.ckpt")


def test_pipeline_defaults_are_the_cli_defaults(pair: Path, tmp_path: Path):
    """`vqgen sample --class` and Pipeline.sample(classes=) draw the same images with their
    defaults; so do the unconditional ones (guidance and temperature differ by class)."""
    from PIL import Image

    from vqgen.pipeline import defaults as D
    from vqgen.pipeline.cli import build_parser

    pipe = Pipeline.from_pretrained(pair, device="cpu")
    for extra, classes in ((["--class", "3"], 3), ([], None)):
        out = tmp_path / f"s{classes}"
        assert main(["sample", "--prior", str(pair), "--num", "5", *extra, "--device", "cpu",
                     "--out", str(out)]) == 0
        res = pipe.sample(5, classes=classes)
        assert np.array_equal(np.load(out / "codes.npy").astype(np.int64), res.codes.numpy())
        png = np.asarray(Image.open(out / "000002.png"))
        assert np.array_equal(png, np.asarray(res.pil()[2]))
    args = build_parser().parse_args(["sample", "--prior", "x", "--out", "y"])
    assert args.batch_size == D.SAMPLE_BATCH_SIZE
    inp = build_parser().parse_args(["inpaint", "--prior", "x", "--out", "y", "--box", "0,0,1,1"])
    rep = build_parser().parse_args(["repair", "--prior", "x", "--out", "y"])
    assert (inp.num, inp.grow, inp.feather, rep.num) == (D.INPAINT_NUM, D.INPAINT_GROW,
                                                         D.INPAINT_FEATHER, D.REPAIR_NUM)


def test_pipeline_methods_and_python_errors(pair: Path, tmp_path: Path):
    from PIL import Image

    pipe = Pipeline.from_pretrained(str(pair), device="cpu")
    assert pipe.card["name"] == "tiny" and pipe.to("cpu") is pipe
    x = pipe.sample(3, classes=["1", 2, 0], seed=1)
    assert x.labels.tolist() == [1, 2, 0] and x.images.shape == (3, 1, 28, 28)
    paths = x.save(tmp_path / "imgs")
    codes = pipe.encode(x.images)
    # a PIL image, a path and a tensor of the same picture encode the same
    same = pipe.encode([x.pil()[0], paths[0], x.images[0]])
    assert torch.equal(same, codes[[0, 0, 0]])
    assert torch.equal(pipe.decode(codes).images, pipe.decode(codes).images)
    assert pipe.decompress(pipe.compress(x.images, classes=[1, 2, 0])).codes.tolist() == codes.tolist()
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[14:] = True
    done = pipe.inpaint(paths[:2], mask, num=2, seed=0)
    assert done.images.shape == (2, 2, 1, 28, 28) and done.bits.shape == (2, 2)
    assert torch.equal(done.codes[:, :, :3], codes[:2, None, :3].expand(2, 2, 3, 7))  # top kept
    fixed = pipe.repair(x.images[:1], fraction=0.2)
    assert fixed.surprisal.shape == (1, 7, 7) and len(fixed.pil()[0]) == 1
    Image.open(fixed.save(tmp_path / "fix")[0]).verify()
    # errors name Python parameters, in one line
    for call, want in ((lambda: pipe.sample(0), "num=0"), (lambda: pipe.sample(2, top_k=-1), "top_k=-1"),
                       (lambda: pipe.sample(2, classes="nope"), "nope"),
                       (lambda: pipe.sample(2, guidance=2.0), "guidance needs a class"),
                       (lambda: pipe.encode(torch.zeros(2, 3, 28, 28)), "expected (N, 1, 28, 28)")):
        with pytest.raises(UserError) as e:
            call()
        assert want in str(e.value) and "--" not in str(e.value), str(e.value)
    assert python_message("--num 0 must be positive; see --top-k") == "num=0 must be positive; see top_k"


def test_export_refuses_to_clobber_and_exports_a_vqvae_alone(pair: Path, tiny_vqvae_run: Path,
                                                             tmp_path: Path, capsys):
    assert main(["export", str(tiny_vqvae_run / "last.ckpt"), "--out", str(pair)]) == 2
    assert "exists" in capsys.readouterr().err
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert main(["export", str(tiny_vqvae_run), "--out", str(user), "--overwrite"]) == 2
    assert (user / "notes.txt").read_text() == "keep"
    out = tmp_path / "vq"
    assert main(["export", str(tiny_vqvae_run), "--out", str(out)]) == 0  # best.ckpt of the run
    assert json.loads((out / CONFIG).read_text())["kind"] == "vqvae"
    a, b = load_vqvae(tiny_vqvae_run / "best.ckpt"), load_vqvae(out)
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_shipped_models_load_offline_check_their_sha256_and_sample(name: str,
                                                                    monkeypatch: pytest.MonkeyPatch):
    if name not in shipped_models():
        pytest.fail(f"the shipped model {name} is missing from {shipped_dir()}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = shipped_dir() / name
    for part in ("vqvae", "prior"):
        cfg = json.loads((folder / part / CONFIG).read_text())
        assert file_sha256(folder / part / WEIGHTS) == cfg["sha256"]
    pr = json.loads((folder / "prior" / CONFIG).read_text())
    vq_sha = json.loads((folder / "vqvae" / CONFIG).read_text())["sha256"]
    assert pr["hyper_parameters"]["vqvae_sha256"] == vq_sha
    pipe = Pipeline.from_pretrained(name, device="cpu")
    assert pipe.card["name"] == name and len(pipe.class_names) == 10
    out = pipe.sample(2, classes=pipe.class_names[3], seed=0)
    assert out.images.shape == (2, *pipe.image_shape) and 0 <= float(out.images.min())
    assert float(out.images.max()) <= 1
