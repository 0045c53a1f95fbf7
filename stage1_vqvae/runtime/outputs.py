"""Output folders: one policy for every verb.

- ``--out`` may be new or empty. A folder holding anything else is refused, naming one
  entry, unless ``--overwrite`` is given.
- ``--overwrite`` replaces only what the verb itself writes (the names its manifest lists,
  or its fixed output names) and leaves every other file byte-identical. A file the verb
  did not write but would write over (say a user's own ``grid.png``) is refused even then.
- ``--out`` is never an input of the same command: the same path, a folder holding an
  input, or a folder inside an input folder is refused (resolved paths, so symlinks and
  ``..`` do not hide it).
- Whether ``--out`` can be written is probed before the expensive work.
- Writes go to a temp folder beside ``--out`` first; the manifest (the completion marker)
  lands last, so a folder with a manifest is whole.

No torch here: the CLI uses it before loading any model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .fsutil import _umask, remove_stale_temps


class OutputError(UserError):
    """An ``--out`` the command may not (or cannot) write."""


def _resolved(p: str | os.PathLike) -> Path:
    return Path(p).expanduser().resolve()


def check_not_input(out: str | os.PathLike, inputs: Iterable[tuple[str, object]],
                    flag: str = "--out") -> None:
    """Refuse ``out`` when it is, holds, or lies inside an input of the same command.

    inputs: (flag, path) pairs such as ("--prior", "runs/p/last.ckpt"); None paths skipped.
    """
    o = _resolved(out)
    for name, path in inputs:
        if path is None or str(path) == "":
            continue
        r = _resolved(path)  # type: ignore[arg-type]
        if o == r:
            raise OutputError(f"{flag} {out} is the same path as {name} {path}, an input of this "
                              f"command; pass another {flag}")
        if o in r.parents:
            raise OutputError(f"{flag} {out} holds {name} {path}, an input of this command; "
                              f"pass an {flag} that holds none of the inputs")
        if r in o.parents and r.is_dir():
            raise OutputError(f"{flag} {out} lies inside {name} {path}, an input of this "
                              f"command; pass an {flag} outside it")


def check_writable(out: str | os.PathLike, flag: str = "--out") -> None:
    """Probe that ``out`` (a folder or file to be created or replaced) can be written, by
    creating and removing a temp file in its nearest existing folder."""
    out = Path(out)
    anc = out if out.is_dir() else out.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{flag} {out} cannot be created: {anc} is a file, not a folder; "
                          f"pass another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vqgen-probe.", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{flag} {out} cannot be written ({anc}: {e.strerror or e}); "
                          f"pass a writable {flag}") from None


def manifest_files(out: Path, manifest: str) -> set[str]:
    """Names a previous run of the verb wrote into ``out``: the ``files`` listed in its
    manifest (and in a pending one a killed commit left), plus the manifests."""
    owned: set[str] = set()
    for name in (manifest, f".{manifest}.pending"):
        p = out / name
        if not p.is_file():
            continue
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # unreadable: owns nothing, so nothing of the user's is at risk
        files = data.get("files") if isinstance(data, dict) else None
        if isinstance(files, list):
            owned |= {f for f in files if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")}
        owned.add(name)
    return owned


def claim_output_dir(
    out: str | os.PathLike,
    *,
    verb: str,
    overwrite: bool,
    owned: set[str],
    writes: Callable[[str], bool],
    inputs: Iterable[tuple[str, object]] = (),
    flag: str = "--out",
) -> set[str]:
    """Apply the policy to folder ``out`` before any work; returns the names of the verb's
    previous outputs in it (what ``--overwrite`` will replace).

    owned: names in ``out`` this verb wrote before. writes: True for a name this verb may
    write (a foreign file of such a name would be clobbered, so it is refused).
    """
    out = Path(out)
    check_not_input(out, inputs, flag)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} is a file, expected a folder; pass another {flag}")
    check_writable(out, flag)
    if not out.is_dir():
        return set()
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    ours = [n for n in entries if n in owned]
    foreign = [n for n in entries if n not in owned]
    if not overwrite:
        if foreign:
            raise OutputError(
                f"{flag} {out} holds {foreign[0]}, which vqgen {verb} did not write; pass another "
                f"{flag}, or --overwrite to write beside it (only {verb}'s own files are replaced)")
        if ours:
            raise OutputError(
                f"{flag} {out} already holds the output of a previous vqgen {verb} (e.g. "
                f"{ours[0]}); pass --overwrite to replace it, or another {flag}")
        return set()
    clash = [n for n in foreign if writes(n)]
    if clash:
        raise OutputError(
            f"{flag} {out} holds {clash[0]}, which vqgen {verb} did not write but would write "
            f"over; move it away or pass another {flag}")
    return set(ours)


@contextmanager
def owned_output_dir(out: str | os.PathLike, manifest: str,
                     record: dict | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success its files land in ``out``.

    The caller writes its files into the temp folder (a subfolder counts as one entry);
    this writes
    ``manifest`` = ``record`` + ``{"files": [...]}`` last. A new ``out`` is renamed into
    place whole. An existing one keeps every file the previous manifest does not list;
    the previous outputs are replaced (old manifest removed first, new one written last, a
    pending list in between so a killed commit's files stay recognisably ours).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # a killed run's temp folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp",
                                dir=out.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); give mkdir's mode
    try:
        yield tmp
        files = sorted(p.name for p in tmp.iterdir() if p.name != manifest)
        (tmp / manifest).write_text(json.dumps({**(record or {}), "files": files}, indent=2)
                                    + "\n")
        if not out.exists():
            os.replace(tmp, out)
            return
        old = manifest_files(out, manifest)
        pending = out / f".{manifest}.pending"
        pending.write_text(json.dumps({"files": sorted(old | set(files) | {manifest})}) + "\n")
        (out / manifest).unlink(missing_ok=True)
        for name in files:
            if (out / name).is_dir() and not (out / name).is_symlink():
                shutil.rmtree(out / name)  # a previous run's subfolder (owned, claimed)
            os.replace(tmp / name, out / name)
        for name in sorted(old - set(files) - {manifest, pending.name}):
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        os.replace(tmp / manifest, out / manifest)
        pending.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def numbered_png(name: str) -> bool:
    """``000123.png``: the per-image files sample and decode write."""
    return re.fullmatch(r"\d{6,}\.png", name) is not None


__all__ = ["OutputError", "check_not_input", "check_writable", "claim_output_dir",
           "manifest_files", "numbered_png", "owned_output_dir", "remove_stale_temps"]
