"""Sample quality: the classifier's reference points (real and blurred-real Fréchet distances)
and the class-conditional / unconditional samples' accuracy, class entropy and Fréchet distance."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vqgen.pipeline import metrics as M
from vqgen.pipeline.defaults import DEMO_GUIDANCE, DEMO_TEMPERATURE
from vqgen.pipeline.evaluation.classifier import SmallCNN, classify
from vqgen.pipeline.evaluation.data import load_images
from vqgen.stage1_vqvae.runtime.errors import UserError


def _json_float(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def reference_metrics(classifier: SmallCNN, eval_ds, train_ds, num: int, *, seed: int = 0,
                      batch_size: int = 500, device: str = "cpu") -> dict:
    """The classifier's held-out accuracy and the two Fréchet-distance reference points.

    real_vs_real: ``num`` random training images vs the whole evaluated split (the floor
    for that ``num``); blurred: the same images after a 3x3 box blur (replicate padding) vs
    the evaluated split ("slightly off"); precision and recall of both against it.
    ``num`` must be <= len(train_ds).
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
        **{f"{m}_{name}": v for name, feats in (("real", tr_feats), ("blurred", bl_feats))
           for m, v in precision_recall(ev_feats, feats).items() if m != "k"},
        "heldout_class_entropy_nats": M.entropy(np.bincount(ev_pred, minlength=k)),
        "_eval_features": ev_feats,
    }


PR_K = 3  # neighbours that set each point's radius (Kynkäänniemi et al. 2019 use k = 3)


def _knn_radii(x: Tensor, k: int, chunk: int) -> Tensor:
    """Distance of each row of x (N, F) to its k-th nearest other row -> (N,)."""
    return torch.cat([torch.cdist(x[s : s + chunk], x).kthvalue(k + 1, dim=1).values
                      for s in range(0, x.shape[0], chunk)])  # k + 1: the row itself is at 0


def _covered(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    """Bool (N,): each point lies in the ball of at least one centre."""
    return torch.cat([(torch.cdist(points[s : s + chunk], centres) <= radii[None]).any(1)
                      for s in range(0, points.shape[0], chunk)])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_K,
                     chunk: int = 1024) -> dict[str, float | None]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` against ``real``.

    real (N, F), fake (M, F): features (here the scoring classifier's). Each set's manifold
    is the union of balls around its points, radius = distance to the k-th nearest
    neighbour within the set. precision = fraction of fake points inside the real manifold
    (fidelity); recall = fraction of real points inside the fake manifold (diversity). Both
    in [0, 1]; None when a set has no more than k points. Computed on the CPU in float64.
    """
    r = torch.as_tensor(np.asarray(real, dtype=np.float64))
    f = torch.as_tensor(np.asarray(fake, dtype=np.float64))
    if min(r.shape[0], f.shape[0]) <= k:
        return {"precision": None, "recall": None, "k": k}
    precision = _covered(f, r, _knn_radii(r, k, chunk), chunk).double().mean()
    recall = _covered(r, f, _knn_radii(f, k, chunk), chunk).double().mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}


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
    (nats, and / log K) and the Fréchet distance. Both get precision and recall against the
    evaluated split (:func:`precision_recall`, k = 3, classifier features). Samples are 8-bit
    quantised first, like the real images.
    Returns (metrics, {"conditional": images, "unconditional": images}).
    """
    from vqgen.pipeline.generate import sample

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
            entry.update(score_samples(classifier, imgs, labels, eval_features, k, device=device))
        out[name] = entry
    return out, images


def score_samples(classifier: SmallCNN, images: Tensor, labels: Tensor | None,
                  eval_features: np.ndarray, num_classes: int, *, device: str = "cpu") -> dict:
    """Scores of generated ``images`` (N, C, H, W) in [0, 1] against the evaluated split's
    classifier features (M, F): Fréchet distance, precision/recall, the predicted-class
    histogram, and either class accuracy (``labels`` (N,) of a prior with ``num_classes``
    classes, when the classifier has as many) or the class entropy (``labels`` None)."""
    feats, pred = classify(classifier, images, device=device)
    entry: dict[str, Any] = {"fd": M.frechet_distance(feats, eval_features)}
    pr = precision_recall(eval_features, feats)
    entry["precision"], entry["recall"] = pr["precision"], pr["recall"]
    nk = classifier.head.out_features
    hist = np.bincount(pred, minlength=nk)
    entry["predicted_class_counts"] = [int(c) for c in hist]
    if labels is None:
        ent = M.entropy(hist)
        entry["class_entropy_nats"] = ent
        entry["class_entropy_fraction_of_log_k"] = ent / math.log(nk)
    elif nk == num_classes:  # score the requested class only if the classifier knows them
        lab = labels.numpy()
        entry["class_accuracy"] = float((pred == lab).mean())
        entry["per_class_accuracy"] = [
            _json_float(float((pred[lab == c] == c).mean()) if (lab == c).any() else None)
            for c in range(num_classes)]
    return entry
