"""``vqgen serve`` without a browser: the verb's checks, the page's back end
(``pipeline.serve.serving.Server``) on bad uploads, and the codec baselines."""

from __future__ import annotations

import importlib.util
import io
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_cli_stage1 import assert_usage_error, run
from vqgen.pipeline.cli import main
from vqgen.pipeline.codec.baselines import lossy_at_psnr, png_baseline, psnr_u8
from vqgen.stage1_vqvae.runtime.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_help_does_not_import_gradio():
    code = ("import sys; from vqgen.pipeline.cli import build_parser; p = build_parser(); "
            "p.parse_args(['serve', '--prior', 'x.ckpt']); "
            "print('gradio' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_serve_refuses_a_taken_port_and_a_missing_prior(tiny_prior_run, capsys):
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("Gradio (the app extra) is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, _, err = run(capsys, "serve", "--prior", tiny_prior_run / "last.ckpt", "--port", port)
        assert_usage_error(rc, err, "serve", f"cannot listen on 127.0.0.1:{port}")
    rc, _, err = run(capsys, "serve", "--prior", "nope.ckpt")
    assert_usage_error(rc, err, "serve", "--prior nope.ckpt does not exist")
    for bad in ("0", "inf", "nan"):  # inf was accepted: no upload limit at all
        rc, _, err = run(capsys, "serve", "--prior", tiny_prior_run / "last.ckpt",
                         "--max-upload-mb", bad)
        assert_usage_error(rc, err, "serve", "--max-upload-mb", f"'{bad}'", "finite number > 0")


@pytest.fixture(scope="module")
def server(tiny_prior_run, tmp_path_factory):
    from vqgen.pipeline.serve.serving import Server

    return Server(tiny_prior_run / "last.ckpt", None, tmp_path_factory.mktemp("work"),
                  max_upload_mb=0.01)


def test_uploads_are_checked(server, tmp_path):
    outside = tmp_path / "a.png"
    Image.new("L", (28, 28)).save(outside)
    with pytest.raises(UserError, match="not an upload of this server"):
        server.load_image(outside)
    big = server.new_folder("upload") / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200), np.uint8)).save(big)
    with pytest.raises(UserError, match="over the 0.01 MB upload limit"):
        server.load_image(big)
    text = server.new_folder("upload") / "notes.png"
    text.write_text("hello")
    with pytest.raises(UserError, match=r"^notes.png is not an image") as e:
        server.compress([text])
    assert str(server.work) not in str(e.value)


def test_a_vqz_from_other_checkpoints_is_refused(server, tiny_prior_run, tmp_path):
    """Same weights, another checkpoint file: the .vqz names the file it was made with."""
    from vqgen.pipeline.serve.serving import Server

    img = server.new_folder("upload") / "x.png"
    Image.new("L", (28, 28), 255).save(img)
    vqz = server.compress([img]).extra["vqz"]
    assert server.decompress(vqz).images  # round trip with its own checkpoints
    other = tmp_path / "other.ckpt"
    ckpt = torch.load(tiny_prior_run / "last.ckpt", map_location="cpu", weights_only=False)
    ckpt["note"] = "a different file"
    torch.save(ckpt, other)
    second = Server(other, None, tmp_path / "work2")
    upload = second.new_folder("upload") / "x.vqz"
    upload.write_bytes(vqz.read_bytes())
    with pytest.raises(UserError, match="prior"):
        second.decompress(upload)


def test_sample_result_folders_are_independent(server):
    a = server.sample("1", 4, seed=0)
    b = server.sample("1", 4, seed=1)
    assert a.folder != b.folder and a.images[0].read_bytes() != b.images[0].read_bytes()
    assert "class 1, seed 0" in a.status


def test_baselines_meet_the_target_psnr():
    rng = np.random.default_rng(0)
    u8 = (np.clip(rng.normal(128, 40, (28, 28, 1)), 0, 255)).astype(np.uint8)
    png = png_baseline(u8)
    buf = io.BytesIO()
    Image.fromarray(u8[..., 0]).save(buf, format="PNG", optimize=True)
    assert png.bits == 8 * buf.tell()
    low, high = lossy_at_psnr(u8, "jpeg", 20.0), lossy_at_psnr(u8, "jpeg", 30.0)
    assert low.psnr_db >= 20 and high.psnr_db >= 30 and low.bits < high.bits
    impossible = lossy_at_psnr(u8, "webp", 200.0)
    assert impossible.bits is None and impossible.psnr_db < 200
    assert psnr_u8(u8, u8) > 100


def test_decompress_keeps_the_folders_of_the_names(server, tiny_prior_run, tmp_path, capsys):
    """0/d.png and 9/d.png are two images: both come back, at their own paths."""
    from tests.test_cli_stage1 import run
    from vqgen.stage1_vqvae.data import build_dataset
    from vqgen.stage1_vqvae.runtime.grid import save_png

    ds = build_dataset("mnist5k", "val")
    src = tmp_path / "digits"
    for i, cls in enumerate(["0", "9"]):
        (src / cls).mkdir(parents=True)
        save_png(ds[i][0], src / cls / "d.png")
    vqz = tmp_path / "d.vqz"
    rc, _, err = run(capsys, "compress", "--prior", tiny_prior_run / "last.ckpt", src,
                     "--device", "cpu", "--out", vqz)
    assert rc == 0, err
    upload = server.new_folder("upload") / "d.vqz"
    upload.write_bytes(vqz.read_bytes())
    res = server.decompress(upload)
    decoded = [Path(f) for f in res.images]
    assert sorted(f.relative_to(decoded[0].parent.parent).as_posix() for f in decoded) == [
        "0/d.png", "9/d.png"]
    assert decoded[0].read_bytes() != decoded[1].read_bytes()


def test_the_page_samples_with_the_cli_defaults_and_switches_models(tiny_prior_run, tmp_path):
    """With a class the Sample tab's defaults are `vqgen sample --class`'s (its bytes), with
    no class 1 / 1; a second model is loaded when picked, with its card's name and classes."""
    from vqgen.pipeline import defaults as D
    from vqgen.pipeline.serve.serving import NO_CLASS, Server
    from vqgen.stage1_vqvae.runtime.pretrained import shipped_models

    ckpt = tiny_prior_run / "last.ckpt"
    others = {n: n for n in shipped_models()}
    server = Server(ckpt, None, tmp_path / "work", others=others)
    assert server.model_choices()[0] == "run/last.ckpt" and set(others) <= set(server.model_choices())
    assert server.sample_defaults("1") == (D.SAMPLE_GUIDANCE, D.SAMPLE_TEMPERATURE)
    assert server.sample_defaults(NO_CLASS) == (1.0, 1.0)
    shown = server.sample("1", 4, seed=5)
    assert main(["sample", "--prior", str(ckpt), "--class", "1", "--num", "4", "--seed", "5",
                 "--device", "cpu", "--out", str(tmp_path / "cli")]) == 0
    assert [p.read_bytes() for p in shown.images] == [
        (tmp_path / "cli" / f"{i:06d}.png").read_bytes() for i in range(4)]
    if "mnist" in others:
        server.use("mnist")
        assert server.title().startswith("mnist · trained on mnist5k")
        assert "## Measured" in server.model_card().status  # the shipped card
        assert server.sample("3", 2, seed=0).images
    server.use(None)
    assert server.title().startswith("run/last.ckpt · trained on mnist5k")
    with pytest.raises(UserError, match="no model 'nope' here"):
        server.use("nope")
