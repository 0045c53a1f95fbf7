"""``vqgen evaluate``: one report on both stages, the whole model and its samples.

Every number comes from a function here (or ``pipeline.metrics``) that a benchmark can
call on its own, so a benchmark and the report cannot disagree:

- :func:`run_stage1` / :func:`stage1_metrics`: held-out MSE, PSNR, SSIM, codebook usage,
  perplexity, and -log2 p(x | z) under a discretized Gaussian for a grid of sigmas;
- :func:`prior_nll` / :func:`prior_metrics`: held-out NLL of the prior beside the uniform
  and unigram baselines, and the per-position NLL map;
- :func:`whole_model_bound`: the VQ-VAE paper's bits/dim bound;
- :func:`get_classifier` (trained once, cached beside the data), :func:`reference_metrics`
  and :func:`sample_metrics`: Fréchet distance of classifier features, class accuracy and
  class entropy of generated samples, with real and blurred-real references;
- :func:`evaluate`: all of the above, written as ``metrics.json`` + ``index.html``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pipeline import metrics as M
from pipeline.defaults import DEFAULT_NUM_SAMPLES, DEMO_GUIDANCE, DEMO_TEMPERATURE
from stage1_vqvae.runtime.errors import UserError

# sigma of p(x | z) on the [0, 1] scale: 1/1000 .. 1/2, 28 steps (ratio ~1.26)
SIGMA_GRID: tuple[float, ...] = tuple(float(s) for s in np.geomspace(1e-3, 0.5, 28))
REPORT_VERSION = 1
# Part of the classifier's cache key: change any value and a new classifier is trained.
CLASSIFIER_CONFIG: dict[str, Any] = dict(
    version=1, width=16, features=128, epochs=8, batch_size=64, lr=3e-3, shift=2, seed=0,
)
BOUND_FORMULA = "bits/dim = (-log2 p(z_q(x)) - log2 p(x | z_q(x))) / (C*H*W)"


class Notes(list):
    """The report's "notes": each one is also printed (stderr) when it is added."""

    def add(self, text: str) -> None:
        self.append(text)
        print(f"note: {text}", file=sys.stderr, flush=True)


def _json_float(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# ----------------------------------------------------------------------------- data


def load_images(dataset, indices: Sequence[int] | np.ndarray | None = None) -> Tensor:
    """Items of an ImageDataset -> float (n, C, H, W) in [0, 1] (all items when no indices)."""
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    if getattr(dataset, "images", None) is not None:  # in memory: one indexing op
        return dataset.images[torch.from_numpy(idx)].float().div_(255.0)
    return torch.stack([dataset[int(i)][0] for i in idx])


def eval_datasets(lit, data: str | None = None, *, split: str = "val", data_root: str | None = None,
                  download: bool = False):
    """(train split, evaluated split) of ``data`` (default: the VQ-VAE's), split exactly as the
    VQ-VAE's training split it (its channels, image size, val_fraction and seed)."""
    from stage1_vqvae.data import build_dataset

    hp = lit.hparams
    kw = dict(data_root=data_root or hp.data_root, download=download, channels=int(hp.channels),
              image_size=tuple(hp.image_size), val_fraction=float(hp.val_fraction),
              seed=int(hp.seed))
    spec = data or hp.data
    return build_dataset(spec, "train", **kw), build_dataset(spec, split, **kw)


# ----------------------------------------------------------------------------- stage one


@dataclass
class Stage1Pass:
    """Everything one pass of the VQ-VAE over a split yields (N images, S sigmas)."""

    codes: Tensor        # int64 (N, h, w)
    labels: Tensor       # int64 (N,), -1 when unlabelled
    sse: Tensor          # float64 (N,) sum of squared errors of the clamped reconstruction
    ssim: Tensor | None  # float64 (N,), None when the images are smaller than the window
    recon_bits: Tensor   # float64 (N, S): -log2 p(x | z_q(x)) for each sigma
    sigmas: tuple[float, ...]
    num_codes: int
    dims: int            # C * H * W
    preview: tuple[Tensor, Tensor]  # up to 32 originals and reconstructions (n, C, H, W)


@torch.inference_mode()
def run_stage1(lit, dataset, *, batch_size: int = 256, device: str = "cpu",
               sigmas: Sequence[float] = SIGMA_GRID) -> Stage1Pass:
    """Encode and decode every image of ``dataset`` (items (image (C,H,W) in [0,1], label)).

    Images are taken as 8-bit (k/255), as the data sets store them. The discretized
    Gaussian's mean is the raw decoder output (not clamped: the end levels 0 and 255 own
    the Gaussian's tails, so clamping would only lose probability); MSE, PSNR and SSIM use
    the reconstruction clamped to [0, 1], like training's validation.
    """
    model = lit.model.to(device).eval()
    codes, labels, sse, ssims, rbits = [], [], [], [], []
    preview_x, preview_r = [], []
    h, w = model.image_size
    with_ssim = min(h, w) >= 11
    n_seen = 0
    for images, lab in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = M.quantize_8bit(images.to(device))
        c = model.encode(x)
        mean = model.decoder(model.quantizer.lookup(c))
        recon = mean.clamp(0, 1)
        codes.append(c.cpu())
        labels.append(torch.as_tensor(lab, dtype=torch.long))
        sse.append(((recon - x).double() ** 2).flatten(1).sum(1).cpu())
        if with_ssim:
            ssims.append(M.ssim(x, recon).cpu())
        rbits.append(M.recon_bits(x, mean, sigmas).cpu())
        if n_seen < 32:
            preview_x.append(x[: 32 - n_seen].cpu())
            preview_r.append(recon[: 32 - n_seen].cpu())
        n_seen += x.shape[0]
    if n_seen == 0:
        raise UserError("the evaluated split holds no images")
    return Stage1Pass(
        codes=torch.cat(codes), labels=torch.cat(labels), sse=torch.cat(sse),
        ssim=torch.cat(ssims) if with_ssim else None, recon_bits=torch.cat(rbits),
        sigmas=tuple(float(s) for s in sigmas), num_codes=int(model.num_codes),
        dims=int(model.in_channels * h * w),
        preview=(torch.cat(preview_x), torch.cat(preview_r)),
    )


def stage1_metrics(lit=None, dataset=None, *, result: Stage1Pass | None = None,
                   batch_size: int = 256, device: str = "cpu") -> dict:
    """Held-out stage-one metrics (JSON-ready). Give (lit, dataset), or a :func:`run_stage1`
    ``result`` to reuse.

    mse: mean over all subpixels (images in [0, 1]); psnr_db = 10 log10(1 / mse) of that
    mean (as training logs val/psnr); ssim: mean over images; codebook_usage: distinct
    codes in the whole split / K; perplexity: exp(entropy) of the split's code histogram.
    """
    if result is None:
        if lit is None or dataset is None:
            raise UserError("stage1_metrics needs (lit, dataset) or result=")
        result = run_stage1(lit, dataset, batch_size=batch_size, device=device)
    n = int(result.codes.shape[0])
    mse = float(result.sse.sum() / (n * result.dims))
    counts = torch.bincount(result.codes.flatten(), minlength=result.num_codes).numpy()
    per_image_psnr = [M.psnr_from_mse(float(s) / result.dims) for s in result.sse]
    return {
        "num_images": n,
        "mse": mse,
        "psnr_db": M.psnr_from_mse(mse),
        "psnr_db_mean_per_image": float(np.mean(per_image_psnr)),
        "ssim": None if result.ssim is None else float(result.ssim.mean()),
        "num_codes": result.num_codes,
        "codes_used": int((counts > 0).sum()),
        "codebook_usage": M.usage(counts),
        "perplexity": M.perplexity(counts),
        "code_counts": [int(c) for c in counts],
    }


# ----------------------------------------------------------------------------- stage two


def train_code_maps(lit, vqvae_path: str | os.PathLike, train_ds, *, batch_size: int = 256,
                    device: str = "cpu") -> tuple[np.ndarray, str]:
    """Code maps (N, h, w) of the training split and where they came from.

    ``<run>/codes/train`` is used when it was written by this very checkpoint (sha256) from
    this very split (source and count); otherwise the split is encoded in memory.
    """
    from stage1_vqvae.codes import CodeMapError, read_code_maps
    from stage1_vqvae.runtime.checkpoint import file_sha256

    folder = Path(vqvae_path).parent / "codes" / "train"
    if (folder / "meta.json").is_file():
        try:
            maps = read_code_maps(folder)
            meta = maps.meta
            if (meta.get("vqvae_sha256") == file_sha256(vqvae_path) and len(maps) == len(train_ds)
                    and meta.get("source") == train_ds.info.source
                    and int(maps.num_codes) == int(lit.num_codes)):
                return np.asarray(maps.codes).astype(np.int64), str(folder)
        except CodeMapError:
            pass
    model = lit.model.to(device).eval()
    out = []
    with torch.inference_mode():
        for images, _ in DataLoader(train_ds, batch_size=batch_size, shuffle=False):
            out.append(model.encode(M.quantize_8bit(images.to(device))).cpu())
    return torch.cat(out).numpy(), "encoded in memory"


@torch.inference_mode()
def prior_nll(prior, codes: Tensor | np.ndarray, labels: Tensor | None = None, *,
              batch_size: int = 256, device: str = "cpu") -> Tensor:
    """Per-position NLL in nats: codes int (N, h, w) -> float64 (N, h, w).

    labels int (N,) conditions a class-conditional prior; None means the null class
    (what unconditional sampling draws from), or no label for an unconditional prior.
    """
    model = prior.model.to(device).eval()
    codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, Tensor) else codes).long()
    out = []
    for s in range(0, codes.shape[0], batch_size):
        c = codes[s : s + batch_size].to(device)
        lab = None if labels is None else labels[s : s + batch_size].to(device)
        out.append(F.cross_entropy(model(c, lab), c, reduction="none").double().cpu())
    return torch.cat(out)


def prior_metrics(prior, train_codes: np.ndarray | Tensor, val_codes: np.ndarray | Tensor,
                  val_labels: Tensor | None = None, *, batch_size: int = 256, device: str = "cpu",
                  nll: Tensor | None = None, nll_uncond: Tensor | None = None) -> dict:
    """Held-out NLL of the prior beside the uniform and unigram baselines (JSON-ready).

    train_codes / val_codes int (N, h, w); val_labels int (N,) for a class-conditional
    prior (None: the null class only). ``nll`` / ``nll_uncond`` (from :func:`prior_nll`)
    skip recomputing. Unigram: the training split's code frequencies; its entropy in bits,
    and (the comparable number) the cross-entropy of the held-out codes under those
    frequencies, add-one smoothed so a code unseen in training costs finite bits.
    """
    k = int(prior.num_codes)
    conditional = prior.model.num_classes > 0 and val_labels is not None
    if nll_uncond is None:
        nll_uncond = prior_nll(prior, val_codes, None, batch_size=batch_size, device=device)
    if conditional and nll is None:
        nll = prior_nll(prior, val_codes, val_labels, batch_size=batch_size, device=device)
    main = nll if conditional else nll_uncond
    assert main is not None
    positions = int(np.prod(main.shape[1:]))
    tr = np.bincount(np.asarray(train_codes).astype(np.int64).ravel(), minlength=k)
    va = np.bincount(np.asarray(val_codes).astype(np.int64).ravel(), minlength=k)
    nats = float(main.mean())
    out = {
        "num_codes": k,
        "code_shape": [int(s) for s in main.shape[1:]],
        "num_heldout_maps": int(main.shape[0]),
        "conditional": bool(conditional),
        "nll_nats_per_code": nats,
        "bits_per_code": nats / M.LN2,
        "bits_per_map": nats / M.LN2 * positions,
        "nll_uncond_nats_per_code": float(nll_uncond.mean()),
        "bits_per_code_uncond": float(nll_uncond.mean()) / M.LN2,
        "baselines": {
            "uniform_bits_per_code": math.log2(k),
            "unigram_train_entropy_bits_per_code": M.entropy(tr, base=2),
            "unigram_heldout_cross_entropy_bits_per_code": M.cross_entropy(va, tr + 1.0, base=2),
            "unigram_definition": (
                "p(code) = frequency of the code in the TRAINING split's code maps; "
                "train_entropy = H(p) in bits; heldout_cross_entropy = -mean log2 p(code) over "
                "the held-out codes with add-one smoothed p (the number comparable to the "
                "prior's held-out bits per code)"),
        },
        "per_position_bits": (main.mean(0) / M.LN2).tolist(),
        "per_position_from": "class-conditional NLL" if conditional else "unconditional NLL",
    }
    return out


def whole_model_bound(stage1: Stage1Pass, prior_bits_per_image: Tensor | np.ndarray) -> dict:
    """The VQ-VAE paper's bound on the held-out NLL in bits per dimension.

    q(z | x) is one-hot, so KL(q || p(z)) = -log p(z_q(x)) and
    NLL(x) <= -log p(x | z_q(x)) - log p(z_q(x)); p(x | z) is a discretized Gaussian over the
    256 levels of each subpixel, mean = decoder output, one global sigma picked on
    ``SIGMA_GRID`` to minimise the bound. prior_bits_per_image: (N,) -log2 p(z_q(x)).
    """
    res = M.bits_per_dim_bound(stage1.recon_bits, prior_bits_per_image, stage1.dims, stage1.sigmas)
    res["formula"] = BOUND_FORMULA
    res["dims"] = stage1.dims
    res["sigma_grid"] = f"geomspace({stage1.sigmas[0]:g}, {stage1.sigmas[-1]:g}, {len(stage1.sigmas)})"
    res["sigma_chosen_on"] = "the evaluated split"
    return res


# ----------------------------------------------------------------------------- classifier


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
    from stage1_vqvae.data import parse_data_spec

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
    from stage1_vqvae.runtime.fsutil import atomic_file

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
        feats.append(f.double().cpu())
        preds.append(model.head(f).argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


# ----------------------------------------------------------------------------- samples


def reference_metrics(classifier: SmallCNN, eval_ds, train_ds, num: int, *, seed: int = 0,
                      batch_size: int = 500, device: str = "cpu") -> dict:
    """The classifier's held-out accuracy and the two Fréchet-distance reference points.

    real_vs_real: ``num`` random training images vs the whole evaluated split (the floor
    for that ``num``); blurred: the same images after a 3x3 box blur (replicate padding) vs
    the evaluated split ("slightly off"). ``num`` must be <= len(train_ds).
    Returns a dict; the evaluated split's features are under "_eval_features" (not JSON).
    """
    if num > len(train_ds):
        raise UserError(f"num {num} > {len(train_ds)} training images")
    ev = load_images(eval_ds)
    ev_feats, ev_pred = classify(classifier, ev, batch_size=batch_size, device=device)
    labels = np.asarray(eval_ds.labels)
    idx = np.sort(np.random.default_rng(seed).permutation(len(train_ds))[:num])
    tr = load_images(train_ds, idx)
    tr_feats, _ = classify(classifier, tr, batch_size=batch_size, device=device)
    bl_feats, _ = classify(classifier, M.quantize_8bit(M.box_blur3(tr)), batch_size=batch_size,
                           device=device)
    k = train_ds.info.num_classes
    return {
        "classifier_heldout_accuracy": float((ev_pred == labels).mean()),
        "num_eval_images": int(len(eval_ds)),
        "num_reference": int(num),
        "fd_real_vs_real": M.frechet_distance(tr_feats, ev_feats),
        "fd_blurred_vs_real": M.frechet_distance(bl_feats, ev_feats),
        "heldout_class_entropy_nats": M.entropy(np.bincount(ev_pred, minlength=k)),
        "_eval_features": ev_feats,
    }


def even_labels(num: int, num_classes: int) -> Tensor:
    """``num`` labels spread evenly over the classes, sorted: counts differ by at most one."""
    return (torch.arange(num) * num_classes) // num


def sample_metrics(prior, vqvae, classifier: SmallCNN | None, eval_ds, *, num_samples: int,
                   seed: int = 0, guidance: float = DEMO_GUIDANCE,
                   temperature: float = DEMO_TEMPERATURE, batch_size: int = 256,
                   device: str = "cpu", eval_features: np.ndarray | None = None
                   ) -> tuple[dict, dict[str, Tensor]]:
    """Sample the prior (class-conditional when it has classes, and unconditional), decode,
    and score the samples with the classifier (when there is one).

    Class-conditional: ``num_samples`` labels spread evenly over the classes, ``guidance``,
    ``temperature``, seed ``seed``; reports the fraction classified as the requested class
    and the Fréchet distance to the evaluated split (the accuracy only when the classifier
    has the prior's number of classes). Unconditional: no label, guidance 1,
    same temperature, seed ``seed + 1``; reports the entropy of the predicted-class histogram
    (nats, and / log K) and the Fréchet distance. Samples are 8-bit quantised first, like
    the real images. Returns (metrics, {"conditional": images, "unconditional": images}).
    """
    from pipeline.generate import sample

    images: dict[str, Tensor] = {}
    out: dict[str, Any] = {}
    if classifier is not None and eval_features is None:
        eval_features, _ = classify(classifier, load_images(eval_ds), device=device)
    k = int(prior.model.num_classes)
    runs = []
    if k > 0:
        runs.append(("conditional", even_labels(num_samples, k), guidance, seed))
    runs.append(("unconditional", None, 1.0, seed + 1))
    for name, labels, g, s in runs:
        t0 = time.monotonic()
        res = sample(prior, vqvae, num_samples, labels=labels, guidance=g, temperature=temperature,
                     seed=s, batch_size=batch_size, device=device)
        imgs = M.quantize_8bit(res.images)
        images[name] = imgs
        entry: dict[str, Any] = {"num": num_samples, "guidance": g, "temperature": temperature,
                                 "seed": s, "labels": "even over classes" if labels is not None
                                 else None, "sample_seconds": round(time.monotonic() - t0, 2)}
        if classifier is not None:
            feats, pred = classify(classifier, imgs, device=device)
            entry["fd"] = M.frechet_distance(feats, eval_features)
            nk = classifier.head.out_features
            hist = np.bincount(pred, minlength=nk)
            entry["predicted_class_counts"] = [int(c) for c in hist]
            if labels is None:
                ent = M.entropy(hist)
                entry["class_entropy_nats"] = ent
                entry["class_entropy_fraction_of_log_k"] = ent / math.log(nk)
            elif nk == k:  # score the requested class only if the classifier knows those classes
                lab = labels.numpy()
                entry["class_accuracy"] = float((pred == lab).mean())
                entry["per_class_accuracy"] = [
                    _json_float(float((pred[lab == c] == c).mean()) if (lab == c).any() else None)
                    for c in range(k)]
        out[name] = entry
    return out, images


# ----------------------------------------------------------------------------- evaluate


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, expected a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds files; pass --overwrite or another --out")


def _default_cache(data_root: str) -> Path:
    return Path(data_root) / ".vqgen_cache"


def evaluate(
    vqvae_path: str | os.PathLike | None,
    prior_path: str | os.PathLike | None,
    data: str | None,
    out_dir: str | os.PathLike,
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    split: str = "val",
    guidance: float = DEMO_GUIDANCE,
    temperature: float = DEMO_TEMPERATURE,
    batch_size: int = 256,
    device: str = "cpu",
    classifier_cache: str | os.PathLike | None = None,
    data_root: str | None = None,
    download: bool = False,
    overwrite: bool = False,
    classifier_config: dict | None = None,
    sigmas: Sequence[float] = SIGMA_GRID,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluate a VQ-VAE (and its prior) and write ``out_dir/metrics.json`` + ``index.html``
    (PNG plots beside it). Returns the metrics dict written to metrics.json.

    ``vqvae_path`` may be None when ``prior_path`` records its VQ-VAE; ``prior_path`` None
    gives a stage-one-only report. ``data`` None: the VQ-VAE's data set. The report is built
    in a temp folder and renamed into place at the end (never half written).
    ``classifier_config`` (default ``CLASSIFIER_CONFIG``) and ``sigmas`` (the bound's grid)
    are knobs for tests and benchmarks; anything unusual lands in the report's "notes".
    """
    from pipeline.generate import load_pair
    from pipeline.report import plot_code_histogram, plot_curves, plot_nll_heatmap, write_html
    from stage1_vqvae.lit import load_vqvae
    from stage1_vqvae.runtime.fsutil import atomic_dir
    from stage1_vqvae.runtime.grid import save_grid

    t_start = time.monotonic()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    if vqvae_path is None and prior_path is None:
        raise UserError("nothing to evaluate; pass --vqvae CKPT and/or --prior CKPT")
    if not isinstance(num_samples, int) or num_samples < 2:
        raise UserError(f"--num-samples {num_samples} must be an integer >= 2")
    if split not in ("train", "val"):
        raise UserError(f"--split {split!r} must be train or val")
    _check_out(out, overwrite)
    config = dict(classifier_config or CLASSIFIER_CONFIG)
    notes = Notes()

    t0 = time.monotonic()
    prior = None
    if prior_path is not None:
        prior, lit = load_pair(prior_path, vqvae_path, device)
        if vqvae_path is None:
            vqvae_path = prior.hparams.vqvae_checkpoint
    else:
        lit = load_vqvae(vqvae_path, device)
    hp = lit.hparams
    data = data or hp.data
    data_root = data_root or hp.data_root
    if data != hp.data:
        notes.add(f"evaluating on {data}, but the VQ-VAE was trained on {hp.data}")
    train_ds, eval_ds = eval_datasets(lit, data, split=split, data_root=data_root, download=download)
    if split == "train":
        notes.add("evaluating on the training split: these numbers are not held-out")
    cache_dir = Path(classifier_cache) if classifier_cache else _default_cache(data_root)
    info = eval_ds.info
    timings["load"] = time.monotonic() - t0
    settings = {
        "vqvae": str(vqvae_path), "prior": None if prior_path is None else str(prior_path),
        "data": data, "data_root": str(data_root), "split": split, "num_samples": num_samples,
        "seed": seed, "batch_size": batch_size, "device": device, "sampler": "cached",
        "classifier_cache": str(cache_dir),
        "conditional_sampling": {"guidance": guidance, "temperature": temperature},
        "unconditional_sampling": {"guidance": 1.0, "temperature": temperature, "labels": None},
    }
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION, "settings": settings,
        "data": {"spec": data, "split": split, "source": info.source, "num_eval": len(eval_ds),
                 "num_train": len(train_ds), "num_classes": info.num_classes,
                 "class_names": list(info.class_names), "channels": info.channels,
                 "image_size": list(info.image_size)},
        "stage1": None, "stage2": None, "whole_model": None, "samples": None,
        "curves": {}, "images": {}, "notes": notes, "timings_s": timings,
    }
    log(f"evaluate: {len(eval_ds)} {split} images of {data}"
        + (f", {num_samples} samples" if prior is not None else ""))

    with atomic_dir(out) as tmp:
        images = report["images"]
        # ---- stage one
        t0 = time.monotonic()
        s1 = run_stage1(lit, eval_ds, batch_size=batch_size, device=device, sigmas=sigmas)
        report["stage1"] = stage1_metrics(result=s1)
        if s1.ssim is None:
            notes.add(f"SSIM skipped: images {info.image_size} are smaller than its 11x11 window")
        plot_code_histogram(report["stage1"]["code_counts"], tmp / "codes_histogram.png")
        images["codes_histogram"] = "codes_histogram.png"
        x, r = s1.preview
        per_row = min(8, x.shape[0])
        rows = [t for st in range(0, x.shape[0], per_row) for t in (x[st : st + per_row],
                                                                     r[st : st + per_row])]
        save_grid(torch.cat(rows), tmp / "reconstructions.png", nrow=per_row)
        images["reconstructions"] = "reconstructions.png"
        timings["stage1"] = time.monotonic() - t0
        log(f"stage one: PSNR {report['stage1']['psnr_db']:.2f} dB ({timings['stage1']:.1f}s)")

        if prior is None:
            notes.add("no --prior: stage two, the bits/dim bound and samples are skipped")
        else:
            # ---- stage two and the bound
            t0 = time.monotonic()
            tr_codes, tr_from = train_code_maps(lit, vqvae_path, train_ds, batch_size=batch_size,
                                                device=device)
            k_prior = int(prior.model.num_classes)
            use_labels = k_prior > 0 and info.num_classes == k_prior
            if k_prior > 0 and not use_labels:
                notes.add(f"the prior has {k_prior} classes but the data has {info.num_classes}: "
                          "its NLL is the null-class (unconditional) one")
            labels = s1.labels if use_labels else None
            nll_u = prior_nll(prior, s1.codes, None, batch_size=batch_size, device=device)
            nll_c = (prior_nll(prior, s1.codes, labels, batch_size=batch_size, device=device)
                     if labels is not None else None)
            st2 = prior_metrics(prior, tr_codes, s1.codes, labels, nll=nll_c, nll_uncond=nll_u)
            st2["train_codes_from"] = tr_from
            report["stage2"] = st2
            plot_nll_heatmap(st2["per_position_bits"], tmp / "nll_heatmap.png",
                             title=f"held-out NLL per position ({st2['per_position_from']})")
            images["nll_heatmap"] = "nll_heatmap.png"
            bound = whole_model_bound(s1, nll_u.flatten(1).sum(1) / M.LN2)
            bound["prior"] = "unconditional (null class)" if k_prior > 0 else "unconditional"
            if nll_c is not None:
                given = whole_model_bound(s1, nll_c.flatten(1).sum(1) / M.LN2)
                bound["bits_per_dim_given_class"] = given["bits_per_dim"]
                bound["sigma_given_class"] = given["sigma"]
            report["whole_model"] = bound
            timings["stage2"] = time.monotonic() - t0
            log(f"stage two: {st2['bits_per_code']:.3f} bits per code, bound "
                f"{bound['bits_per_dim']:.3f} bits/dim ({timings['stage2']:.1f}s)")

            # ---- samples
            report["samples"] = _samples_section(
                prior, lit, train_ds, eval_ds, tmp, images, notes, timings, config=config,
                num_samples=num_samples, seed=seed, guidance=guidance, temperature=temperature,
                batch_size=batch_size, device=device, cache_dir=cache_dir, log=log)

        # ---- training curves
        t0 = time.monotonic()
        runs = {"vqvae": Path(vqvae_path).parent}
        if prior_path is not None:
            runs["prior"] = Path(prior_path).parent
        for name, run_dir in runs.items():
            res = plot_curves(run_dir, name, tmp / f"curves_{name}.png")
            if res is None:
                notes.add(f"no CSV training logs in {run_dir}/logs/version_*/metrics.csv: "
                          f"{name} training curves skipped")
                report["curves"][name] = None
            else:
                report["curves"][name] = res
                images[f"curves_{name}"] = f"curves_{name}.png"
        timings["curves"] = time.monotonic() - t0

        timings["total"] = time.monotonic() - t_start
        for key in timings:
            timings[key] = round(timings[key], 2)
        report["notes"] = list(notes)
        (tmp / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        write_html(report, tmp / "index.html")
    log(f"report: {out / 'index.html'} and {out / 'metrics.json'}")
    return report


def _samples_section(prior, lit, train_ds, eval_ds, tmp: Path, images: dict, notes: Notes,
                     timings: dict, *, config: dict, num_samples: int, seed: int, guidance: float,
                     temperature: float, batch_size: int, device: str, cache_dir: Path,
                     log: Callable[[str], None]) -> dict:
    """Classifier, references, samples and their grids for :func:`evaluate`."""
    from stage1_vqvae.runtime.grid import save_grid

    info = train_ds.info
    section: dict[str, Any] = {}
    classifier = None
    eval_feats = None
    t0 = time.monotonic()
    if info.num_classes < 2:
        notes.add(f"{info.data} has no class labels: no classifier, so no class accuracy, class "
                  "entropy or Fréchet distance (a classifier needs labels)")
    elif min(len(eval_ds), len(train_ds)) < 2:
        notes.add(f"{len(eval_ds)} evaluated and {len(train_ds)} training image(s): no Fréchet "
                  "distance or classifier scores (they need at least 2 of each)")
    else:
        classifier, cinfo = get_classifier(
            train_ds, cache_dir, val_fraction=float(lit.hparams.val_fraction),
            split_seed=int(lit.hparams.seed), config=config, device=device, log=log)
        n_ref = min(num_samples, len(train_ds))
        if n_ref < num_samples:
            notes.add(f"--num-samples {num_samples} > {len(train_ds)} training images: the real "
                      f"and blurred references use N_ref={n_ref} (samples stay at {num_samples})")
        if len(eval_ds) < num_samples:
            notes.add(f"the Fréchet reference set is the whole {eval_ds.info.split} split, "
                      f"{len(eval_ds)} images (fewer than --num-samples {num_samples})")
        if min(n_ref, len(eval_ds)) <= config["features"]:
            notes.add(f"fewer images than the {config['features']} feature dimensions: the "
                      "Fréchet distances are dominated by noise")
        refs = reference_metrics(classifier, eval_ds, train_ds, n_ref, seed=seed, device=device)
        eval_feats = refs.pop("_eval_features")
        section["classifier"] = {**cinfo, "config": config}
        section["references"] = refs
        timings["classifier_and_references"] = time.monotonic() - t0
        log(f"classifier: held-out accuracy {refs['classifier_heldout_accuracy']:.1%} "
            f"({timings['classifier_and_references']:.1f}s with the references)")
    if prior.model.num_classes == 0:
        notes.add("the prior is unconditional: no class-conditional samples")
    elif classifier is not None and prior.model.num_classes != info.num_classes:
        notes.add(f"the prior has {prior.model.num_classes} classes, the data "
                  f"{info.num_classes}: class accuracy of the samples is not scored")
    t0 = time.monotonic()
    res, imgs = sample_metrics(prior, lit, classifier, eval_ds, num_samples=num_samples, seed=seed,
                               guidance=guidance, temperature=temperature, batch_size=batch_size,
                               device=device, eval_features=eval_feats)
    section.update(res)
    timings["samples"] = time.monotonic() - t0
    if "conditional" in imgs:
        k = int(prior.model.num_classes)
        lab = even_labels(num_samples, k)
        per_row = min(10, int(torch.bincount(lab, minlength=k).min()))
        if per_row > 0:
            picks = torch.cat([torch.nonzero(lab == c).flatten()[:per_row] for c in range(k)])
            names = [str(n) for n in prior.hparams.class_names] or [str(c) for c in range(k)]
            save_grid(imgs["conditional"][picks], tmp / "samples_conditional.png", nrow=per_row,
                      row_labels=names)
            images["samples_conditional"] = "samples_conditional.png"
    n = min(100, num_samples)
    save_grid(imgs["unconditional"][:n], tmp / "samples_unconditional.png", nrow=min(10, n))
    images["samples_unconditional"] = "samples_unconditional.png"
    log(f"samples: {num_samples} x {len(imgs)} kinds ({timings['samples']:.1f}s)")
    return section
