"""Tests for stage1_vqvae.data: splits, real torchvision loaders on hand-written files,
image folders of every mode and size, conversion properties and the DataModule."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

from vqgen.stage1_vqvae import data as D
from vqgen.stage1_vqvae.data import (
    DATA_CHOICES,
    DataError,
    DataInfo,
    ImageDataset,
    VQDataModule,
    build_dataset,
    convert_image,
    parse_data_spec,
)


def _u8(image: torch.Tensor) -> np.ndarray:
    """float (C, H, W) in [0, 1] -> uint8 (C, H, W), exact for values made by /255."""
    return (image * 255).round().to(torch.uint8).numpy()


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


# --------------------------------------------------------------------------- mnist5k


@pytest.fixture(scope="module")
def raw5k() -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(D.__file__).parents[1] / "assets" / "mnist5k.npz") as z:
        return z["images"], z["labels"]


@pytest.fixture(scope="module")
def m5k() -> dict[str, ImageDataset]:
    return {s: build_dataset("mnist5k", s) for s in D.SPLITS}


def test_mnist5k_sizes_stratified_disjoint_covering(m5k, raw5k):
    train, val = m5k["train"], m5k["val"]
    assert (len(train), len(val)) == (4500, 500)
    assert Counter(train.labels.tolist()) == {c: 450 for c in range(10)}
    assert Counter(val.labels.tolist()) == {c: 50 for c in range(10)}
    # Indices: disjoint, covering all 5000, sorted (dataset order follows the file order).
    assert not set(train.indices) & set(val.indices)
    assert sorted([*train.indices, *val.indices]) == list(range(5000))
    for ds in (train, val):
        assert np.all(np.diff(ds.indices) > 0)
    # Content: the multiset of images served equals the file's, and each item is its row.
    images, labels = raw5k
    served = Counter(_digest(_u8(ds[i][0])[0]) for ds in (train, val) for i in range(len(ds)))
    assert served == Counter(_digest(im) for im in images)
    for ds in (train, val):
        for i in (0, 7, len(ds) - 1):
            image, label = ds[i]
            assert np.array_equal(_u8(image)[0], images[ds.indices[i]])
            assert label == labels[ds.indices[i]]


def test_mnist5k_items_and_info(m5k):
    val = m5k["val"]
    image, label = val[3]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
    assert isinstance(label, int) and 0 <= label <= 9
    all_images = val.images.float() / 255
    assert all_images.min() >= 0 and all_images.max() <= 1 and all_images.max() == 1
    info = val.info
    assert info == DataInfo(
        data="mnist5k", split="val", num_classes=10, class_names=tuple("0123456789"),
        channels=1, image_size=(28, 28), source=info.source,
    )
    assert "mnist5k" in info.source and "500 of 5000" in info.source and "seed 0" in info.source


def test_mnist5k_seed_decides_split(m5k):
    again = build_dataset("mnist5k", "val", seed=0)
    other = build_dataset("mnist5k", "val", seed=1)
    assert np.array_equal(again.indices, m5k["val"].indices)
    assert not np.array_equal(other.indices, m5k["val"].indices)
    assert Counter(other.labels.tolist()) == {c: 50 for c in range(10)}
    bigger = build_dataset("mnist5k", "val", val_fraction=0.2)
    assert len(bigger) == 1000 and Counter(bigger.labels.tolist()) == {c: 100 for c in range(10)}


def test_mnist5k_rgb_and_resized(m5k):
    rgb = build_dataset("mnist5k", "val", channels=3)
    image, _ = rgb[5]
    assert image.shape == (3, 28, 28)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert torch.equal(image[0], m5k["val"][5][0][0])
    big = build_dataset("mnist5k", "val", image_size=(32, 32))
    image, _ = big[5]
    assert image.shape == (1, 32, 32) and 0 <= image.min() and image.max() <= 1
    # Converted through the same PIL path as any single image.
    raw = (m5k["val"][5][0][0] * 255).round().to(torch.uint8).numpy()
    want = convert_image(Image.fromarray(raw), 1, (32, 32)).transpose(2, 0, 1)
    assert np.array_equal(_u8(image), want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 2}, "channels"),
        ({"image_size": (0, 28)}, "image_size"),
        ({"image_size": (28,)}, "image_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        build_dataset("mnist5k", "train", **kwargs)


def test_bad_split():
    with pytest.raises(DataError, match="split"):
        build_dataset("mnist5k", "test")


# --------------------------------------------------------------------------- data spec


def test_parse_data_spec():
    assert parse_data_spec("mnist5k") == ("mnist5k", None)
    assert parse_data_spec("cifar10") == ("cifar10", None)
    assert parse_data_spec("folder:/x/y") == ("folder", "/x/y")
    assert parse_data_spec("folder:rel:colon") == ("folder", "rel:colon")
    for bad in ("imagenet", "MNIST", "", "folder", "folder:", "folder:  "):
        with pytest.raises(DataError) as e:
            parse_data_spec(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="mnist5k, mnist, fashion-mnist, cifar10, folder:PATH"):
        build_dataset("imagenet", "train")
    assert DATA_CHOICES[-1] == "folder:PATH"


# --------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("src_channels", [1, 3])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(6, 5), (9, 14)])
def test_array_fast_path_matches_pil_path(src_channels, channels, size):
    rng = np.random.default_rng(0)
    shape = (4, 6, 5) if src_channels == 1 else (4, 6, 5, 3)
    arrays = rng.integers(0, 256, shape, dtype=np.uint8)
    out = D._convert_array(arrays, channels, size)
    assert out.dtype == torch.uint8 and out.shape == (4, channels, *size)
    for a, o in zip(arrays, out, strict=True):
        want = convert_image(Image.fromarray(a), channels, size).transpose(2, 0, 1)
        assert np.array_equal(o.numpy(), want)


def test_convert_exact_size_keeps_pixels_and_cover_crop_keeps_geometry():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    assert np.array_equal(convert_image(Image.fromarray(a), 1, (28, 28))[:, :, 0], a)
    # 20 high x 10 wide, dark top half / bright bottom half -> width fills 28, height 56,
    # center crop keeps rows 14..42: still dark on top, bright at the bottom, no stretch.
    tall = np.zeros((20, 10), np.uint8)
    tall[10:] = 255
    out = convert_image(Image.fromarray(tall), 1, (28, 28))[:, :, 0]
    assert out.shape == (28, 28)
    assert out[:10].max() == 0 and out[-10:].min() == 255
    # A constant image stays constant at any size.
    flat = Image.new("RGB", (64, 48), (10, 200, 30))
    out = convert_image(flat, 3, (16, 24))
    assert out.shape == (16, 24, 3) and np.all(out == [10, 200, 30])


def test_convert_modes():
    # 16-bit gray scales to 8 bits instead of clipping.
    a16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    img16 = Image.fromarray(a16)
    assert img16.mode == "I;16"
    assert convert_image(img16, 1, (1, 3))[0, :, 0].tolist() == [0, 100, 255]
    assert convert_image(img16.convert("I"), 1, (1, 3))[0, :, 0].tolist() == [0, 100, 255]
    # Alpha composites onto black: transparent white -> 0, opaque red stays red.
    rgba = Image.new("RGBA", (2, 1), (255, 255, 255, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    assert convert_image(rgba, 3, (1, 2))[0].tolist() == [[0, 0, 0], [255, 0, 0]]
    la = Image.new("LA", (1, 1), (200, 0))
    assert convert_image(la, 1, (1, 1)).item() == 0
    # Palette with a transparent entry, and without.
    p = Image.new("P", (2, 1), 0)
    p.putpalette([255, 255, 255, 0, 0, 255] + [0] * 762)
    p.putpixel((1, 0), 1)
    assert convert_image(p, 3, (1, 2))[0].tolist() == [[255, 255, 255], [0, 0, 255]]
    p.info["transparency"] = 0
    assert convert_image(p, 3, (1, 2))[0].tolist() == [[0, 0, 0], [0, 0, 255]]
    # RGB -> L uses PIL's luma; L -> RGB repeats; CMYK and bilevel work.
    rgb = Image.new("RGB", (1, 1), (255, 0, 0))
    assert convert_image(rgb, 1, (1, 1)).item() == rgb.convert("L").getpixel((0, 0))
    assert convert_image(Image.new("L", (1, 1), 77), 3, (1, 1)).ravel().tolist() == [77] * 3
    assert convert_image(Image.new("CMYK", (1, 1), (0, 0, 0, 0)), 3, (1, 1)).ravel().tolist() == [
        255, 255, 255,
    ]
    assert convert_image(Image.new("1", (1, 1), 1), 1, (1, 1)).item() == 255


# --------------------------------------------------------------------------- torchvision


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Uncompressed IDX: magic 0x0000 0x08 ndim (uint8), then big-endian uint32 dims."""
    magic = (0x08 << 8) | array.ndim  # 2051 for images, 2049 for labels
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist_like(root: Path, folder: str, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    sets = {}
    for prefix, n in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        sets["train" if prefix == "train" else "val"] = (images, labels)
    assert (raw / "train-images-idx3-ubyte").read_bytes()[:4] == (2051).to_bytes(4, "big")
    assert (raw / "train-labels-idx1-ubyte").read_bytes()[:4] == (2049).to_bytes(4, "big")
    return sets


@pytest.mark.parametrize(("spec", "cls"), [("mnist", MNIST), ("fashion-mnist", FashionMNIST)])
def test_torchvision_mnist_family_round_trip(tmp_path, spec, cls):
    sets = _write_mnist_like(tmp_path, cls.__name__, np.random.default_rng(2))
    for split, (images, labels) in sets.items():
        ds = build_dataset(spec, split, data_root=str(tmp_path))
        assert len(ds) == len(images)
        got = np.stack([_u8(ds[i][0])[0] for i in range(len(ds))])
        assert np.array_equal(got, images)
        assert [ds[i][1] for i in range(len(ds))] == labels.tolist()
        assert ds.info.class_names == tuple(cls.classes) and ds.info.num_classes == 10
        assert ("official test split" in ds.info.source) == (split == "val")
    # Resized RGB goes through the same conversion as a single PIL image.
    ds = build_dataset(spec, "val", data_root=str(tmp_path), channels=3, image_size=(14, 20))
    images, _ = sets["val"]
    want = convert_image(Image.fromarray(images[4]), 3, (14, 20)).transpose(2, 0, 1)
    assert np.array_equal(_u8(ds[4][0]), want)


class _FixtureCIFAR10(CIFAR10):
    """The real CIFAR10 loader minus the md5 checks (fixture files can't match them)."""

    meta = {**CIFAR10.meta, "md5": None}  # check_integrity(path, None) only checks existence

    def _check_integrity(self) -> bool:
        files = [f for f, _ in self.train_list + self.test_list]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in files)


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def _write_cifar(root: Path, rng) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR-10 python batches as torchvision reads them: pickled dicts with "data" uint8
    (n, 3072) = R, G, B planes of 32x32 row-major, and "labels". The real files are
    Python 2 pickles whose str keys torchvision decodes (encoding="latin1") to str."""
    base = root / "cifar-10-batches-py"
    base.mkdir()
    sets: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels,
                         "filenames": [f"{name}_{i}.png" for i in range(3)]}, f)
        split = "val" if name == "test_batch" else "train"
        sets[split][0].append(data)
        sets[split][1].extend(labels)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": 3, "num_vis": 3072}, f)
    return {s: (np.concatenate(d).reshape(-1, 3, 32, 32), lab) for s, (d, lab) in sets.items()}


def test_torchvision_cifar10_round_trip(tmp_path, monkeypatch):
    monkeypatch.setitem(D.TORCHVISION_SETS, "cifar10", _FixtureCIFAR10)
    sets = _write_cifar(tmp_path, np.random.default_rng(3))
    for split, (planes, labels) in sets.items():
        ds = build_dataset("cifar10", split, data_root=str(tmp_path), channels=3,
                           image_size=(32, 32))
        assert len(ds) == len(labels) == (15 if split == "train" else 3)
        got = np.stack([_u8(ds[i][0]) for i in range(len(ds))])
        assert np.array_equal(got, planes)  # (N, 3, 32, 32): planes land as channels
        assert [ds[i][1] for i in range(len(ds))] == labels
        assert ds.info.class_names == tuple(CIFAR_NAMES)
    gray = build_dataset("cifar10", "val", data_root=str(tmp_path), channels=1,
                         image_size=(32, 32))
    hwc = sets["val"][0][1].transpose(1, 2, 0)
    want = np.asarray(Image.fromarray(hwc).convert("L"))
    assert np.array_equal(_u8(gray[1][0])[0], want)


@pytest.mark.parametrize(("spec", "where"), [("mnist", "MNIST/raw"),
                                             ("fashion-mnist", "FashionMNIST/raw"),
                                             ("cifar10", "cifar-10-batches-py")])
def test_torchvision_missing_files(tmp_path, spec, where):
    with pytest.raises(DataError) as e:
        build_dataset(spec, "train", data_root=str(tmp_path / "nothing"))
    msg = str(e.value)
    assert "--download" in msg and "--data-root" in msg and where in msg and "\n" not in msg
    assert not (tmp_path / "nothing").exists()  # nothing fetched, nothing created


def test_torchvision_corrupt_file(tmp_path):
    _write_mnist_like(tmp_path, "MNIST", np.random.default_rng(4))
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="cannot read mnist"):
        build_dataset("mnist", "train", data_root=str(tmp_path))


# --------------------------------------------------------------------------- folders


def _save(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _mixed_images(rng) -> list[Image.Image]:
    """One image per awkward mode and size (W x H: 10x20, 64x48, 28x28, ...)."""
    p = Image.fromarray(rng.integers(0, 4, (20, 10), dtype=np.uint8), "L").convert("P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    p.info["transparency"] = 0
    return [
        Image.fromarray(rng.integers(0, 256, (20, 10), dtype=np.uint8)),  # L 10x20
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)),  # RGB 64x48
        Image.fromarray(rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)),  # RGBA 28x28
        p,  # P with a transparent entry, 10x20
        Image.fromarray(rng.integers(0, 65536, (30, 28), dtype=np.uint16)),  # I;16 28x30
    ]


@pytest.fixture(scope="module")
def class_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(5)
    for cls in ("cats", "dogs"):
        for i, img in enumerate(_mixed_images(rng)):
            _save(root / cls / f"{i}.{'jpg' if img.mode == 'RGB' else 'png'}", img)
    _save(root / "dogs" / "nested" / "deep.bmp", Image.new("RGB", (5, 7), (9, 9, 9)))
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "cats" / ".hidden.png").write_bytes(b"resource fork, not an image")
    return root


@pytest.mark.parametrize(("channels", "size"), [(1, (28, 28)), (3, (16, 24))])
def test_folder_classes_modes_sizes(class_tree, channels, size):
    spec = f"folder:{class_tree}"
    sets = {s: build_dataset(spec, s, channels=channels, image_size=size, val_fraction=0.3)
            for s in D.SPLITS}
    assert [len(sets["train"]), len(sets["val"])] == [8, 3]
    all_paths = sorted({*sets["train"].paths, *sets["val"].paths})
    assert len(all_paths) == 11 and not set(sets["train"].paths) & set(sets["val"].paths)
    for ds in sets.values():
        assert ds.info.class_names == ("cats", "dogs") and ds.info.num_classes == 2
        assert list(ds.paths) == sorted(ds.paths)
        assert ds.info.data == spec and ds.info.channels == channels
        for i in range(len(ds)):
            image, label = ds[i]
            assert image.dtype == torch.float32 and image.shape == (channels, *size)
            assert 0 <= image.min() and image.max() <= 1
            assert label == ("cats", "dogs").index(ds.paths[i].relative_to(class_tree).parts[0])
    assert Counter(sets["val"].labels.tolist()) in ({0: 2, 1: 1}, {0: 1, 1: 2})
    again = build_dataset(spec, "val", channels=channels, image_size=size, val_fraction=0.3)
    assert again.paths == sets["val"].paths


def test_folder_flat_unlabelled_and_exact_pixels(tmp_path):
    rng = np.random.default_rng(6)
    arrays = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(10)]
    for i, a in enumerate(arrays):
        _save(tmp_path / f"img{i:02d}.png", Image.fromarray(a))
    train = build_dataset(f"folder:{tmp_path}", "train")
    val = build_dataset(f"folder:{tmp_path}", "val")
    assert (len(train), len(val)) == (9, 1)
    assert train.info.num_classes == 0 and train.info.class_names == ()
    assert set(train.labels.tolist()) == {-1} and val[0][1] == -1
    for ds in (train, val):
        for i in range(len(ds)):
            assert np.array_equal(_u8(ds[i][0])[0], arrays[ds.indices[i]])


def test_folder_corrupt_image_fails_when_loaded(tmp_path):
    _save(tmp_path / "a" / "good.png", Image.new("L", (28, 28)))
    _save(tmp_path / "a" / "good2.png", Image.new("L", (28, 28)))
    bad = tmp_path / "a" / "x.png"
    bad.write_bytes(b"not an image")
    # Scanning does not open files: the split builds, the bad item fails when read.
    ds = next(d for s in D.SPLITS if bad in (d := build_dataset(f"folder:{tmp_path}", s)).paths)
    with pytest.raises(DataError) as e:
        ds[ds.paths.index(bad)]
    assert str(e.value) == (
        f"cannot read image {bad} (cannot identify image file); remove or replace it"
    )


def test_folder_errors(tmp_path):
    def fails(spec: str, match: str, **kw) -> str:
        with pytest.raises(DataError, match=match) as e:
            build_dataset(spec, "train", **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    fails(f"folder:{tmp_path / 'missing'}", "does not exist")
    (tmp_path / "file.png").write_bytes(b"")
    fails(f"folder:{tmp_path / 'file.png'}", "not a directory")
    (tmp_path / "empty").mkdir()
    assert ".png" in fails(f"folder:{tmp_path / 'empty'}", "no image files")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hi")
    assert ".jpg" in fails(f"folder:{tmp_path / 'texts'}", "no image files")
    _save(tmp_path / "one" / "only.png", Image.new("L", (4, 4)))
    with pytest.raises(DataError, match="split 'val' would be empty"):
        build_dataset(f"folder:{tmp_path / 'one'}", "val")
    _save(tmp_path / "mixed" / "loose.png", Image.new("L", (4, 4)))
    _save(tmp_path / "mixed" / "cls" / "a.png", Image.new("L", (4, 4)))
    fails(f"folder:{tmp_path / 'mixed'}", "both class subfolders and loose images")
    _save(tmp_path / "holes" / "cls" / "a.png", Image.new("L", (4, 4)))
    (tmp_path / "holes" / "empty_cls").mkdir()
    fails(f"folder:{tmp_path / 'holes'}", "has no image files")


# --------------------------------------------------------------------------- datamodule


def test_datamodule_loaders():
    dm = VQDataModule(batch_size=64)
    dm.setup("fit")
    assert dm.info.num_classes == 10 and dm.info.split == "train"
    train, val = dm.train_dataloader(), dm.val_dataloader()
    images, labels = next(iter(train))
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64
    assert train.drop_last and len(train) == 4500 // 64
    assert not val.drop_last and len(val) == 8
    assert [len(b[1]) for b in val][-1] == 500 - 7 * 64
    assert not train.persistent_workers and not train.pin_memory
    # Same seed -> same order (every call, every module); other seed -> other order;
    # epochs differ, and epoch k's order depends only on (seed, k) so --resume replays it.
    fresh = dm.train_dataloader()
    order = list(fresh.batch_sampler)
    assert list(dm.train_dataloader().batch_sampler) == order
    assert list(fresh.batch_sampler) == order  # no hidden generator state
    fresh.sampler.set_epoch(1)
    epoch1 = list(fresh.batch_sampler)
    assert epoch1 != order
    other = dm.train_dataloader()
    other.sampler.set_epoch(1)
    assert list(other.batch_sampler) == epoch1
    assert sorted(i for b in order for i in b) != list(range(4500))  # 4500 % 64 dropped
    assert list(VQDataModule(batch_size=64).train_dataloader().batch_sampler) == order
    assert list(VQDataModule(batch_size=64, seed=1).train_dataloader().batch_sampler) != order
    # Val and dataloader(split) keep dataset order.
    assert [i for b in val.batch_sampler for i in b] == list(range(500))
    enc = dm.dataloader("val", batch_size=100)
    assert torch.equal(next(iter(enc))[0][3], dm.dataset("val")[3][0])
    assert dm.dataset("train") is dm.dataset("train")  # built once


def test_datamodule_small_dataset_and_arguments(tmp_path):
    for i in range(6):
        _save(tmp_path / f"{i}.png", Image.new("RGB", (12, 10), (i, i, i)))
    dm = VQDataModule(f"folder:{tmp_path}", channels=3, image_size=(8, 8), batch_size=16,
                      val_fraction=0.2, num_workers=1)
    loader = dm.train_dataloader()
    assert not loader.drop_last and loader.persistent_workers
    dm_batches = list(VQDataModule(f"folder:{tmp_path}", channels=3, image_size=(8, 8),
                                   batch_size=16, val_fraction=0.2).train_dataloader())
    assert len(dm_batches) == 1 and dm_batches[0][0].shape == (5, 3, 8, 8)
    assert dm_batches[0][1].tolist() == [-1] * 5
    for kw in ({"data": "nope"}, {"channels": 4}, {"batch_size": 0}, {"num_workers": -1},
               {"image_size": (8, -8)}, {"val_fraction": 2}):
        with pytest.raises(DataError):
            VQDataModule(**kw)
