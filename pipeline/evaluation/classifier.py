"""The project's scoring classifier: a small CNN trained once per training split and cached
beside the data; its penultimate features are what the Fréchet distance compares."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqgen.pipeline.evaluation.data import load_images
from vqgen.stage1_vqvae.runtime.errors import UserError

CACHE_ENV = "VQGEN_CACHE_DIR"  # overrides the user's cache folder


def user_cache_dir() -> Path:
    """Where vqgen caches what it can rebuild (the scoring classifier): ``$VQGEN_CACHE_DIR``,
    else the platform's per-user cache folder (``$XDG_CACHE_HOME/vqgen`` or
    ``~/.cache/vqgen`` on Linux, ``~/Library/Caches/vqgen`` on macOS,
    ``%LOCALAPPDATA%/vqgen/Cache`` on Windows). Never the current directory."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "vqgen"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "vqgen" / "Cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache") / "vqgen"


# Part of the classifier's cache key: change any value and a new classifier is trained.
CLASSIFIER_CONFIG: dict[str, Any] = dict(
    version=1, width=16, features=128, epochs=8, batch_size=64, lr=3e-3, shift=2, seed=0,
)


class SmallCNN(nn.Module):
    """images float (B, C, H, W) in [0, 1] -> logits (B, num_classes); :meth:`features` gives
    the penultimate layer (B, features), which the Fréchet distance compares."""

    def __init__(self, channels: int, num_classes: int, width: int = 16, features: int = 128) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(channels, width), nn.MaxPool2d(2),
            *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(4 * width * 16, features), nn.ReLU(),
        )
        self.head = nn.Linear(features, num_classes)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images - 0.5)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def classifier_key(train_ds, val_fraction: float, split_seed: int,
                   config: dict = CLASSIFIER_CONFIG) -> str:
    """16 hex digits naming (data spec, channels, size, val_fraction, split seed, #train,
    classifier config) -- everything the cached classifier's weights depend on."""
    info = train_ds.info
    blob = json.dumps({
        "data": info.data, "channels": info.channels, "image_size": list(info.image_size),
        "val_fraction": float(val_fraction), "split_seed": int(split_seed),
        "num_train": len(train_ds), "config": config,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def classifier_path(cache_dir: str | os.PathLike, train_ds, val_fraction: float, split_seed: int,
                    config: dict = CLASSIFIER_CONFIG) -> Path:
    """``cache_dir/classifier-<kind>-<key>.pt``."""
    from vqgen.stage1_vqvae.data import parse_data_spec

    kind, _ = parse_data_spec(train_ds.info.data)
    key = classifier_key(train_ds, val_fraction, split_seed, config)
    return Path(cache_dir) / f"classifier-{kind}-{key}.pt"


def train_classifier(train_ds, config: dict = CLASSIFIER_CONFIG, device: str = "cpu") -> SmallCNN:
    """Adam + one-cycle LR, ``epochs`` passes over the training split with a random shift
    of up to ``shift`` pixels per batch (light augmentation). Seeded by ``config["seed"]``
    without touching the global RNG."""
    info = train_ds.info
    x_all = load_images(train_ds)
    y_all = torch.from_numpy(np.asarray(train_ds.labels, dtype=np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config["seed"]))
        model = SmallCNN(info.channels, info.num_classes, config["width"], config["features"])
    model = model.to(device).train()
    gen = torch.Generator().manual_seed(int(config["seed"]))
    bs, n, s = int(config["batch_size"]), len(x_all), int(config["shift"])
    steps = int(config["epochs"]) * ((n + bs - 1) // bs)
    opt = torch.optim.Adam(model.parameters(), lr=float(config["lr"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, float(config["lr"]), total_steps=steps)
    h, w = info.image_size
    for _ in range(int(config["epochs"])):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            x = x_all[idx]
            if s > 0:
                dy, dx = torch.randint(0, 2 * s + 1, (2,), generator=gen).tolist()
                x = F.pad(x, (s, s, s, s))[:, :, dy : dy + h, dx : dx + w]
            loss = F.cross_entropy(model(x.to(device)), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def get_classifier(train_ds, cache_dir: str | os.PathLike, *, val_fraction: float, split_seed: int,
                   config: dict = CLASSIFIER_CONFIG, device: str = "cpu",
                   log: Callable[[str], None] = print) -> tuple[SmallCNN, dict]:
    """The cached classifier for this training split, trained (and saved atomically) on a miss.

    ``val_fraction`` and ``split_seed`` are the ones that made ``train_ds`` (the VQ-VAE's).

    The file holds {"state_dict", "meta"} and loads with ``torch.load(weights_only=True)``.
    Returns (model in eval mode on ``device``, info: path, reused, train_seconds).
    """
    from vqgen.stage1_vqvae.runtime.fsutil import atomic_file

    info = train_ds.info
    if info.num_classes < 2:
        raise UserError(f"the classifier needs labelled data with >= 2 classes; {info.data} has "
                         f"{info.num_classes}")
    path = classifier_path(cache_dir, train_ds, val_fraction, split_seed, config)
    key = classifier_key(train_ds, val_fraction, split_seed, config)
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            meta = blob["meta"]
            if meta.get("key") != key:
                raise ValueError("key differs")
            model = SmallCNN(info.channels, info.num_classes, config["width"], config["features"])
            model.load_state_dict(blob["state_dict"])
            log(f"classifier: reusing {path}")
            return model.to(device).eval(), {"path": str(path), "reused": True,
                                              "train_seconds": meta.get("train_seconds")}
        except Exception as e:  # a damaged cache file is retrained, never trusted
            log(f"classifier: {path} is unusable ({type(e).__name__}: {e}); training a new one")
    log(f"classifier: training on {len(train_ds)} {info.data} images "
        f"({config['epochs']} epochs) -> {path}")
    t0 = time.monotonic()
    model = train_classifier(train_ds, config, device)
    seconds = round(time.monotonic() - t0, 2)
    meta = {"key": key, "config": dict(config), "data": info.data, "channels": info.channels,
            "image_size": list(info.image_size), "num_classes": info.num_classes,
            "class_names": list(info.class_names), "num_train": len(train_ds),
            "train_seconds": seconds}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)
    return model.eval(), {"path": str(path), "reused": False, "train_seconds": seconds}


@torch.inference_mode()
def classify(model: SmallCNN, images: Tensor, *, batch_size: int = 500,
             device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """images float (N, C, H, W) in [0, 1] -> (features float64 (N, F), predicted class (N,))."""
    model = model.to(device).eval()
    feats, preds = [], []
    for s in range(0, images.shape[0], batch_size):
        f = model.features(images[s : s + batch_size].to(device))
        feats.append(f.cpu().double())
        preds.append(model.head(f).argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()
