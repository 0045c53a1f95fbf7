"""Run folders: what a training run writes, and whether ``--out`` may hold a new one."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import MissingInputError, UserError

# everything a training run of either stage writes into its folder (and --overwrite removes)
RUN_FILES = ("last.ckpt", "best.ckpt", "logs", "tensorboard", "previews", "codes", "ranks.json")


def prepare_run_dir(out_dir: Path, *, resume: bool, overwrite: bool, verb: str) -> Path | None:
    """Check ``out_dir`` may hold a new (or resumed) run. Returns the checkpoint to resume.

    Refuses to mix runs: an existing run needs ``--resume`` or ``--overwrite``; a folder
    holding anything else needs ``--overwrite``. ``--overwrite`` deletes only run files.
    """
    last = out_dir / "last.ckpt"
    if resume:
        if not last.is_file():
            raise MissingInputError(
                f"nothing to resume in {out_dir} (no last.ckpt); drop --resume to start a new run"
            )
        return last
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, expected a folder for the run")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            what = "a training run (last.ckpt)" if last.exists() else "other files"
            raise UserError(
                f"{out_dir} already holds {what}; pass --resume to continue it, --overwrite to "
                f"start over, or another --out (vqgen {verb})"
            )
        remove_run_files(out_dir)
    return None


def remove_run_files(out_dir: Path) -> None:
    for name in RUN_FILES:
        p = out_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
