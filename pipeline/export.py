"""Pretrained folders of a prior and its VQ-VAE (a pair), their model cards, and
``vqgen export``'s resolution of a training run or checkpoint.

The pair's layout (see :mod:`vqgen.stage1_vqvae.runtime.pretrained` for one model's)::

    DIR/config.json   {"vqgen_pretrained": 1, "kind": "pair", "vqvae": "vqvae", "prior": "prior",
                       "name": ..., "description": ..., "metrics": {...}}
    DIR/README.md     the model card: what it was trained on, how long, on what, its numbers
    DIR/vqvae/        config.json + model.safetensors
    DIR/prior/        config.json + model.safetensors; its vqvae_checkpoint is "../vqvae" and
                      its vqvae_sha256 that folder's weights' sha256 (the link is kept)

Share one with ``huggingface_hub.upload_folder(folder_path=DIR, repo_id="you/name")`` (needs a
network and a token); load it back with ``--prior hf://you/name``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from vqgen._version import __version__
from vqgen.stage1_vqvae.runtime.checkpoint import CheckpointError, read_checkpoint
from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage1_vqvae.runtime.fsutil import atomic_dir
from vqgen.stage1_vqvae.runtime.outputs import OutputError
from vqgen.stage1_vqvae.runtime.pretrained import CARD, CONFIG, PRETRAINED_FORMAT, is_pretrained, jsonable

# the numbers a model card quotes from `vqgen evaluate`'s metrics.json: (path, label, format)
CARD_METRICS = (
    ("stage1.psnr_db", "held-out PSNR (dB)", "{:.2f}"),
    ("stage1.ssim", "held-out SSIM", "{:.3f}"),
    ("stage1.codebook_usage", "codebook usage", "{:.1%}"),
    ("stage2.bits_per_code", "prior, held-out bits per code", "{:.3f}"),
    ("stage2.baselines.unigram_heldout_cross_entropy_bits_per_code", "  unigram baseline", "{:.3f}"),
    ("stage2.bits_per_map", "prior, bits per image (what `compress` writes, ~0.2% more)", "{:.1f}"),
    ("samples.conditional.class_accuracy", "class-conditional samples read as their class", "{:.1%}"),
    ("samples.conditional.fd", "  their classifier FD", "{:.1f}"),
    ("samples.unconditional.fd", "unconditional samples, classifier FD", "{:.1f}"),
)


def _get(d: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def card_metrics(metrics: dict | None) -> dict[str, Any]:
    """The part of ``vqgen evaluate``'s metrics.json a card quotes (CARD_METRICS, the sampling
    settings and the held-out count), as the same nested dict; the rest stays in the report."""
    keep: dict[str, Any] = {}
    paths = [p for p, _, _ in CARD_METRICS] + ["settings.conditional_sampling", "data.num_eval",
                                               "data.spec"]
    for path in paths:
        value = _get(metrics or {}, path)
        if value is None:
            continue
        node = keep
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return keep


def training_record(module) -> dict[str, Any]:
    """How ``module`` was trained, for its card: epochs, steps, seconds and hardware (from
    the checkpoint it was loaded from, or the pretrained folder's config)."""
    if getattr(module, "pretrained", None):
        return dict(module.pretrained.get("training") or {})
    path = getattr(module, "checkpoint_path", None)
    if not path or not Path(path).is_file():
        return {}
    from vqgen.stage2_prior.lit import LitPrior

    ckpt = read_checkpoint(path, "prior" if isinstance(module, LitPrior) else "vqvae")
    record = {"epochs": int(ckpt.get("epoch", -1)) + 1, "steps": int(ckpt.get("global_step", 0))}
    record.update(ckpt.get("training") or {})
    return record


def source_record(module) -> dict[str, Any]:
    """Where ``module`` came from: the checkpoint's path and sha256 (or the folder's source)."""
    from vqgen.stage1_vqvae.runtime.pretrained import model_sha256

    if getattr(module, "pretrained", None):
        return dict(module.pretrained.get("source") or {})
    path = getattr(module, "checkpoint_path", None)
    if not path:
        return {}
    return {"checkpoint": str(Path(path).resolve()), "sha256": model_sha256(path)}


def card_facts(prior, vqvae) -> dict[str, Any]:
    """Name, data and description of a loaded pair, for the app's header and ``repr``."""
    pair = getattr(prior, "pair_config", None) or {}
    hp = vqvae.hparams
    path = Path(str(getattr(prior, "checkpoint_path", "") or "prior"))
    return {"name": pair.get("name") or "/".join(path.parts[-2:]),  # e.g. prior/last.ckpt
            "data": pair.get("trained_on") or str(hp.get("data", "")),
            "description": pair.get("description", "")}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def model_card(config: dict[str, Any], vq: dict[str, Any], pr: dict[str, Any]) -> str:
    """The pair's README.md: Hub metadata, what it is, its training, its numbers, its use."""
    vh, ph = vq["hyper_parameters"], pr["hyper_parameters"]
    name = config["name"]
    classes = list(ph.get("class_names") or [])
    kind = f"class-conditional over {len(classes)} classes" if classes else "unconditional"
    lines = [
        "---", "library_name: vqgen", "tags: [vqgen, vq-vae, pixelcnn, image-generation]", "---",
        "", f"# {name}", "",
        config.get("description") or "",
        "",
        f"A VQ-VAE ({vh['channels']}x{vh['image_size'][0]}x{vh['image_size'][1]} images -> "
        f"{ph['code_shape'][0]}x{ph['code_shape'][1]} codes of {ph['num_codes']}) and a gated "
        f"PixelCNN prior over its codes, {kind}, exported by vqgen {__version__}.",
        "", "## Training", "",
        f"Data: {config.get('trained_on') or vh.get('data')} "
        f"(held-out fraction {vh.get('val_fraction')}, split seed {vh.get('seed')}).", "",
        "| | VQ-VAE | prior |", "|---|---|---|",
    ]
    vt, pt = vq.get("training") or {}, pr.get("training") or {}
    lines += [
        f"| epochs / steps | {vt.get('epochs', '?')} / {vt.get('steps', '?')} | "
        f"{pt.get('epochs', '?')} / {pt.get('steps', '?')} |",
        f"| training time | {_duration(vt.get('seconds'))} | {_duration(pt.get('seconds'))} |",
        f"| hardware | {vt.get('hardware', 'not recorded')} | {pt.get('hardware', 'not recorded')} |",
        f"| size | hidden {vh.get('hidden')}, code dim {vh.get('code_dim')}, K {vh.get('num_codes')}, "
        f"downsample {vh.get('downsample')} | hidden {ph.get('hidden')}, {ph.get('num_layers')} "
        f"layers, dropout {ph.get('dropout')}, EMA {ph.get('ema_decay')}, wd {ph.get('weight_decay')} |",
    ]
    if config.get("note"):
        lines += ["", config["note"]]
    metrics = config.get("metrics") or {}
    rows = [(label, fmt.format(v)) for path, label, fmt in CARD_METRICS
            if isinstance(v := _get(metrics, path), (int, float))]
    lines += ["", "## Measured", ""]
    if rows:
        cond = _get(metrics, "settings.conditional_sampling") or {}
        lines += [f"`vqgen evaluate` on the held-out split ({_get(metrics, 'data.num_eval')} images; "
                  f"conditional samples at guidance {cond.get('guidance')}, temperature "
                  f"{cond.get('temperature')}):", "", "| measure | value |", "|---|---|"]
        lines += [f"| {label} | {value} |" for label, value in rows]
    else:
        lines += ["Not evaluated (export with `--evaluate`, or `--report` a `vqgen evaluate` "
                  "metrics.json)."]
    cls = f" --class {classes[min(3, len(classes) - 1)]}" if classes else ""
    lines += [
        "", "## Use", "", f"`{name}` is the shipped name, or this folder's path (a local path wins).",
        "", "```", f"vqgen sample --prior {name}{cls} --out samples/",
        f"vqgen serve --prior {name}", "```", "", "```python", "from vqgen import Pipeline", "",
        f'pipe = Pipeline.from_pretrained("{name}")  # or this folder\'s path',
        f"images = pipe.sample(16{', classes=' + repr(classes[min(3, len(classes) - 1)]) if classes else ''}"
        ", seed=0).pil()", "```", "",
        "Files: `config.json` (the pair), `vqvae/` and `prior/` (each `config.json`: constructor "
        "arguments; `model.safetensors`: weights, float32). The prior records the sha256 of "
        "`vqvae/model.safetensors`.", "",
    ]
    return "\n".join(lines)


def save_pair(prior, vqvae, folder: str | os.PathLike, *, name: str | None = None,
              description: str = "", trained_on: str = "", note: str = "",
              metrics: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``prior`` and ``vqvae`` as one pretrained folder (layout: this module's doc),
    whole or not at all. An existing ``folder`` is replaced only with ``overwrite`` and only
    when it is a pretrained folder. Returns the folder."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not overwrite:
            raise OutputError(f"--out {folder} exists; pass --overwrite to replace it, or another --out")
        if not is_pretrained(folder):
            raise OutputError(f"--out {folder} is not a pretrained folder vqgen wrote; it is not "
                              "replaced: pass another --out")
    name = name or folder.name
    with atomic_dir(folder) as tmp:
        vq = vqvae.save_pretrained(tmp / "vqvae", source=source_record(vqvae),
                                   training=training_record(vqvae))
        pr = prior.save_pretrained(tmp / "prior", vqvae="../vqvae", vqvae_sha256=vq["sha256"],
                                   source=source_record(prior), training=training_record(prior))
        config = {"vqgen_pretrained": PRETRAINED_FORMAT, "kind": "pair", "vqvae": "vqvae",
                  "prior": "prior", "name": name, "description": description,
                  "trained_on": trained_on, "note": note, "vqgen_version": __version__,
                  "metrics": jsonable(card_metrics(metrics))}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD).write_text(model_card(config, vq, pr))
    return folder


def evaluate_metrics(prior_path: str, vqvae_path: str | None, num_samples: int, device: str,
                     data: str | None = None) -> dict:
    """Run ``vqgen evaluate`` (report in a temp folder, removed) and return its metrics."""
    import tempfile

    from vqgen.pipeline.evaluation.evaluate import evaluate

    out = Path(tempfile.mkdtemp(prefix="vqgen-export-eval-"))
    try:
        return evaluate(vqvae_path, prior_path, data, out / "report", num_samples=num_samples,
                        device=device)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def find_models(run_or_ckpt: str | os.PathLike) -> tuple[str, Path]:
    """(kind, checkpoint) that a run folder or checkpoint names for export: a prior or VQ-VAE
    .ckpt, a run folder of either (``best.ckpt``, else ``last.ckpt``), or a demo-style folder
    with ``prior/`` (and the ``vqvae/`` the prior records)."""
    p = Path(run_or_ckpt)
    if not p.exists():
        raise UserError(f"{p} does not exist; pass a training run folder or a .ckpt")
    if p.is_dir() and not any((p / n).is_file() for n in ("best.ckpt", "last.ckpt")):
        for sub in ("prior", "vqvae"):
            if (p / sub).is_dir():
                return find_models(p / sub)
    ckpt = _run_ckpt(p) if p.is_dir() else p
    try:
        read_checkpoint(ckpt, "prior")
        return "prior", ckpt
    except CheckpointError as e:
        if "is a vqvae checkpoint" not in str(e):
            raise
    return "vqvae", ckpt


def _run_ckpt(folder: Path) -> Path:
    for name in ("best.ckpt", "last.ckpt"):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder} holds no best.ckpt or last.ckpt; pass a training run folder or a .ckpt")
