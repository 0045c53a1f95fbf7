"""The codec (issue 14): .vqz round trips on tiny models for every batch size and stream
layout, the bit accounting, the ideal bits against the prior's forward NLL, CRCs,
checkpoint hashes, byte-identical re-runs, and every bad input of the CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vqgen.pipeline.codec.coder as codec
from tests.test_cli_stage1 import assert_usage_error, run, tree
from vqgen.pipeline.codec.coder import (
    build_report,
    compress,
    compress_codes,
    decode_codes,
    decompress,
    encode_batches,
    open_vqz,
)
from vqgen.pipeline.codec.vqz import FORMAT_VERSION, VqzError, read_header
from vqgen.pipeline.generate import MismatchError, load_pair
from vqgen.stage1_vqvae.codes import read_code_maps
from vqgen.stage1_vqvae.data import build_dataset
from vqgen.stage1_vqvae.runtime.checkpoint import file_sha256

N = 40  # images per round trip: several batches of 16, a partial last one


@pytest.fixture(scope="module")
def pair(tiny_prior_run: Path):
    return load_pair(tiny_prior_run / "last.ckpt")


@pytest.fixture(scope="module")
def val(tiny_vqvae_run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    maps = read_code_maps(tiny_vqvae_run / "codes" / "val")
    codes = torch.from_numpy(np.asarray(maps.codes[:N]).astype(np.int64))
    labels = torch.from_numpy(np.asarray(maps.labels[:N]).astype(np.int64))
    return codes, labels


@pytest.fixture(scope="module")
def val_file(tmp_path_factory: pytest.TempPathFactory, tiny_prior_run: Path) -> Path:
    """`vqgen compress` of the first mnist5k val images, one stream per image. Read-only."""
    from vqgen.pipeline.cli import main

    out = tmp_path_factory.mktemp("vqz") / "val.vqz"
    assert main(["compress", "--prior", str(tiny_prior_run / "last.ckpt"), "--data", "mnist5k",
                 "--split", "val", "--stream", "image", "--device", "cpu", "--batch-size", "8",
                 "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("stream", ["batch", "image", "all"])
@pytest.mark.parametrize("batch_size", [1, 3, 16, 64])
def test_round_trip_gives_identical_codes_and_labels(pair, val, stream, batch_size):
    prior, vqvae = pair
    codes, labels = val
    labels = labels.clone()
    labels[::5] = -1  # some images without a label: per-record flags
    res = compress_codes(prior, vqvae, codes, labels, batch_size=batch_size, stream=stream)
    dec = decode_codes(res.data, prior, vqvae)
    assert torch.equal(dec.codes, codes)
    assert torch.equal(dec.labels, labels)
    want = {"image": N, "batch": math.ceil(N / batch_size), "all": 1}[stream]
    assert len(dec.records) == want


@pytest.mark.parametrize("enc_threads, dec_threads", [(1, 2), (2, 1)])
def test_the_scan_runs_on_one_thread_whatever_the_process_uses(pair, val, enc_threads,
                                                               dec_threads, monkeypatch):
    """Multi-threaded CPU kernels may split (and, with MKL's dynamic threading under load,
    re-split) their sums, changing the probabilities' last bits: a file made by a 1-thread
    `vqgen serve` failed to decode in a 2-thread process under CI load. Encoder and decoder
    scan on one thread; the caller's setting is restored."""
    from vqgen.pipeline.codec import coder as codec

    seen: list[int] = []
    inner = codec.scan_codes

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return inner(*args, **kwargs)

    monkeypatch.setattr(codec, "scan_codes", recording)
    prior, vqvae = pair
    codes, labels = val
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(enc_threads)
        data = compress_codes(prior, vqvae, codes, labels, batch_size=64).data
        assert torch.get_num_threads() == enc_threads
        torch.set_num_threads(dec_threads)
        assert torch.equal(decode_codes(data, prior, vqvae).codes, codes)
        assert torch.get_num_threads() == dec_threads
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


@pytest.mark.parametrize("label_mode", ["code", "null"])
def test_label_modes(pair, val, label_mode):
    prior, vqvae = pair
    codes, labels = val
    res = compress_codes(prior, vqvae, codes, labels, batch_size=16, label_mode=label_mode)
    dec = decode_codes(res.data, prior, vqvae)
    assert torch.equal(dec.codes, codes)
    if label_mode == "code":
        assert torch.equal(dec.labels, labels)
        np.testing.assert_allclose(res.label_bits, math.log2(10))
    else:
        assert bool((dec.labels == -1).all()) and not res.label_bits.any()


def test_python_api_round_trip(pair):
    prior, vqvae = pair
    ds = build_dataset("mnist5k", "val")
    images = torch.stack([ds[i][0] for i in range(12)])
    labels = torch.as_tensor(ds.labels[:12])
    data = compress(prior, vqvae, images, labels, batch_size=5)
    out = decompress(data, prior, vqvae)
    assert out.shape == images.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    with torch.inference_mode():
        want = vqvae.model.decode_codes(vqvae.model.encode(images))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_same_input_gives_byte_identical_files(pair, val, tiny_prior_run, tmp_path, capsys):
    prior, vqvae = pair
    codes, labels = val
    one = compress_codes(prior, vqvae, codes, labels, batch_size=16).data
    assert compress_codes(prior, vqvae, codes, labels, batch_size=16).data == one
    files = []
    for name in ("a.vqz", "b.vqz"):
        rc, _, err = run(capsys, "compress", "--prior", tiny_prior_run / "last.ckpt", "--data",
                         "mnist5k", "--split", "val", "--device", "cpu", "--out", tmp_path / name)
        assert rc == 0, err
        files.append((tmp_path / name).read_bytes())
    assert files[0] == files[1]


# ---------------------------------------------------------------------- accounting


def test_total_bits_are_payloads_plus_header(pair, val):
    prior, vqvae = pair
    codes, labels = val
    res = compress_codes(prior, vqvae, codes, labels, batch_size=16, stream="image")
    header, start = read_header(res.data)
    assert res.header_bytes == start
    # each record: 1-byte length (payloads < 128 bytes here), payload, 4-byte CRC
    assert all(len(r.payload) < 128 for r in res.records)
    assert len(res.data) == start + sum(1 + len(r.payload) + 4 for r in res.records)
    rep = build_report(res, None, 28 * 28, {})
    assert rep["total_bits"] == 8 * len(res.data)
    assert rep["payload_bits"] == 8 * sum(len(r.payload) for r in res.records)
    per_image = sum(row["bits"] for row in rep["per_image"])
    assert per_image + rep["header_bits"] == pytest.approx(rep["total_bits"], abs=1e-6)
    # one stream per image: an image's bits are exactly its record's
    assert [row["bits"] for row in rep["per_image"]] == [8 * r.size for r in res.records]


@pytest.mark.parametrize("label_mode", ["code", "null"])
def test_ideal_bits_equal_the_priors_forward_nll(pair, val, label_mode):
    prior, vqvae = pair
    codes, labels = val
    res = compress_codes(prior, vqvae, codes, labels, batch_size=16, label_mode=label_mode)
    with torch.no_grad():
        cond = labels if label_mode == "code" else None
        logits = prior.model(codes, cond)
    nll = F.cross_entropy(logits, codes, reduction="none").sum((1, 2)) / math.log(2)
    np.testing.assert_allclose(res.code_bits, nll.double().numpy(), rtol=1e-5)
    # the coder lands close to the ideal: a few dozen bits per stream at most
    payload = 8 * sum(len(r.payload) for r in res.records)
    assert res.ideal_bits.sum() < payload < res.ideal_bits.sum() + 40 * len(res.records)


# ---------------------------------------------------------------------- damage


def test_a_flipped_byte_in_any_payload_is_caught_by_its_crc_naming_the_image(val_file):
    data = val_file.read_bytes()
    header, records = open_vqz(data)
    pos = read_header(data)[1]
    for k, rec in enumerate(records):
        first_payload_byte = pos + 1  # after the 1-byte length
        bad = bytearray(data)
        bad[first_payload_byte + len(rec.payload) // 2] ^= 0x10
        with pytest.raises(VqzError, match=rf"CRC of image {k} \({header.names[k]}\)"):
            open_vqz(bytes(bad))
        pos += rec.size


def test_a_truncated_file_names_the_image_at_fault(val_file):
    data = val_file.read_bytes()
    header, records = open_vqz(data)
    start = read_header(data)[1]
    cut = start + sum(r.size for r in records[:7]) + 3  # inside image 7's record
    with pytest.raises(VqzError, match=rf"truncated.*image 7 \({header.names[7]}\)"):
        open_vqz(data[:cut])
    with pytest.raises(VqzError, match="truncated inside its header"):
        open_vqz(data[:20])


def test_probabilities_unlike_the_encoders_are_detected(pair, val, monkeypatch):
    """What a file made on another device type looks like: the stream does not end where
    the encoder's did."""
    prior, vqvae = pair
    codes, labels = val
    data = compress_codes(prior, vqvae, codes, labels, batch_size=16).data
    real = codec.code_probabilities

    def other_device(logits):
        p = real(logits)
        return p * np.linspace(0.5, 1.5, p.shape[1])  # not what the encoder used
    monkeypatch.setattr(codec, "code_probabilities", other_device)
    with pytest.raises(VqzError, match="probabilities differ from the encoder's"):
        decode_codes(data, prior, vqvae)


def test_other_checkpoints_are_refused_naming_both_hashes(pair, val, tiny_prior_run, tmp_path):
    prior, vqvae = pair
    codes, labels = val
    data = compress_codes(prior, vqvae, codes, labels, batch_size=16).data
    ckpt = torch.load(tiny_prior_run / "last.ckpt", weights_only=True)
    ckpt["state_dict"]["model.embed.weight"][0, 0] += 1.0
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    other_prior, _ = load_pair(other)
    with pytest.raises(MismatchError) as e:
        decode_codes(data, other_prior, vqvae)
    msg = str(e.value)
    assert file_sha256(tiny_prior_run / "last.ckpt")[:16] in msg
    assert file_sha256(other)[:16] in msg


# ---------------------------------------------------------------------- the CLI


def test_cli_round_trip_writes_pngs_codes_labels_and_report(tiny_prior_run, tmp_path, capsys):
    vqz, report, out = tmp_path / "val.vqz", tmp_path / "codec.json", tmp_path / "decoded"
    rc, stdout, err = run(capsys, "compress", "--prior", tiny_prior_run / "last.ckpt", "--data",
                          "mnist5k", "--split", "val", "--device", "cpu", "--out", vqz,
                          "--report", report)
    assert rc == 0, err
    assert "bits per image" in stdout
    rep = json.loads(report.read_text())
    assert rep["images"] == 500 and len(rep["per_image"]) == 500
    assert rep["total_bits"] == 8 * vqz.stat().st_size
    assert rep["overhead"] == pytest.approx(rep["total_bits"] / rep["ideal_bits"])
    for key in ("bits", "bits_per_pixel", "ideal_bits", "psnr_db", "ssim"):
        assert key in rep["per_image"][0]
    rc, _, err = run(capsys, "decompress", vqz, "--out", out)
    assert rc == 0, err
    codes = np.load(out / "codes.npy")
    maps = read_code_maps(Path(load_pair(tiny_prior_run / "last.ckpt")[0]
                               .hparams.codes_dir) / "val")
    np.testing.assert_array_equal(codes, np.asarray(maps.codes))  # encode = the dumped codes
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.asarray(maps.labels))
    assert (out / "00000.png").is_file() and (out / "00499.png").is_file()
    assert len(list(out.glob("*.png"))) == 500


def test_cli_folder_keeps_names_and_maps_class_folders(tiny_prior_run, tmp_path, capsys):
    # class subfolders named like the prior's classes ("3", "7") give labels, others none
    ds = build_dataset("mnist5k", "val")
    from vqgen.stage1_vqvae.runtime.grid import save_png

    src = tmp_path / "digits"
    for i, cls in enumerate(["3", "7", "cats"]):
        (src / cls).mkdir(parents=True)
        save_png(ds[i][0], src / cls / f"img{i}.jpg" if cls == "cats" else src / cls / f"d{i}.png")
    vqz, out = tmp_path / "d.vqz", tmp_path / "out"
    rc, _, err = run(capsys, "compress", "--prior", tiny_prior_run / "last.ckpt", src,
                     "--device", "cpu", "--out", vqz)
    assert rc == 0, err
    rc, _, err = run(capsys, "decompress", vqz, "--out", out)
    assert rc == 0, err
    assert tree(out) == sorted(["3", "3/d0.png", "7", "7/d1.png", "cats", "cats/img2.png",
                                "codes.npy", "decoded.json", "labels.npy"])
    np.testing.assert_array_equal(np.load(out / "labels.npy"), [3, 7, -1])
    # a user's file inside a subfolder decompress wrote survives --overwrite, byte for byte;
    # a folder it no longer owns, where it would write, is refused before anything changes
    (out / "7" / "mine.txt").write_text("mine")
    before = (out / "7" / "d1.png").stat().st_mtime_ns
    rc, _, err = run(capsys, "decompress", vqz, "--out", out, "--overwrite")
    assert rc == 0, err
    assert (out / "7" / "mine.txt").read_text() == "mine"
    assert tree(out) == sorted(["3", "3/d0.png", "7", "7/d1.png", "7/mine.txt", "cats",
                                "cats/img2.png", "codes.npy", "decoded.json", "labels.npy"])
    assert (out / "7" / "d1.png").stat().st_mtime_ns != before  # its own file was replaced
    manifest = json.loads((out / "decoded.json").read_text())["files"]
    assert "7/d1.png" in manifest and "7/mine.txt" not in manifest
    (out / "7" / "d1.png").unlink()  # the user now owns that path: not in the manifest
    (out / "decoded.json").write_text(json.dumps({"files": [f for f in manifest
                                                             if f != "7/d1.png"]}))
    (out / "7" / "d1.png").write_text("the user's now")
    rc, _, err = run(capsys, "decompress", vqz, "--out", out, "--overwrite")
    assert_usage_error(rc, err, "decompress", "holds 7,", "did not write")
    assert (out / "7" / "d1.png").read_text() == "the user's now"


def test_cli_bad_inputs(tiny_prior_run, val_file, tmp_path, capsys):
    prior = tiny_prior_run / "last.ckpt"
    # not a .vqz
    junk = tmp_path / "junk.vqz"
    junk.write_bytes(b"hello, this is not a vqz file at all")
    rc, _, err = run(capsys, "decompress", junk, "--out", tmp_path / "o1")
    assert_usage_error(rc, err, "decompress", "not a .vqz file")
    # truncated
    cut = tmp_path / "cut.vqz"
    cut.write_bytes(val_file.read_bytes()[:-10])
    rc, _, err = run(capsys, "decompress", cut, "--out", tmp_path / "o2")
    assert_usage_error(rc, err, "decompress", "truncated", "image 499 (00499)")
    # a newer format version (byte 4), header CRC aside
    newer = bytearray(val_file.read_bytes())
    newer[4] = FORMAT_VERSION + 1
    (tmp_path / "new.vqz").write_bytes(bytes(newer))
    rc, _, err = run(capsys, "decompress", tmp_path / "new.vqz", "--out", tmp_path / "o3")
    assert_usage_error(rc, err, "decompress", f"format version {FORMAT_VERSION + 1}", "upgrade")
    # other checkpoints than the file's
    rc, _, err = run(capsys, "decompress", val_file, "--prior", tmp_path / "missing.ckpt",
                     "--out", tmp_path / "o4")
    assert_usage_error(rc, err, "decompress", "missing.ckpt")
    # an empty input folder
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "compress", "--prior", prior, tmp_path / "empty", "--out",
                     tmp_path / "e.vqz")
    assert_usage_error(rc, err, "compress", "no image files")
    # an unreadable image, named
    folder = tmp_path / "imgs"
    folder.mkdir()
    ds = build_dataset("mnist5k", "val")
    from vqgen.stage1_vqvae.runtime.grid import save_png

    save_png(ds[0][0], folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rc, _, err = run(capsys, "compress", "--prior", prior, folder, "--device", "cpu",
                     "--out", tmp_path / "b.vqz")
    assert_usage_error(rc, err, "compress", "broken.png")
    assert not (tmp_path / "b.vqz").exists()
    # nothing to compress / both kinds of input
    rc, _, err = run(capsys, "compress", "--prior", prior, "--out", tmp_path / "n.vqz")
    assert_usage_error(rc, err, "compress", "nothing to compress")
    # a FIFO as --report, even with --overwrite: refused, and still a FIFO
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    rc, _, err = run(capsys, "compress", "--prior", prior, folder, "--out", tmp_path / "f.vqz",
                     "--report", fifo, "--overwrite")
    assert_usage_error(rc, err, "compress", "a FIFO, not a regular file")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and not (tmp_path / "f.vqz").exists()
    assert list(tmp_path.glob("*.tmp*")) == [] and not (tmp_path / "o1").exists()
    for o in ("o2", "o3", "o4"):
        assert not (tmp_path / o).exists()


def test_cli_existing_outputs_are_refused_unless_overwrite(tiny_prior_run, val_file, tmp_path,
                                                            capsys):
    prior = tiny_prior_run / "last.ckpt"
    vqz = tmp_path / "v.vqz"
    vqz.write_bytes(b"keep")
    args = ["compress", "--prior", prior, "--data", "mnist5k", "--device", "cpu", "--out", vqz]
    rc, _, err = run(capsys, *args)
    assert_usage_error(rc, err, "compress", "exists", "--overwrite")
    assert vqz.read_bytes() == b"keep"
    rc, _, err = run(capsys, *args, "--overwrite")
    assert rc == 0 and vqz.read_bytes()[:4] == b"\x89VQZ"
    out = tmp_path / "dec"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    rc, _, err = run(capsys, "decompress", val_file, "--out", out)
    assert_usage_error(rc, err, "decompress", "--overwrite")
    rc, _, err = run(capsys, "decompress", val_file, "--out", out, "--overwrite")
    assert rc == 0, err
    assert (out / "codes.npy").is_file()
    assert (out / "mine.txt").read_text() == "x"  # --overwrite replaces only its own files


def test_decompress_never_leaves_a_partial_folder(val_file, tmp_path, capsys, monkeypatch):
    import vqgen.stage1_vqvae.runtime.grid as grid

    calls = []
    real = grid.save_png

    def dies_on_the_fifth(img, path):
        calls.append(path)
        if len(calls) == 5:
            raise PermissionError("disk full")
        real(img, path)
    monkeypatch.setattr(grid, "save_png", dies_on_the_fifth)
    out = tmp_path / "decoded"
    rc, _, err = run(capsys, "decompress", val_file, "--out", out)
    assert rc == 2 and "disk full" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_stream_per_image_costs_more_than_per_batch(pair, val):
    """The layouts the README compares: per-image streams pay a CRC and coder flush each."""
    prior, vqvae = pair
    codes, labels = val
    sizes = {s: len(compress_codes(prior, vqvae, codes, labels, batch_size=16, stream=s).data)
             for s in ("image", "batch", "all")}
    assert sizes["all"] <= sizes["batch"] < sizes["image"]


def test_encode_batches_measures_the_decoded_images(pair):
    _, vqvae = pair
    ds = build_dataset("mnist5k", "val")
    x = torch.stack([ds[i][0] for i in range(6)])
    enc = encode_batches(vqvae, [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(2))])
    with torch.inference_mode():
        y = vqvae.model.decode_codes(vqvae.model.encode(x))
    np.testing.assert_allclose(enc.sse, ((y - x) ** 2).flatten(1).sum(1).double().numpy(),
                               rtol=1e-5)
    assert enc.dims == 28 * 28


def test_copied_file_still_decodes(val_file, tmp_path, pair):
    prior, vqvae = pair
    copy = tmp_path / "copy.vqz"
    shutil.copy(val_file, copy)
    dec = decode_codes(copy.read_bytes(), prior, vqvae)
    assert dec.codes.shape == (500, 7, 7)


def test_unconditional_prior_round_trip(tiny_uncond_prior, val):
    """An unconditional prior codes no labels (they are ignored), and still round-trips."""
    prior, vqvae = load_pair(tiny_uncond_prior)
    codes, labels = val
    res = compress_codes(prior, vqvae, codes, labels, batch_size=16)
    dec = decode_codes(res.data, prior, vqvae)
    assert torch.equal(dec.codes, codes) and bool((dec.labels == -1).all())
    assert not res.label_bits.any()


@pytest.mark.parametrize("names, needle", [
    (["a.png", "b.png", "a.png"], "is repeated"),
    (["0/d0.png", "0/d0.jpg"], None),  # both kept: suffixes become part of the name
    (["7/b.jpg", "7/b.png/x.png"], "needs a folder '7/b.png'"),
    (["x" * 252 + ".jpg"], "bytes as"),
    (["ok.png", "n\0ul.png"], "NUL"),
    (["../up.png"], "outside the output folder"),
])
def test_names_that_cannot_each_be_one_file_are_refused(names, needle):
    from vqgen.pipeline.codec.coder import output_names

    if needle is None:
        assert output_names(names) == ["0/d0.png.png", "0/d0.jpg.png"]
        return
    for where, also in (("compress", "rename it"), ("decompress", "not written by")):
        with pytest.raises(VqzError, match=needle) as e:
            output_names(names, where=where)
        assert also in str(e.value)


def test_a_vqz_whose_names_repeat_is_refused_and_nothing_written(val_file, tmp_path, capsys):
    from vqgen.pipeline.codec.vqz import read_records, write_vqz

    data = val_file.read_bytes()
    header, start = read_header(data)
    records = read_records(data, header, start)
    header.names = ["same"] * header.count  # 500 images, one name: one PNG if written
    bad = tmp_path / "repeat.vqz"
    bad.write_bytes(write_vqz(header, records))
    rc, _, err = run(capsys, "decompress", bad, "--out", tmp_path / "o", "--device", "cpu")
    assert_usage_error(rc, err, "decompress", "'same'", "is repeated")
    assert not (tmp_path / "o").exists()


def test_compress_refuses_a_folder_decompress_could_not_write_back(tiny_prior_run, tmp_path,
                                                                     capsys):
    from vqgen.stage1_vqvae.runtime.grid import save_png

    ds = build_dataset("mnist5k", "val")
    src = tmp_path / "in"
    (src / "7" / "b.png").mkdir(parents=True)  # a folder named like b.jpg's decoded file
    save_png(ds[0][0], src / "7" / "b.jpg")
    save_png(ds[1][0], src / "7" / "b.png" / "c.png")
    rc, _, err = run(capsys, "compress", "--prior", tiny_prior_run / "last.ckpt", src,
                     "--device", "cpu", "--out", tmp_path / "x.vqz")
    assert_usage_error(rc, err, "compress", "7/b.png", "rename it")
    assert not (tmp_path / "x.vqz").exists()


def _header_bytes(header, count: int, names_blob: bytes | None) -> bytes:
    """A .vqz header saying ``count`` images (one stream) with the given name table (None:
    by index) and no records: what a hostile file can say without the bytes to back it."""
    import dataclasses

    from vqgen.pipeline.codec.vqz import pack_header

    return pack_header(dataclasses.replace(header, count=count, images_per_stream=count),
                       names_blob)


def test_counts_and_name_tables_are_bounded_before_anything_is_allocated(val_file, tmp_path,
                                                                           capsys):
    import resource
    import zlib

    header, _ = read_header(val_file.read_bytes())
    huge = tmp_path / "huge.vqz"  # ~170 bytes saying 10**12 images (names built: 56 TB)
    huge.write_bytes(_header_bytes(header, 10**12, None))
    # 256 MB of "a" in ~250 KB, as the names of 10 images: inflating it whole would show in
    # the peak RSS checked below
    bomb, chunk = zlib.compressobj(1), b"a" * 2**20
    blob = b"".join(bomb.compress(chunk) for _ in range(256)) + bomb.flush()
    (tmp_path / "bomb.vqz").write_bytes(_header_bytes(header, 10, blob))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rc, _, err = run(capsys, "decompress", huge, "--out", tmp_path / "o1", "--device", "cpu")
    assert_usage_error(rc, err, "decompress", "1,000,000,000,000 images", "GiB")
    rc, _, err = run(capsys, "decompress", tmp_path / "bomb.vqz", "--out", tmp_path / "o2",
                     "--device", "cpu")
    assert_usage_error(rc, err, "decompress", "name table inflates past")
    # the refusals held no more than a few MB (ru_maxrss is in KiB on Linux)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 * 1024
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_a_class_count_other_than_the_priors_is_one_line(val_file, tmp_path, capsys):
    """A header whose label class count differs from the prior's (same checkpoint hash)
    reached the label coder as a raw IndexError."""
    import dataclasses

    from vqgen.pipeline.codec.vqz import read_records, write_vqz

    data = val_file.read_bytes()
    header, start = read_header(data)
    other = dataclasses.replace(header, num_classes=header.num_classes + 3)
    bad = tmp_path / "classes.vqz"
    bad.write_bytes(write_vqz(other, read_records(data, header, start)))
    rc, _, err = run(capsys, "decompress", bad, "--out", tmp_path / "o", "--device", "cpu")
    assert_usage_error(rc, err, "decompress", f"{header.num_classes + 3} classes",
                       f"has {header.num_classes}")
    assert not (tmp_path / "o").exists()
