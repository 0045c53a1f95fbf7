"""Safe checkpoint reading shared by both stages.

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
Each vqgen checkpoint carries ``checkpoint["vqgen"] = {"kind", "version",
"format_version"}`` so a prior given where a VQ-VAE belongs (or a random file) is named
as such instead of failing deep inside ``load_state_dict``.

Formats: 1 (vqgen 0.1.0), 2 (priors lost a dead conv) and 3 (now: the VQ-VAE quantizer's
``initialized`` buffer became ``kmeans_pending``). An older checkpoint is upgraded on
reading by the steps in ``MIGRATIONS`` (each names what it changes); weights are then loaded strictly. A
checkpoint whose weights a migration changed loads for sampling and evaluation but is not
resumed: its optimizer state still describes the old parameters.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import torch

from vqgen._version import __version__

from .errors import MissingInputError, UserError

VQGEN_VERSION = __version__  # one source of truth: src/vqgen/_version.py
CHECKPOINT_FORMAT = 3
T = TypeVar("T", bound=torch.nn.Module)
KIND_HINT = {"vqvae": "--vqvae", "prior": "--prior"}


class CheckpointError(UserError):
    """A file that is not a usable vqgen checkpoint of the expected kind."""


def _prior_drop_last_h_out(state_dict: dict[str, Any]) -> list[str]:
    """Format 1 -> 2, priors: the last gated block's horizontal output conv never reached
    the logits, and format 2 no longer has it. Removing it leaves the model's output
    unchanged. Returns the keys removed."""
    blocks = [int(m.group(1)) for k in state_dict
              if (m := re.match(r"model\.blocks\.(\d+)\.", k))]
    if not blocks:
        return []
    dead = [f"model.blocks.{max(blocks)}.h_out.{name}" for name in ("weight", "bias")]
    return [k for k in dead if state_dict.pop(k, None) is not None]


def _vqvae_kmeans_pending(state_dict: dict[str, Any]) -> list[str]:
    """Format 2 -> 3, VQ-VAEs: the quantizer's buffer ``initialized`` (True once k-means had
    run, or with k-means off) is ``kmeans_pending`` (True while k-means is still to run),
    the same fact negated. A buffer, not a weight: the optimizer state still fits, so it
    returns no changed keys and the run can be resumed."""
    for key in [k for k in state_dict if k.endswith("quantizer.initialized")]:
        state_dict[key[: -len("initialized")] + "kmeans_pending"] = ~state_dict.pop(key).bool()
    return []


# (kind, format) -> the step that upgrades a checkpoint of that format by one; a kind with
# no entry for a format needs no change
MIGRATIONS: dict[tuple[str, int], Any] = {("prior", 1): _prior_drop_last_h_out,
                                          ("vqvae", 2): _vqvae_kmeans_pending}


def migrate_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a stamped checkpoint dict of an older format to ``CHECKPOINT_FORMAT`` in place
    (see ``MIGRATIONS``) and return it. When weights were changed, the stamp records
    ``migrated_from`` (the original format) and ``migrated_keys``."""
    stamp = ckpt["vqgen"]
    start = int(stamp.get("format_version", 1))
    changed: list[str] = []
    for version in range(start, CHECKPOINT_FORMAT):
        step = MIGRATIONS.get((stamp["kind"], version))
        if step is not None:
            changed += step(ckpt["state_dict"])
    if start < CHECKPOINT_FORMAT:
        stamp["format_version"] = CHECKPOINT_FORMAT
        if changed:
            stamp["migrated_from"], stamp["migrated_keys"] = start, changed
    return ckpt


def check_resumable(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume training from a checkpoint whose weights a migration changed."""
    stamp = ckpt.get("vqgen") or {}
    if "migrated_from" in stamp:
        raise CheckpointError(
            f"{path} was written by an older vqgen (checkpoint format {stamp['migrated_from']}); "
            "it loads for sampling and evaluation but cannot be resumed; start a new run"
        )


def checkpoint_stamp(kind: str) -> dict[str, Any]:
    return {"kind": kind, "version": VQGEN_VERSION, "format_version": CHECKPOINT_FORMAT}


def read_checkpoint(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` and check it is a ``kind`` one.

    kind: "vqvae" or "prior". Raises FileNotFoundError / CheckpointError with one line.
    """
    path = Path(path)
    if not path.is_file():
        hint = " (a folder: pass the .ckpt inside it, e.g. last.ckpt)" if path.is_dir() else ""
        raise MissingInputError(f"checkpoint {path} does not exist{hint}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; the useful part names the refused global
        found = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+)", str(e))
        why = found.group(1) if found else "it holds objects other than tensors and plain values"
        raise CheckpointError(
            f"{path} was refused by the safe loader (weights_only=True; {why}); "
            "it is not a vqgen checkpoint, or it holds code; use a checkpoint vqgen wrote"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        # a torch zip checkpoint whose end (the zip directory) is missing: cut short
        cut_zip = _starts_with(path, b"PK\x03\x04") and not zipfile.is_zipfile(path)
        truncated = cut_zip or any(s in msg for s in ("failed finding central directory",
                                                      "failed reading", "unexpected EOF", "EOF"))
        what = "is truncated or corrupt" if truncated else "is not a readable checkpoint"
        raise CheckpointError(f"{path} {what} ({msg[:120]}); re-train or copy it again") from e
    except Exception as e:  # arbitrary bytes trip the unpickler in arbitrary ways (KeyError, ...)
        raise CheckpointError(
            f"{path} is not a checkpoint ({type(e).__name__}: {str(e)[:80]}); "
            f"pass a {kind} checkpoint written by vqgen"
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a vqgen {kind} checkpoint (no state_dict)")
    stamp = ckpt.get("vqgen")
    if not isinstance(stamp, dict) or "kind" not in stamp:
        raise CheckpointError(f"{path} is not a vqgen checkpoint (no vqgen stamp); "
                              f"pass a {kind} checkpoint written by vqgen")
    if int(stamp.get("format_version", 0)) > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {stamp.get('format_version')} (vqgen "
            f"{stamp.get('version')}), newer than this vqgen ({VQGEN_VERSION}) reads; upgrade vqgen"
        )
    if stamp["kind"] != kind:
        other = KIND_HINT.get(stamp["kind"], "the right option")
        raise CheckpointError(
            f"{path} is a {stamp['kind']} checkpoint, expected a {kind} checkpoint; "
            f"pass it as {other}"
        )
    return migrate_checkpoint(ckpt)


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def dim(state: dict, key: str, d: int) -> int | None:
    """Size of dimension ``d`` of weight ``key`` in a state dict, or None when absent."""
    w = state.get(key)
    return int(w.shape[d]) if isinstance(w, torch.Tensor) and w.dim() > d else None


def hparams_mismatch(hp: dict, implied: dict[str, tuple[int | None, str]]) -> str | None:
    """The first hyper-parameter that is not an int or disagrees with what the weights
    imply, as a phrase, else None. implied: {name: (value the weights say, which weights)}."""
    for name, (want, source) in implied.items():
        value = hp.get(name)
        if not is_int(value):
            return f"hyper-parameter {name}={value!r} is not an integer"
        if want is None:
            return f"weights {source} are missing or malformed"
        if value != want:
            return f"hyper-parameter {name}={value} does not match its weights ({source} say {want})"
    return None


def classes_problem(hp: dict) -> str | None:
    """num_classes an int >= 0 and class_names empty or one name per class, else a phrase."""
    k, names = hp.get("num_classes"), hp.get("class_names")
    if not is_int(k) or k < 0:
        return f"hyper-parameter num_classes={k!r} is not an integer >= 0"
    if not isinstance(names, (list, tuple)) or (names and len(names) != k):
        return f"class_names ({names!r:.60}) do not list num_classes={k} names"
    return None


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def init_defaults(cls: type) -> dict[str, Any]:
    """Every named constructor argument with a default, over the class and its bases (the
    VQ-GAN's ``__init__`` takes its own and passes ``**kwargs`` on to the VQ-VAE's)."""
    out: dict[str, Any] = {}
    for c in reversed(cls.__mro__):
        if "__init__" in vars(c) and c is not object:
            out.update({k: p.default for k, p in inspect.signature(vars(c)["__init__"]).parameters.items()
                        if p.default is not inspect.Parameter.empty})
    return out


def rebuild_module(cls: type[T], path: str | os.PathLike, kind: str,
                   map_location: str | torch.device = "cpu", checkpoint: dict | None = None) -> T:
    """Safely read ``path`` (a ``kind`` checkpoint), rebuild ``cls(**hyper_parameters)``, load
    its weights strictly, and return it in eval mode on ``map_location``. ``checkpoint``: the
    dict :func:`read_checkpoint` already returned for ``path`` (saves reading it again)."""
    ckpt = checkpoint if checkpoint is not None else read_checkpoint(path, kind)
    hparams = ckpt.get("hyper_parameters", {})
    state = ckpt["state_dict"]
    if not isinstance(hparams, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: hyper_parameters and state_dict must be mappings; "
                              "the file is damaged or from another vqgen version")
    # check the stored sizes against the weights before building anything: a hostile or
    # damaged file (num_layers=1000000) must not allocate layer after layer
    defaults = init_defaults(cls)
    problem = getattr(cls, "hparams_problem", None)
    why = problem({**defaults, **hparams}, state) if problem else None
    if why:
        raise CheckpointError(f"{path}: its hyper-parameters do not fit its weights ({why}); "
                              "the file is damaged, edited, or from another vqgen version")
    try:
        module = cls(**dict(hparams))
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: its weights do not fit its hyper-parameters ({first[:160]}); "
            "the file is damaged or from another vqgen version"
        ) from e
    module.checkpoint_path = str(path)
    return module.to(map_location).eval()
