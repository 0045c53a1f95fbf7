"""The code-map contract: round trip, streaming and atomic writes, loud failures naming the
file, dump equals ``encode`` in dataset order, byte-identical re-runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgen.pipeline.cli import main
from vqgen.stage1_vqvae.codes import (
    FORMAT_VERSION,
    CodeMapError,
    CodeMapWriter,
    code_dtype,
    is_code_map_folder,
    load_codes_file,
    read_code_maps,
    read_meta,
    validate_codes,
    write_code_maps,
)
from vqgen.stage1_vqvae.data import build_dataset
from vqgen.stage1_vqvae.lit import load_vqvae
from vqgen.stage1_vqvae.runtime.checkpoint import file_sha256

META_KEYS = {"format_version", "num_codes", "code_shape", "count", "num_classes", "class_names"}


def sample_maps(n=10, shape=(3, 4), num_codes=20, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, num_codes, (n, *shape))
    labels = rng.integers(0, num_classes, n) if num_classes else None
    return codes, labels


def write_sample(folder: Path, n=10, num_codes=20, num_classes=3, **kw) -> Path:
    codes, labels = sample_maps(n, num_codes=num_codes, num_classes=num_classes)
    meta = {"num_classes": num_classes, "class_names": [f"c{i}" for i in range(num_classes)],
            "source": "test", **kw}
    return write_code_maps(folder, codes, labels, num_codes=num_codes, meta=meta)


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("num_classes", [3, 0])
def test_round_trip(tmp_path: Path, num_classes: int):
    codes, labels = sample_maps(num_classes=num_classes)
    meta = {"num_classes": num_classes, "class_names": ["a", "b", "c"][:num_classes],
            "source": "unit test", "vqvae_checkpoint": None, "vqvae_sha256": None}
    write_code_maps(tmp_path / "m", codes, labels, num_codes=20, meta=meta)
    assert is_code_map_folder(tmp_path / "m")
    maps = read_code_maps(tmp_path / "m")
    assert maps.codes.dtype == np.uint16 and isinstance(maps.codes, np.memmap)
    assert np.array_equal(maps.codes, codes)
    assert len(maps) == 10 and maps.num_codes == 20 and maps.code_shape == (3, 4)
    if num_classes:
        assert maps.labels.dtype == np.int64 and np.array_equal(maps.labels, labels)
        assert (tmp_path / "m" / "labels.npy").is_file()
    else:
        assert maps.labels is None and not (tmp_path / "m" / "labels.npy").exists()
    assert META_KEYS | {"source", "vqvae_checkpoint", "vqvae_sha256"} <= set(maps.meta)
    assert maps.meta["format_version"] == FORMAT_VERSION
    assert maps.meta["code_shape"] == [3, 4] and maps.meta["count"] == 10
    # the on-disk files are plain .npy (no pickle) and JSON
    raw = np.load(tmp_path / "m" / "codes.npy", allow_pickle=False)
    assert raw.dtype == np.uint16 and raw.shape == (10, 3, 4)
    assert json.loads((tmp_path / "m" / "meta.json").read_text())["num_codes"] == 20
    files = ["codes.npy", "index.npy", "meta.json"] + (["labels.npy"] if num_classes else [])
    assert visible(tmp_path / "m") == sorted(files)


def test_code_dtype():
    assert code_dtype(2) == np.uint16 and code_dtype(65536) == np.uint16
    assert code_dtype(65537) == np.int32


def test_large_codebook_round_trip(tmp_path: Path):
    codes = np.array([[[0, 65536], [70000, 99999]]])
    write_code_maps(tmp_path / "m", codes, None, num_codes=100000)
    maps = read_code_maps(tmp_path / "m")
    assert maps.codes.dtype == np.int32 and np.array_equal(maps.codes, codes)


def test_streaming_writer_writes_batches_in_order(tmp_path: Path):
    codes, labels = sample_maps(n=23)
    folder = tmp_path / "s"
    w = CodeMapWriter(folder, count=23, code_shape=(3, 4), num_codes=20, has_labels=True,
                      meta={"num_classes": 3})
    for s in range(0, 23, 5):  # batches of 5, the last one ragged
        w.write(codes[s : s + 5], labels[s : s + 5])
        assert not (folder / "meta.json").exists()
        assert not (folder / "codes.npy").exists()
    w.close()
    maps = read_code_maps(folder)
    assert np.array_equal(maps.codes, codes) and np.array_equal(maps.labels, labels)
    assert visible(folder) == ["codes.npy", "index.npy", "labels.npy", "meta.json"]  # no temps
    assert visible(tmp_path) == ["s"]  # nor a staging folder beside it


def test_writer_refuses_bad_batches(tmp_path: Path):
    w = CodeMapWriter(tmp_path / "w", count=4, code_shape=(2, 2), num_codes=5, has_labels=True)
    with pytest.raises(CodeMapError, match="code_shape"):
        w.write(np.zeros((1, 3, 2), int), np.zeros(1, int))
    with pytest.raises(CodeMapError, match="outside"):
        w.write(np.full((1, 2, 2), 5), np.zeros(1, int))
    with pytest.raises(CodeMapError, match="outside"):
        w.write(np.full((1, 2, 2), -1), np.zeros(1, int))
    with pytest.raises(CodeMapError, match="labels"):
        w.write(np.zeros((1, 2, 2), int), None)
    with pytest.raises(CodeMapError, match="count"):
        w.write(np.zeros((5, 2, 2), int), np.zeros(5, int))
    w.abort()


def test_abort_leaves_no_meta(tmp_path: Path):
    folder = tmp_path / "a"
    w = CodeMapWriter(folder, count=4, code_shape=(2, 2), num_codes=5, has_labels=True)
    w.write(np.zeros((2, 2, 2), int), np.zeros(2, int))
    w.abort()
    assert not (folder / "meta.json").exists() and not (folder / "codes.npy").exists()
    assert visible(folder) == []  # the temp files are gone too


def test_exception_inside_with_leaves_nothing_that_looks_whole(tmp_path: Path):
    folder = tmp_path / "x"
    with pytest.raises(RuntimeError, match="boom"):
        with CodeMapWriter(folder, count=4, code_shape=(2, 2), num_codes=5, has_labels=True) as w:
            w.write(np.zeros((2, 2, 2), int), np.zeros(2, int))
            raise RuntimeError("boom")
    assert not (folder / "meta.json").exists()
    assert not (folder / "codes.npy").exists()
    assert visible(folder) == []


def test_interrupted_rewrite_of_a_whole_folder_keeps_the_old_one(tmp_path: Path):
    folder = write_sample(tmp_path / "old")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        with CodeMapWriter(folder, count=10, code_shape=(3, 4), num_codes=20, has_labels=True) as w:
            w.write(np.zeros((3, 3, 4), int), np.zeros(3, int))
            raise KeyboardInterrupt
    # the new split was built beside the old one, which stays whole and untouched
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert len(read_code_maps(folder)) == 10
    assert visible(tmp_path) == ["old"]


def test_too_few_rows_fails_on_close_and_leaves_no_temp_files(tmp_path: Path):
    folder = tmp_path / "short"
    with pytest.raises(CodeMapError, match="wrote 2 rows, declared 4"):
        with CodeMapWriter(folder, count=4, code_shape=(2, 2), num_codes=5, has_labels=True) as w:
            w.write(np.zeros((2, 2, 2), int), np.zeros(2, int))
    assert not is_code_map_folder(folder)
    assert not (folder / "codes.npy").exists()
    assert visible(folder) == [], "the half-written temp arrays were left behind"


# --------------------------------------------------------------------------- bad files


def _expect_error(folder: Path, name: str, match: str | None = None, exc=CodeMapError):
    with pytest.raises(exc) as e:
        read_code_maps(folder)
    msg = str(e.value)
    assert str(folder / name) in msg, f"message does not name {name}: {msg}"
    assert "\n" not in msg
    if match:
        assert match in msg, msg
    return msg


def _set_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_values_out_of_range_fail(tmp_path: Path):
    folder = write_sample(tmp_path / "m")
    _set_meta(folder, num_codes=10)  # the arrays hold codes up to 19
    _expect_error(folder, "codes.npy", "outside [0, 10)")


def test_wrong_dtype_fails(tmp_path: Path):
    folder = write_sample(tmp_path / "m")
    np.save(folder / "codes.npy", sample_maps()[0].astype(np.int64))
    _expect_error(folder, "codes.npy", "dtype int64")


def test_float_codes_fail(tmp_path: Path):
    folder = write_sample(tmp_path / "m", num_codes=100000)  # int32 expected
    np.save(folder / "codes.npy", sample_maps()[0].astype(np.float32))
    _expect_error(folder, "codes.npy", "dtype float32")


def test_grid_that_does_not_match_meta_fails(tmp_path: Path):
    folder = write_sample(tmp_path / "m")
    _set_meta(folder, code_shape=[4, 3])
    _expect_error(folder, "codes.npy", "expected 4x3")


def test_count_mismatch_fails(tmp_path: Path):
    folder = write_sample(tmp_path / "m")
    _set_meta(folder, count=11)
    _expect_error(folder, "codes.npy", "meta.json says 11")


def test_missing_labels_fail(tmp_path: Path):
    folder = write_sample(tmp_path / "m")
    (folder / "labels.npy").unlink()
    _expect_error(folder, "labels.npy", "labels.npy is missing")


def test_labels_of_wrong_length_or_range_fail(tmp_path: Path):
    folder = write_sample(tmp_path / "m")
    np.save(folder / "labels.npy", np.zeros(9, dtype=np.int64))
    _expect_error(folder, "labels.npy")
    np.save(folder / "labels.npy", np.full(10, 3, dtype=np.int64))  # num_classes is 3
    _expect_error(folder, "labels.npy", "outside")


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("how", ["garbage", "truncated", "pickled"])
def test_corrupt_npy_fails(tmp_path: Path, how: str, mmap: bool):
    folder = write_sample(tmp_path / "m")
    path = folder / "codes.npy"
    if how == "garbage":
        path.write_bytes(b"\x00\x01 this is not an npy file " * 10)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-17])
    else:
        np.save(path, np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(CodeMapError) as e:
        read_code_maps(folder, mmap=mmap)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff\xfe", '{"num_codes": 4}'])
def test_invalid_meta_json_fails(tmp_path: Path, text: str):
    folder = write_sample(tmp_path / "m")
    (folder / "meta.json").write_bytes(text.encode("latin-1"))
    _expect_error(folder, "meta.json")


def test_missing_meta_says_run_encode_first(tmp_path: Path):
    folder = write_sample(tmp_path / "m")
    (folder / "meta.json").unlink()
    with pytest.raises(CodeMapError, match=r"no meta\.json.*run `vqgen encode` first") as e:
        read_code_maps(folder)
    assert str(folder) in str(e.value)
    with pytest.raises(FileNotFoundError, match="run `vqgen encode` first"):
        read_code_maps(tmp_path / "does-not-exist")


def test_newer_format_version_fails(tmp_path: Path):
    folder = write_sample(tmp_path / "m")
    _set_meta(folder, format_version=FORMAT_VERSION + 1)
    _expect_error(folder, "meta.json", "newer than this vqgen reads")
    with pytest.raises(CodeMapError, match="upgrade vqgen"):
        read_meta(folder)


def test_validate_codes_names_the_file():
    good = np.zeros((2, 3, 3), np.uint16)
    validate_codes(good, 4, (3, 3), "x.npy")
    for bad, match in [
        (np.full((2, 3, 3), 4, np.uint16), "outside"),
        (np.zeros((2, 3, 4), np.uint16), "expected 3x3"),
        (np.zeros((3, 3), np.uint16), "expected"),
        (np.zeros((2, 3, 3), np.float64), "integer"),
        (np.full((2, 3, 3), -1, np.int64), "outside"),
    ]:
        with pytest.raises(CodeMapError, match=match) as e:
            validate_codes(bad, 4, (3, 3), "x.npy")
        assert "x.npy" in str(e.value)


def test_load_codes_file(tmp_path: Path):
    folder = write_sample(tmp_path / "m")
    codes, meta = load_codes_file(folder)
    assert codes.shape == (10, 3, 4) and meta["num_codes"] == 20
    np.save(tmp_path / "one.npy", np.zeros((3, 4), np.int64))
    codes, meta = load_codes_file(tmp_path / "one.npy")
    assert codes.shape == (1, 3, 4) and meta is None
    np.save(tmp_path / "f.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(CodeMapError, match="f.npy"):
        load_codes_file(tmp_path / "f.npy")
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_codes_file(tmp_path / "nope.npy")


# --------------------------------------------------------------------------- dumps of a real run


@pytest.mark.parametrize("split", ["val", "train"])
def test_dump_equals_encode_in_dataset_order(tiny_vqvae_run: Path, split: str):
    ckpt = tiny_vqvae_run / "last.ckpt"
    lit = load_vqvae(ckpt)
    hp = lit.hparams
    ds = build_dataset(hp.data, split, channels=hp.channels, image_size=tuple(hp.image_size),
                       val_fraction=hp.val_fraction, seed=hp.seed)
    maps = read_code_maps(tiny_vqvae_run / "codes" / split)
    assert len(maps) == len(ds) == {"val": 500, "train": 4500}[split]
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    expect = torch.cat([lit.model.encode(images[s : s + 1000]) for s in range(0, len(ds), 1000)])
    assert maps.codes.dtype == np.uint16
    assert np.array_equal(np.asarray(maps.codes), expect.numpy())
    assert np.array_equal(maps.labels, ds.labels) and maps.labels.dtype == np.int64
    meta = maps.meta
    assert meta["num_codes"] == 32 and meta["code_shape"] == [7, 7]
    assert meta["num_classes"] == 10 and meta["class_names"] == [str(i) for i in range(10)]
    assert meta["vqvae_checkpoint"] == str(ckpt.resolve())
    assert meta["vqvae_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["vqvae_sha256"] == file_sha256(ckpt)
    assert "mnist5k" in meta["source"] and split in meta["source"]


def test_encode_reruns_are_byte_identical(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    ckpt = str(tiny_vqvae_run / "last.ckpt")
    outs = [tmp_path / "one", tmp_path / "two"]
    for out in outs:
        rc = main(["encode", "--vqvae", ckpt, "--data", "mnist5k", "--splits", "val",
                   "--batch-size", "96", "--device", "cpu", "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
    for name in ("codes.npy", "labels.npy", "meta.json"):
        a, b = (o / "val" / name for o in outs)
        assert a.read_bytes() == b.read_bytes(), name
        # ... and equal to the dump written at the end of training (other batch size)
        assert a.read_bytes() == (tiny_vqvae_run / "codes" / "val" / name).read_bytes(), name
    # re-encoding in place (--overwrite: it replaces encode's own split) keeps the bytes too
    rc = main(["encode", "--vqvae", ckpt, "--splits", "val", "--device", "cpu",
               "--out", str(outs[0]), "--overwrite"])
    assert rc == 0
    a, b = (o / "val" / "codes.npy" for o in outs)
    assert a.read_bytes() == b.read_bytes()
    assert visible(outs[0]) == ["val"]
    assert visible(outs[0] / "val") == ["codes.npy", "index.npy", "labels.npy", "meta.json"]
