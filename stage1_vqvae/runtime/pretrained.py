"""Pretrained model folders: what ``save_pretrained`` writes and ``from_pretrained`` reads.

One model per folder, in the layout the Hugging Face Hub shows as a model (the file names
``PyTorchModelHubMixin`` uses)::

    config.json         {"vqgen_pretrained": 1, "kind": "vqvae" | "prior",
                         "hyper_parameters": {...the module's constructor arguments...},
                         "sha256": sha256 of model.safetensors, "source": {...},
                         "training": {...}, "vqgen_version": ...}
    model.safetensors   the network's weights only (``module.model``'s state dict; a prior's
                        averaged weights), float32; loaded with strict=True
    README.md           the model card

A pair (``kind: "pair"``, what :class:`vqgen.Pipeline` saves) holds ``vqvae/`` and ``prior/``
folders of that layout, a ``config.json`` naming them and one model card. Lightning
checkpoints stay what training writes and resumes from; these folders are for sharing.

Names: a local path always wins; otherwise a bare name (``mnist``) is a model shipped in
``vqgen/checkpoints/`` and ``hf://owner/name`` a Hub repository (downloaded once into the
Hub's cache; the only case that uses the network).

Why not ``PyTorchModelHubMixin`` itself: its ``from_pretrained`` builds ``cls(**config)`` of
one class per folder and loads non-strictly by default; here one folder may hold a pair, the
stage-one class is chosen from the config (VQ-VAE, VQ-GAN or Gaussian VAE), and the sizes in
``config.json`` are checked against the weights *before* anything is built (a damaged or
hostile ``num_layers: 1000000`` must not allocate layer after layer), as for checkpoints. The
files are the mixin's, so the Hub and its tools read them; ``huggingface_hub`` uploads them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from vqgen._version import __version__

from .checkpoint import CheckpointError, file_sha256, init_defaults
from .errors import MissingInputError, UserError
from .fsutil import atomic_file

PRETRAINED_FORMAT = 1
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
HUB_PREFIX = "hf://"
T = TypeVar("T", bound=torch.nn.Module)


def shipped_dir() -> Path:
    """The folder of the models installed with the package (``vqgen/checkpoints``)."""
    import vqgen

    return Path(vqgen.__file__).resolve().parent / "checkpoints"


SHIPPED = ("mnist", "cifar10")  # the names; in a checkout the folder also holds outputs


def shipped_models() -> list[str]:
    """Names of the shipped models that are installed (their folder has a config.json)."""
    root = shipped_dir()
    return [n for n in SHIPPED if (root / n / CONFIG).is_file()]


def is_pretrained(path: str | os.PathLike) -> bool:
    """True for a folder holding a vqgen pretrained ``config.json``."""
    p = Path(path) / CONFIG
    if not p.is_file():
        return False
    try:
        return "vqgen_pretrained" in json.loads(p.read_text())
    except (OSError, ValueError):
        return False


def _bare_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text) is not None and "." not in text


def resolve_model(path_or_name: str | os.PathLike) -> Path:
    """The local path a ``--prior`` / ``--vqvae`` value means: an existing path as given (a
    checkpoint file or a pretrained folder), else a shipped model's folder for a bare name,
    else a Hub repository's download for ``hf://owner/name[@revision]``. Anything else raises
    one line (for a bare name: the shipped names)."""
    text = os.fspath(path_or_name)
    if text.startswith(HUB_PREFIX):
        return _hub_download(text[len(HUB_PREFIX):])
    path = Path(text)
    if path.exists():
        return path
    if _bare_name(text):
        names = shipped_models()
        if text in names:
            return shipped_dir() / text
        listed = ", ".join(names) if names else "none are installed"
        raise MissingInputError(
            f"{text} is neither a file nor a folder here, nor a shipped model (shipped: {listed}); "
            "pass a checkpoint, a pretrained folder, a shipped name or hf://owner/name")
    return path  # a path that does not exist: the loader names it


def _hub_download(repo: str) -> Path:
    repo_id, _, revision = repo.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise UserError(f"{HUB_PREFIX}{repo} is not a Hub model id; expected hf://owner/name[@revision]")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision or None))
    except ImportError as e:
        raise UserError("loading from the Hub needs huggingface_hub; pip install huggingface_hub") from e
    except Exception as e:  # network, auth, missing repo: one line, the Hub's reason
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MissingInputError(f"could not download {HUB_PREFIX}{repo} from the Hugging Face Hub "
                                f"({first[:160]}); check the id and the network") from e


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """A pretrained folder's config.json, checked to be one vqgen reads (one-line errors)."""
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise MissingInputError(f"{folder} is a folder without {CONFIG}: not a pretrained model "
                                "(a training run? pass the .ckpt inside it, e.g. last.ckpt)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({str(e)[:80]}); copy the model again") from e
    if not isinstance(config, dict) or "vqgen_pretrained" not in config:
        raise CheckpointError(f"{path} is not a vqgen pretrained config (no vqgen_pretrained key)")
    if not isinstance(config["vqgen_pretrained"], int) or config["vqgen_pretrained"] > PRETRAINED_FORMAT:
        raise CheckpointError(f"{path} has pretrained format {config['vqgen_pretrained']!r}, newer "
                              f"than this vqgen ({__version__}) reads; upgrade vqgen")
    return config


def model_folder(folder: str | os.PathLike, kind: str) -> tuple[Path, dict[str, Any]]:
    """The ``kind`` ("vqvae" / "prior") model folder in ``folder`` (itself, or the part of a
    pair) and its config. Raises one line when ``folder`` holds the other kind."""
    folder = Path(folder)
    config = read_config(folder)
    if config.get("kind") == "pair":
        part = config.get(kind)
        if not isinstance(part, str) or not _bare_name(part):
            raise CheckpointError(f"{folder / CONFIG} names no {kind} folder")
        return model_folder(folder / part, kind)
    if config.get("kind") != kind:
        hint = {"vqvae": "--vqvae", "prior": "--prior"}.get(str(config.get("kind")), "the right option")
        raise CheckpointError(f"{folder} is a pretrained {config.get('kind')}, expected a {kind}; "
                              f"pass it as {hint}")
    return folder, config


def model_sha256(path: str | os.PathLike) -> str:
    """The identity a prior records for its VQ-VAE (and manifests for any model): a checkpoint
    file's sha256, or a pretrained folder's recorded sha256 of its weights."""
    p = resolve_model(path)
    if p.is_dir():
        kind = read_config(p).get("kind")
        return str(model_folder(p, "vqvae" if kind == "pair" else str(kind))[1]["sha256"])
    return file_sha256(p)


def model_identities(path: str | os.PathLike) -> set[str]:
    """Every sha256 a prior may record for the VQ-VAE at ``path``: its own, and for an exported
    folder the checkpoint it was exported from (a prior trained on the run still fits)."""
    p = resolve_model(path)
    if not p.is_dir():
        return {file_sha256(p)}
    _, config = model_folder(p, "vqvae")
    source = (config.get("source") or {}).get("sha256")
    return {str(config["sha256"])} | ({str(source)} if source else set())


def jsonable(value: Any) -> Any:
    """Hyper-parameters as JSON values (tuples -> lists); refuses what JSON cannot hold."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"hyper-parameter value {value!r} is not JSON")


def write_model(folder: str | os.PathLike, *, kind: str, hparams: dict[str, Any],
                weights: dict[str, torch.Tensor], source: dict[str, Any] | None = None,
                training: dict[str, Any] | None = None, card: str | None = None) -> dict[str, Any]:
    """Write one model folder (config.json, model.safetensors, README.md when ``card``), each
    file atomically, and return the config. ``weights``: the network's state dict (float32)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # contiguous CPU copies: safetensors refuses views and tensors that share storage
    flat = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
            .contiguous().clone() for k, v in weights.items()}
    with atomic_file(folder / WEIGHTS) as tmp:
        save_file(flat, str(tmp), metadata={"format": "pt", "vqgen_kind": kind})
        os.chmod(tmp, 0o644)  # safetensors writes it private; a model is for sharing
    config = {
        "vqgen_pretrained": PRETRAINED_FORMAT, "kind": kind, "vqgen_version": __version__,
        "sha256": file_sha256(folder / WEIGHTS), "hyper_parameters": jsonable(hparams),
        "source": jsonable(source or {}), "training": jsonable(training or {}),
    }
    with atomic_file(folder / CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    if card is not None:
        with atomic_file(folder / CARD) as tmp:
            tmp.write_text(card)
    return config


def build_model(folder: str | os.PathLike, kind: str, pick_class: Callable[[dict], type[T]],
                map_location: str | torch.device = "cpu") -> T:
    """Rebuild the ``kind`` module a pretrained folder (or pair) holds: check the weights'
    recorded sha256, check the hyper-parameters against the weights' shapes before building,
    build ``pick_class(hparams)(**hparams)`` and load ``module.model`` strictly. Eval mode, on
    ``map_location``; ``module.pretrained`` is the folder's config, ``module.checkpoint_path``
    the folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder, config = model_folder(folder, kind)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise MissingInputError(f"{folder} has {CONFIG} but no {WEIGHTS}; copy the model again")
    sha = file_sha256(weights)
    if sha != config.get("sha256"):
        raise CheckpointError(
            f"{weights} has sha256 {sha[:12]}..., its {CONFIG} records {str(config.get('sha256'))[:12]}...; "
            "the file is damaged or was edited: copy the model again")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({str(e)[:100]})") from e
    hparams = config.get("hyper_parameters")
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{folder / CONFIG}: hyper_parameters must be a mapping")
    cls = pick_class(hparams)
    defaults = init_defaults(cls)
    # JSON has no tuples: give tuple-valued arguments (image_size, class_names) their type back
    hparams = {k: tuple(v) if isinstance(v, list) and isinstance(defaults.get(k), tuple) else v
               for k, v in hparams.items()}
    unknown = sorted(set(hparams) - set(defaults))
    problem = getattr(cls, "hparams_problem", None)
    prefixed = {f"model.{k}": v for k, v in state.items()}
    why = (f"unknown hyper-parameter {unknown[0]}" if unknown
           else problem({**defaults, **hparams}, prefixed) if problem else None)
    if why:
        raise CheckpointError(f"{folder}: its config does not fit its weights ({why}); "
                              "the folder is damaged, edited, or from another vqgen version")
    try:
        module = cls(**hparams)
        module.model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as e:
        why = " ".join(str(e).split()) or type(e).__name__  # torch's first line says no more
        raise CheckpointError(f"{folder}: its weights do not fit its config ({why[:200]})") from e
    module.checkpoint_path = str(folder)
    module.pretrained = config
    return module.to(map_location).eval()

