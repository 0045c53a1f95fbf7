"""Inputs built to hurt (issue 21): images with too many pixels, candidate counts beyond
memory, seeds out of range through the library and the page, dangling-symlink outputs,
interrupt advice, large sample grids and the page's error lines."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.test_cli_stage1 import assert_usage_error, run
from vqgen.stage1_vqvae.runtime.errors import UserError

HUGE = (13000, 13000)  # 169 M pixels: Pillow's own limit (179 M) lets it through


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """A real 13000x13000 PNG of a few KB (1-bit zeros compress to nothing)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", HUGE).save(path)
    assert path.stat().st_size < 200_000
    return path


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tiny_prior_run, huge_png,
                                                                  tmp_path, capsys):
    peak = _rss_kib()
    rc, _, err = run(capsys, "inpaint", "--prior", tiny_prior_run / "last.ckpt", "--image",
                     huge_png, "--box", "0,0,10,10", "--device", "cpu",
                     "--out", tmp_path / "o")
    assert_usage_error(rc, err, "inpaint", "13000x13000", "169 M pixels", "25 M-pixel limit")
    # decoding it as grey would take 169 MB, as RGB 507 MB
    assert _rss_kib() - peak < 100 * 1024
    assert not (tmp_path / "o").exists()


def test_a_mask_over_the_pixel_limit_is_refused(huge_png):
    from vqgen.pipeline.edit.masks import load_mask

    with pytest.raises(UserError, match="--mask .*huge.png is 13000x13000"):
        load_mask(huge_png, (28, 28))


def test_an_image_at_the_limit_still_loads(tmp_path, monkeypatch):
    import vqgen.stage1_vqvae.data.images as images

    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 100 * 100)
    Image.new("L", (100, 100), 255).save(tmp_path / "ok.png")
    Image.new("L", (101, 100), 255).save(tmp_path / "no.png")
    assert images.load_image(tmp_path / "ok.png", 1, (28, 28)).shape == (1, 28, 28)
    with pytest.raises(UserError, match="101x100"):
        images.load_image(tmp_path / "no.png", 1, (28, 28))


def test_the_pages_editor_refuses_a_huge_upload_in_one_line(huge_png, tmp_path):
    gr = pytest.importorskip("gradio")
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    from vqgen.pipeline.serve.app import limit_pixels

    editor = limit_pixels(gr.ImageEditor(type="pil", image_mode="RGBA", format="png"))
    Image.new("RGB", (40, 30), "white").save(tmp_path / "small.png")
    ok = editor.preprocess(EditorData(background=FileData(path=str(tmp_path / "small.png")),
                                      layers=[], composite=None))
    assert ok["background"].size == (40, 30)
    peak = _rss_kib()
    with pytest.raises(gr.Error, match="over 25 M pixels"):
        editor.preprocess(EditorData(background=FileData(path=str(huge_png)), layers=[],
                                     composite=None))
    assert _rss_kib() - peak < 100 * 1024


def test_inpaint_candidates_beyond_memory_are_refused_before_drawing(tiny_prior_run,
                                                                      monkeypatch):
    import vqgen.stage1_vqvae.runtime.memory as memory
    from vqgen.pipeline.edit.inpaint import inpaint
    from vqgen.pipeline.generate import load_pair

    prior, vqvae = load_pair(tiny_prior_run / "last.ckpt")
    monkeypatch.setattr(memory, "available_memory", lambda: 2**30)  # 1 GiB free
    images = torch.rand(1, 1, 28, 28)
    h, w = prior.code_shape
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 2:] = True
    with pytest.raises(UserError, match=r"--candidates 100,000 would need about .* GiB"):
        inpaint(prior, vqvae, images, mask, num=2, num_candidates=100_000)
    # a count that fits still runs under the same memory
    assert inpaint(prior, vqvae, images, mask, num=2, num_candidates=16).codes.shape[:2] == (1, 2)


def test_seeds_are_checked_by_the_library_the_page_and_the_cli(tiny_prior_run, tmp_path,
                                                                capsys):
    from vqgen.pipeline.edit.inpaint import inpaint
    from vqgen.pipeline.generate import load_pair, sample
    from vqgen.pipeline.serve.serving import Server

    prior, vqvae = load_pair(tiny_prior_run / "last.ckpt")
    for bad in (-1, 2**32, 2**63, 1.5):
        with pytest.raises(UserError, match="seed"):
            sample(prior, vqvae, 1, seed=bad)
        with pytest.raises(UserError, match="seed"):
            inpaint(prior, vqvae, torch.rand(1, 1, 28, 28),
                    torch.ones(prior.code_shape, dtype=torch.bool), num=1, seed=bad)
    (tmp_path / "work").mkdir()
    server = Server(tiny_prior_run / "last.ckpt", None, tmp_path / "work")
    with pytest.raises(UserError, match="seed=-1 must be in"):  # was "internal error"
        server.sample(None, 2, seed=-1)
    rc, _, err = run(capsys, "inpaint", "--prior", tiny_prior_run / "last.ckpt", "--data",
                     "mnist5k", "--index", "0", "--box", "0,0,10,10", "--seed", "-1",
                     "--out", tmp_path / "i")
    assert_usage_error(rc, err, "inpaint", "--seed", "must be in [0, 4294967295]")


def test_a_dangling_symlink_out_is_refused_before_any_work(tiny_prior_run, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    rc, out, err = run(capsys, "sample", "--prior", tiny_prior_run / "last.ckpt", "--num", "2",
                       "--device", "cpu", "--out", link)
    assert_usage_error(rc, err, "sample", "is a symlink to", "which does not exist")
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["link"]
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("verb, advice", [("inpaint", "nothing was written"),
                                          ("train-prior", "add --resume"),
                                          ("demo", "re-run the same command")])
def test_ctrl_c_advice_fits_the_verb(verb, advice, monkeypatch, capsys):
    import vqgen.pipeline.cli as cli

    parser = cli.build_parser()

    def interrupted(args):
        raise KeyboardInterrupt

    real = parser.parse_args

    def parse(argv):
        args = real(argv)
        args.func = interrupted
        return args

    monkeypatch.setattr(parser, "parse_args", parse)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    argv = {"inpaint": ["inpaint", "--prior", "p.ckpt", "--data", "mnist5k", "--index", "0",
                        "--box", "0,0,1,1", "--out", "o"],
            "train-prior": ["train-prior", "--codes", "c", "--out", "o"],
            "demo": ["demo", "--out", "d"]}[verb]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert f"vqgen {verb}: interrupted; " in err and advice in err


def test_large_sample_grids_are_laid_out_near_square(tiny_prior_run, tmp_path, capsys):
    rc, _, err = run(capsys, "sample", "--prior", tiny_prior_run / "last.ckpt", "--num", "100",
                     "--device", "cpu", "--out", tmp_path / "s")
    assert rc == 0, err
    with Image.open(tmp_path / "s" / "grid.png") as g:
        w, h = g.size
    assert 0.8 < w / h < 1.25, (w, h)  # rows of 8 made it 8 wide and 13 tall
    rc, _, err = run(capsys, "sample", "--prior", tiny_prior_run / "last.ckpt", "--num", "16",
                     "--device", "cpu", "--out", tmp_path / "t")
    with Image.open(tmp_path / "t" / "grid.png") as g:
        assert g.size[0] > g.size[1]  # small grids keep their rows of 8


def test_page_errors_show_no_server_paths():
    gr = pytest.importorskip("gradio")
    from vqgen.pipeline.serve.app import _errors_in_page

    @_errors_in_page
    def fails(where):
        raise UserError(f"the .vqz was made with prior {where}/runs/mnist/last.ckpt, not this one")

    with pytest.raises(gr.Error) as e:
        fails("/srv/secret")
    assert "/srv" not in str(e.value) and "last.ckpt" in str(e.value)
