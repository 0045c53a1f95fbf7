"""Run folders: what a training run writes, and whether ``--out`` may hold a new one."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .errors import MissingInputError, UserError
from .fsutil import atomic_file
from .outputs import _launched_rank, claim_output_dir

# everything a training run of either stage writes into its folder (and --overwrite removes)
RUN_FILES = ("last.ckpt", "best.ckpt", "logs", "tensorboard", "previews", "codes", "ranks.json")


# What a run wrote, by path: on --overwrite only these go, so a user's notes in logs/ or
# previews/ survive (a folder's name decides nothing). {"files": [...], "user": [...]}:
# "user" are the files already under the run's folders when the run started (never ours).
RUN_MANIFEST = ".vqgen-run.json"


def _run_tree(out_dir: Path) -> set[str]:
    """Every file (or link) at a run name or under a run folder, as relative "/" paths."""
    found: set[str] = set()
    for name in RUN_FILES:
        p = out_dir / name
        if p.is_symlink() or p.is_file():
            found.add(name)
        elif p.is_dir():
            found |= {q.relative_to(out_dir).as_posix() for q in p.rglob("*")
                      if q.is_file() or q.is_symlink()}
    return found


def _read_run_manifest(out_dir: Path) -> dict | None:
    try:
        data = json.loads((out_dir / RUN_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: {f for f in data.get(k, []) if isinstance(f, str)} for k in ("files", "user")}


# runs started in this process whose manifest is not written yet: run folder -> the user's
# files found under its run folders at the start (written with the first record, so a run
# that fails before it leaves no manifest, and no folder, behind)
_STARTED: dict[Path, set[str]] = {}


def record_run_files(out_dir: Path) -> None:
    """List what the run in ``out_dir`` has written so far (called at every checkpoint and
    when the run ends); no-op for a folder whose run keeps no manifest (vqgen 0.1.0's)."""
    out_dir = Path(out_dir)
    key = out_dir.resolve()
    data = _read_run_manifest(out_dir)
    if data is None:
        if key not in _STARTED or not out_dir.is_dir():
            return
        data = {"files": set(), "user": _STARTED[key]}
    _STARTED.pop(key, None)
    tree = _run_tree(out_dir)
    files = (tree - data["user"]) | (data["files"] & tree)
    with atomic_file(out_dir / RUN_MANIFEST) as tmp:
        tmp.write_text(json.dumps({"files": sorted(files), "user": sorted(data["user"])}) + "\n")


def _start_run_manifest(out_dir: Path) -> None:
    if _launched_rank():  # a DDP rank > 0 re-running the command: rank 0 keeps the list
        return
    _STARTED[out_dir.resolve()] = _run_tree(out_dir) if out_dir.is_dir() else set()


def _owned_run_files(out_dir: Path) -> set[str]:
    """The files a previous run here wrote. Without a manifest (runs of vqgen 0.1.0): the
    checkpoints and ranks.json at the top, and nothing inside the folders."""
    data = _read_run_manifest(out_dir)
    if data is not None:
        return data["files"]
    return {n for n in RUN_FILES if (out_dir / n).is_file()}


def prepare_run_dir(out_dir: Path, *, resume: bool, overwrite: bool, verb: str,
                    inputs: Iterable[tuple[str, object]] = ()) -> Path | None:
    """Check ``out_dir`` may hold a new (or resumed) run. Returns the checkpoint to resume.

    Refuses to mix runs: an existing run needs ``--resume`` or ``--overwrite``; a folder
    holding anything else needs ``--overwrite``, which deletes only run files (the output
    policy of :mod:`.outputs`). ``inputs``: (flag, path) of the command's inputs, which the
    run folder may not hold.
    """
    last = out_dir / "last.ckpt"
    if resume:
        if not last.is_file():
            raise MissingInputError(
                f"nothing to resume in {out_dir} (no last.ckpt); drop --resume to start a new run"
            )
        return last
    if last.exists() and not overwrite:
        raise UserError(
            f"{out_dir} already holds a training run (last.ckpt); pass --resume to continue it, "
            f"--overwrite to start over, or another --out (vqgen {verb})"
        )
    ours = claim_output_dir(out_dir, verb=verb, overwrite=overwrite, owned=set(RUN_FILES),
                            writes=lambda n: n in RUN_FILES, inputs=inputs)
    if ours:
        # code-map folders are written whole (an atomic swap): a user's file in one would go
        kept = sorted(f for f in _run_tree(out_dir) - _owned_run_files(out_dir)
                      if f.startswith("codes/") and f.count("/") >= 2)
        if kept:
            raise UserError(f"--out {out_dir} holds {kept[0]}, which vqgen {verb} did not write, "
                            f"in a code-map folder it replaces whole; move it away")
        remove_run_files(out_dir)
    _start_run_manifest(out_dir)
    return None


def remove_run_files(out_dir: Path) -> None:
    """Delete what the run(s) in ``out_dir`` wrote (its manifest's files), folders they
    leave empty, and the manifest; a user's file anywhere stays."""
    owned = _owned_run_files(out_dir)
    for rel in sorted(owned):
        p = out_dir / rel
        if p.is_file() or p.is_symlink():
            p.unlink()
    parents = {out_dir.joinpath(*rel.split("/")[:k]) for rel in owned
               for k in range(1, len(rel.split("/")))}
    for d in sorted(parents, key=lambda q: len(q.parts), reverse=True):
        if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()
    (out_dir / RUN_MANIFEST).unlink(missing_ok=True)
