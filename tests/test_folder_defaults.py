"""Folder-aware defaults (issue 11 part 3): train-vqvae infers channels, image size and preset
from a sample of a folder's images, says what it saw and chose, and every value stays
overridable; the prior's depth follows the code grid (checked against the dependency mask)
and its width the data size and device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.pipeline.cli import build_parser
from vqgen.pipeline.cli.stage1 import PRESET_NAMES, vqvae_config
from vqgen.pipeline.cli.stage2 import prior_config
from vqgen.stage1_vqvae.codes import FORMAT_VERSION
from vqgen.stage1_vqvae.lit import PRESETS
from vqgen.stage2_prior.layers import dependency_mask
from vqgen.stage2_prior.sizing import LARGE_DATA_MAPS, prior_defaults, sees_whole_grid
from vqgen.stage2_prior.train import PRIOR_DEFAULTS


def write_images(root: Path, specs: list[tuple[str, int, int]], classes: int = 2) -> Path:
    """specs: (Pillow mode, width, height) per image, spread over ``classes`` class folders."""
    rng = np.random.default_rng(0)
    for i, (mode, w, h) in enumerate(specs):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        bands = 1 if mode == "L" else 3
        arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
        Image.fromarray(arr[..., 0] if bands == 1 else arr, mode).save(d / f"{i:03d}.png")
    return root


def config(folder: Path, *extra: str) -> tuple[dict, dict, list[str]]:
    args = build_parser().parse_args(
        ["train-vqvae", "--data", f"folder:{folder}", "--out", "unused", *extra])
    lines: list[str] = []
    model, data, _ = vqvae_config(args, log=lines.append)
    return model, data, lines


def test_preset_names_match_the_table_and_grids_are_as_documented():
    assert tuple(PRESETS) == PRESET_NAMES
    grids = {name: tuple(s // p["downsample"] for s in p["image_size"]) for name, p in PRESETS.items()}
    assert grids == {"mnist": (7, 7), "cifar": (8, 8), "px64": (16, 16), "px128": (16, 16)}


def test_colour_64px_folder_gets_the_64px_preset_and_says_so(tmp_path: Path):
    folder = write_images(tmp_path / "f", [("RGB", 64, 64)] * 6 + [("RGB", 80, 64)] * 2)
    model, data, lines = config(folder)
    assert data["channels"] == 3 and data["image_size"] == (64, 64)
    assert model["downsample"] == 4 and model["num_codes"] == PRESETS["px64"]["num_codes"]
    text = "\n".join(lines)
    assert "8 images, 2 classes" in text and "RGB 8" in text and "64x64 6" in text
    assert "channels 3, image size 64x64, codes 16x16 (downsample 4), preset px64" in text


def test_every_inferred_value_stays_overridable(tmp_path: Path):
    folder = write_images(tmp_path / "f", [("RGB", 64, 64)] * 4)
    model, data, _ = config(folder, "--channels", "1", "--image-size", "48", "--num-codes", "64")
    assert (data["channels"], data["image_size"], model["num_codes"]) == (1, (48, 48), 64)
    # --downsample alone: the inferred size is kept and the printed grid follows it
    model, data, lines = config(folder, "--downsample", "8")
    assert model["downsample"] == 8 and data["image_size"] == (64, 64)
    assert "codes 8x8 (downsample 8)" in "\n".join(lines)
    # an explicit preset skips the scan entirely
    model, data, lines = config(folder, "--preset", "mnist")
    assert lines == [] and data["channels"] == 1 and data["image_size"] == (28, 28)


def test_mixed_modes_and_sizes_from_20_to_4000_px_get_a_summary_and_a_choice(tmp_path: Path):
    specs = ([("L", 20, 20)] * 3 + [("RGB", 40, 30), ("RGB", 120, 100), ("RGB", 140, 90)]
             + [("L", 4000, 3000)])
    folder = write_images(tmp_path / "f", specs)
    model, data, lines = config(folder)
    text = "\n".join(lines)
    # 3 of 7 colour (43%): colour wins; median short side 30 px -> the 32 px preset
    assert data["channels"] == 3 and data["image_size"] == (32, 32)
    assert "modes L 4, RGB 3" in text and "short side 20..3000 px (median 30)" in text
    assert "43% of the sampled images are colour: 3 channels" in text
    assert "sizes disagree (20 to 3000 px short side)" in text


def test_mostly_grey_small_images_get_the_mnist_preset(tmp_path: Path):
    folder = write_images(tmp_path / "f", [("L", 28, 28)] * 19 + [("RGB", 28, 28)])
    model, data, lines = config(folder)
    assert data["channels"] == 1 and data["image_size"] == (28, 28)
    assert model["num_codes"] == PRESETS["mnist"]["num_codes"]
    assert "5% of the sampled images are colour: 1 channel" in "\n".join(lines)


def test_large_photos_are_capped_at_the_128px_preset(tmp_path: Path):
    folder = write_images(tmp_path / "f", [("RGB", 600, 400)] * 3)
    model, data, lines = config(folder)
    assert data["image_size"] == (128, 128) and model["downsample"] == 8
    assert "resized down to 128 px" in "\n".join(lines)


def test_fewer_images_than_a_batch_says_so_in_one_line(tmp_path: Path):
    folder = write_images(tmp_path / "f", [("RGB", 32, 32)] * 10)
    _, data, lines = config(folder)
    notes = [ln for ln in lines if ln.startswith("note:")]
    assert notes == [f"note: about 9 training images, fewer than one batch of "
                     f"{data['batch_size']}: each epoch is a single smaller batch"]


# ----------------------------------------------------------------------------- the prior


def whole_grid_visible(code_shape: tuple[int, int], num_layers: int, kernel: int) -> bool:
    """From the dependency mask itself: every position sees all earlier ones."""
    h, w = code_shape
    for i in range(h):
        for j in range(w):
            earlier = torch.zeros(h, w, dtype=torch.bool)
            earlier[:i] = True
            earlier[i, :j] = True
            if not torch.equal(dependency_mask(i, j, code_shape, num_layers, kernel), earlier):
                return False
    return True


@pytest.mark.parametrize("shape", [(7, 7), (8, 8), (16, 16), (32, 32), (8, 20), (20, 8)])
def test_default_depth_sees_the_whole_grid(shape):
    cfg, _ = prior_defaults(PRIOR_DEFAULTS, shape, num_maps=1000, gpu=False)
    assert whole_grid_visible(shape, cfg["num_layers"], cfg["kernel_size"])
    # and the formula agrees with the mask one layer short of it
    assert not sees_whole_grid(cfg["num_layers"] - 1, cfg["kernel_size"], shape) or \
        cfg["num_layers"] == PRIOR_DEFAULTS["num_layers"]
    assert whole_grid_visible(shape, cfg["num_layers"] - 1, cfg["kernel_size"]) == \
        sees_whole_grid(cfg["num_layers"] - 1, cfg["kernel_size"], shape)


def test_the_mnist_demo_keeps_its_defaults():
    cfg, reasons = prior_defaults(PRIOR_DEFAULTS, (7, 7), num_maps=4500, gpu=False)
    assert cfg == dict(PRIOR_DEFAULTS) and reasons == []


def test_width_follows_data_size_and_device():
    small, _ = prior_defaults(PRIOR_DEFAULTS, (8, 8), num_maps=LARGE_DATA_MAPS - 1, gpu=False)
    large, why = prior_defaults(PRIOR_DEFAULTS, (8, 8), num_maps=LARGE_DATA_MAPS, gpu=False)
    gpu, _ = prior_defaults(PRIOR_DEFAULTS, (8, 8), num_maps=100, gpu=True)
    assert small["hidden"] == PRIOR_DEFAULTS["hidden"]
    assert large["hidden"] == 64 and large["head_hidden"] == 128 and "training maps" in why[0]
    assert gpu["hidden"] == 128 and gpu["batch_size"] == 128
    kept, _ = prior_defaults(PRIOR_DEFAULTS, (8, 8), num_maps=10**6, gpu=True,
                             given={"hidden": 32, "batch_size": 16})
    assert (kept["hidden"], kept["batch_size"]) == (32, 16)


def write_meta(folder: Path, code_shape: tuple[int, int], count: int) -> Path:
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "meta.json").write_text(json.dumps(dict(
        format_version=FORMAT_VERSION, num_codes=512, code_shape=list(code_shape), count=count,
        num_classes=10)))
    return folder


def test_train_prior_warns_when_the_users_depth_cannot_see_the_grid(tmp_path: Path):
    codes = write_meta(tmp_path / "codes", (16, 16), 50_000)
    parse = build_parser().parse_args
    lines: list[str] = []
    cfg, _, _ = prior_config(parse(["train-prior", "--codes", str(codes), "--accelerator", "cpu",
                                    "--num-layers", "4", "--kernel-size", "3"]), log=lines.append)
    assert (cfg["num_layers"], cfg["kernel_size"]) == (4, 3)
    warn = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warn) == 1 and "R=4" in warn[0] and "needs R >= 15" in warn[0]
    assert "--num-layers 15" in warn[0]
    # only the depth given: the kernel grows to reach; no warning
    lines.clear()
    cfg, _, _ = prior_config(parse(["train-prior", "--codes", str(codes), "--accelerator", "cpu",
                                    "--num-layers", "4"]), log=lines.append)
    assert cfg["kernel_size"] == 9 and not any(ln.startswith("warning:") for ln in lines)
    # defaults on the 16x16 grid of 50,000 maps: kernel 5, deep enough, wider
    lines.clear()
    cfg, _, _ = prior_config(parse(["train-prior", "--codes", str(codes), "--accelerator", "cpu"]),
                             log=lines.append)
    assert (cfg["kernel_size"], cfg["num_layers"], cfg["hidden"]) == (5, 8, 64)
    assert any("16x16 grid sees all codes above and to its left" in ln for ln in lines)
