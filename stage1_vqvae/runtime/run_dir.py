"""Run folders: what a training run writes, and whether ``--out`` may hold a new one."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import MissingInputError, UserError
from .outputs import claim_output_dir

# everything a training run of either stage writes into its folder (and --overwrite removes)
RUN_FILES = ("last.ckpt", "best.ckpt", "logs", "tensorboard", "previews", "codes", "ranks.json")


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
        remove_run_files(out_dir)
    return None


def remove_run_files(out_dir: Path) -> None:
    for name in RUN_FILES:
        p = out_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
