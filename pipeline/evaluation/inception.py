"""Inception FID / KID, the numbers papers quote, computed by torch-fidelity (a maintained
implementation: its InceptionV3 port, TF1-compatible 299 px resize and metric code) from the
``pt_inception-2015-12-05`` weights file the user supplies (``--inception-weights``).

These sit beside the project's own classifier Fréchet distance, which stays the offline
default: the Inception numbers are comparable with published ones only on natural RGB
images; on tiny grey digits they are still computed (grey is repeated over RGB), but the
classifier FD is the meaningful one there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from vqgen.stage1_vqvae.runtime.errors import MissingInputError, UserError

FEATURE_LAYER = "2048"  # pool3, the FID/KID features
# Only tests turn this off, to feed a randomly initialised network saved in the same format.
_CHECK_SHA256 = True


def _fidelity():
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as fe
        import torch_fidelity.metric_fid as fid
        import torch_fidelity.metric_kid as kid
    except ImportError as e:
        raise UserError(f"--inception-weights needs torch-fidelity ({e}); `pip install "
                        "torch-fidelity` (or `pip install vqgen[inception]`)") from e
    return fe, fid, kid


def expected_sha256_prefix() -> str:
    """The sha256 prefix torch-fidelity names its weights by (torch.hub convention: the hex
    digits after the last '-' of the file name), read from its source: '6726825d'."""
    fe, _, _ = _fidelity()
    m = re.search(r"-([0-9a-f]{8,})\.pth$", fe.URL_INCEPTION_V3)
    if m is None:  # a torch-fidelity that names its weights differently: nothing to check
        raise UserError(f"cannot read the weights' sha256 from torch-fidelity's URL "
                        f"{fe.URL_INCEPTION_V3}; upgrade vqgen or pin torch-fidelity 0.4")
    return m.group(1)


def check_weights(path: str | os.PathLike) -> str:
    """The file's sha256; refuses (one line) a missing file or one whose sha256 does not start
    with :func:`expected_sha256_prefix`."""
    from vqgen.stage1_vqvae.runtime.checkpoint import file_sha256

    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"--inception-weights {p} is not a file; pass the "
                                "pt_inception-2015-12-05-6726825d.pth weights file")
    sha = file_sha256(p)
    want = expected_sha256_prefix()
    if _CHECK_SHA256 and not sha.startswith(want):
        raise UserError(f"--inception-weights {p} has sha256 {sha[:16]}..., not the "
                        f"pt_inception-2015-12-05 weights ({want}...); supply that file")
    return sha


def load_inception(path: str | os.PathLike, device: str = "cpu"):
    """torch-fidelity's InceptionV3 feature extractor (pool3 features) with ``path``'s
    weights, checked by :func:`check_weights`, in eval mode on ``device``."""
    fe, _, _ = _fidelity()
    check_weights(path)
    try:
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE_LAYER],
                                               feature_extractor_weights_path=str(path))
    except Exception as e:  # a file with the right name but not a state dict of this net
        raise UserError(f"--inception-weights {path} does not load into torch-fidelity's "
                        f"InceptionV3 ({type(e).__name__}: {str(e)[:120]})") from e
    return model.to(device).eval()


@torch.inference_mode()
def inception_features(model, images: Tensor, *, batch_size: int = 64,
                       device: str = "cpu") -> Tensor:
    """images float (N, C, H, W) in [0, 1], C = 1 or 3 -> float32 (N, 2048) pool3 features
    (on the CPU). Images go in as uint8 RGB (grey repeated), as torch-fidelity expects; it
    resizes to 299 px itself."""
    out = []
    for s in range(0, images.shape[0], batch_size):
        x = images[s : s + batch_size]
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out.append(model(x.to(device))[0].float().cpu())
    return torch.cat(out)


def inception_scores(real: Tensor, fake: Tensor, *, seed: int = 0) -> dict:
    """FID and KID (torch-fidelity's code) of features fake (M, 2048) against real (N, 2048).
    KID: 100 subsets of min(1000, N, M) (torch-fidelity's defaults, capped by the data)."""
    _, fid, kid = _fidelity()
    stats_r = fid.fid_features_to_statistics(real.double())
    stats_f = fid.fid_features_to_statistics(fake.double())
    fid_value = fid.fid_statistics_to_metric(stats_r, stats_f, verbose=False)[fid.KEY_METRIC_FID]
    subset = int(min(1000, real.shape[0], fake.shape[0]))
    k = kid.kid_features_to_metric(real.double(), fake.double(), kid_subsets=100,
                                   kid_subset_size=subset, verbose=False, rng_seed=seed)
    return {"fid": float(fid_value), "kid_mean": float(k[kid.KEY_METRIC_KID_MEAN]),
            "kid_std": float(k[kid.KEY_METRIC_KID_STD]), "kid_subset_size": subset,
            "num_real": int(real.shape[0]), "num_fake": int(fake.shape[0])}


def inception_section(weights: str | os.PathLike, real_images: Tensor,
                      generated: dict[str, Tensor], *, batch_size: int = 64,
                      device: str = "cpu", seed: int = 0) -> dict:
    """The report's "inception" section: FID/KID of each kind of generated images (dict of
    (M, C, H, W) in [0, 1]) against ``real_images`` (the evaluated split)."""
    model = load_inception(weights, device)
    real = inception_features(model, real_images, batch_size=batch_size, device=device)
    out: dict = {
        "weights": str(weights), "weights_sha256": check_weights(weights),
        "implementation": "torch-fidelity InceptionV3 (pool3, 2048-d), TF1-compatible "
                          "bilinear resize to 299 px; FID and KID as torch-fidelity computes them",
        "reference": "the evaluated split",
    }
    for name, imgs in generated.items():
        feats = inception_features(model, imgs, batch_size=batch_size, device=device)
        out[name] = inception_scores(real, feats, seed=seed)
    return out
