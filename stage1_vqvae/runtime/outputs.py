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
- One run per ``--out`` at a time: the claim locks it; a second run is refused.
- Writes go to a temp folder beside ``--out`` first; the manifest (the completion marker)
  lands last, so a folder with a manifest is whole.

No torch here: the CLI uses it before loading any model.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .fsutil import TEMP_MARK, _umask, make_temp_dir, remove_stale_temps


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
    if out.is_symlink() and not out.exists():  # failed only at the commit, after all the work
        raise OutputError(f"{flag} {out} is a symlink to {os.readlink(out)}, which does not "
                          f"exist; create that folder, remove the link, or pass another {flag}")
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


# One run per output path at a time. Two runs on the same new --out both passed the checks
# and the slower one's commit merged over the other's output; now the claim takes an
# exclusive lock beside --out (flock: the kernel drops it when the process dies, so a killed
# run leaves no lock to clear) and holds it until the output has landed or the process ends.
_LOCKS: dict[Path, int] = {}


def _lock_name(out: Path) -> Path:
    return out.parent / f".{out.name}.vqgen-lock"


def _launched_rank() -> bool:
    """True in a process that a distributed launcher started for a rank other than 0 (it runs
    the same command line; rank 0 holds the lock for the whole job)."""
    return any(os.environ.get(v, "0") not in ("", "0")
               for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def lock_output(out: str | os.PathLike, flag: str = "--out") -> None:
    """Take the exclusive lock on output path ``out`` for this process (again: no-op), or
    refuse when another run holds it. Creates ``out``'s parent folders."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent runs on one --out are not detected
        return
    key = _resolved(out)
    if key in _LOCKS or _launched_rank():
        return
    key.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_name(key)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(f"{flag} {out} is being written by another vqgen run (pid {holder}); "
                              f"wait for it to finish, or pass another {flag}") from None
        try:  # the holder we waited on may have removed the file: lock the one at the path
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[key] = fd


def unlock_output(out: str | os.PathLike) -> None:
    """Release the lock :func:`lock_output` took (the output has landed)."""
    fd = _LOCKS.pop(_resolved(out), None)
    if fd is not None:
        try:
            os.unlink(_lock_name(_resolved(out)))
        except FileNotFoundError:
            pass  # its folder was removed meanwhile (a test's or the user's tmp folder)
        finally:
            os.close(fd)


def release_output_locks() -> None:
    """Release every output lock this process holds (the command is over)."""
    for key in list(_LOCKS):
        unlock_output(key)


atexit.register(release_output_locks)


def _kind(path: Path) -> str:
    """What a non-regular, non-folder path is, for an error message."""
    import stat

    mode = path.stat().st_mode
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a file" if stat.S_ISREG(mode) else "not a regular file"


def check_output_file(path: str | os.PathLike, *, overwrite: bool, flag: str = "--out",
                      inputs: Iterable[tuple[str, object]] = ()) -> None:
    """The policy for a single output file (``--out x.png``, ``--report r.json``): never an
    input, never a folder or a device / FIFO / socket (``--overwrite`` would replace the node
    itself with a regular file: as root, ``/dev/null``), an existing file only with
    ``--overwrite``, and writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder, expected a file path; pass a file name")
    if path.exists() and not path.is_file():
        raise OutputError(f"{flag} {path} is {_kind(path)}, not a regular file; vqgen writes "
                          f"only regular files: pass another {flag}")
    check_not_input(path, inputs, flag)
    if path.exists() and not overwrite:
        raise OutputError(f"{flag} {path} exists; pass --overwrite to replace it, or another {flag}")
    check_writable(path, flag)


def _safe_relative(name: object) -> bool:
    """A manifest entry: a relative path inside the folder ("a.png", "dd/7/a.png")."""
    if not isinstance(name, str) or name == "" or name.startswith("/") or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def manifest_files(out: Path, manifest: str) -> set[str]:
    """Paths (relative, "/"-separated) a previous run of the verb wrote into ``out``: the
    ``files`` listed in its manifest (and in a pending one a killed commit left), plus the
    manifests. A folder's name listed alone (manifests before 0.1.1) owns only the files
    a new run writes at the same paths, never the rest of the folder."""
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
            owned |= {f for f in files if _safe_relative(f)}
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
        raise OutputError(f"{flag} {out} is {_kind(out)}, expected a folder; pass another {flag}")
    check_writable(out, flag)
    lock_output(out, flag)
    if not out.is_dir():
        return set()
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    owned_top = {name.split("/", 1)[0] for name in owned}  # dd/7/a.png: the folder dd
    ours = [n for n in entries if n in owned_top]
    foreign = [n for n in entries if n not in owned_top]
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


def _written_files(tmp: Path, manifest: str) -> list[str]:
    """Every file under ``tmp`` as a relative "/" path (folders are listed by their files)."""
    return sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(tmp).as_posix() != manifest)


def _check_merge(out: Path, files: list[str], old: set[str]) -> None:
    """Refuse, before anything moves, a commit that would write over a file the verb did not
    write, or write through a symlinked or non-folder parent (which could lead outside)."""
    for rel in files:
        parts = rel.split("/")
        for k in range(1, len(parts)):
            parent = out.joinpath(*parts[:k])
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                raise OutputError(f"--out {out}: {parent} is not a folder of vqgen's (a file or "
                                  f"a link); move it away or pass another --out")
        target = out / rel
        mine = rel in old or any(rel.startswith(o + "/") for o in old)
        if (target.exists() or target.is_symlink()) and not mine:
            raise OutputError(f"--out {out} holds {rel}, which vqgen did not write but would "
                              f"write over; move it away or pass another --out")
        if target.is_dir() and not target.is_symlink():
            raise OutputError(f"--out {out}: {rel} is a folder where vqgen writes a file; "
                              f"move it away or pass another --out")


def _prune_empty_parents(out: Path, rels: Iterable[str]) -> None:
    """Remove folders under ``out`` that removing ``rels`` left empty (deepest first)."""
    parents = {out.joinpath(*rel.split("/")[:k]) for rel in rels
               for k in range(1, len(rel.split("/")))}
    for d in sorted(parents, key=lambda q: len(q.parts), reverse=True):
        if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()


@contextmanager
def owned_output_dir(out: str | os.PathLike, manifest: str,
                     record: dict | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success its files land in ``out``.

    The caller writes its files (in subfolders too) into the temp folder; this writes
    ``manifest`` = ``record`` + ``{"files": [every file's relative path]}`` last. A new
    ``out`` is renamed into place whole. In an existing one only files are replaced, one by
    one: the previous run's listed files (the new ones, and the old ones no longer written,
    removed); a user's file anywhere in it, subfolders included, stays byte-identical, and
    a commit that would write over one is refused before anything moves. The old manifest
    goes first, the new one lands last, a pending list in between so a killed commit's
    files stay recognisably ours.
    """
    out = Path(out)
    lock_output(out)  # held since the claim; taken here for a caller that did not claim
    remove_stale_temps(out)  # a killed run's temp folder
    tmp = make_temp_dir(out)
    try:
        yield tmp
        (tmp / TEMP_MARK).unlink()
        files = _written_files(tmp, manifest)
        (tmp / manifest).write_text(json.dumps({**(record or {}), "files": files}, indent=2)
                                    + "\n")
        if not out.exists():
            os.replace(tmp, out)
            return
        old = manifest_files(out, manifest)
        _check_merge(out, files, old)
        pending = out / f".{manifest}.pending"
        pending.write_text(json.dumps({"files": sorted(old | set(files) | {manifest})}) + "\n")
        (out / manifest).unlink(missing_ok=True)
        for rel in files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, out / rel)
        gone = sorted(old - set(files) - {manifest, pending.name})
        for rel in gone:
            p = out / rel
            if p.is_file() or p.is_symlink():  # a listed folder (old manifests) is left
                p.unlink()
        _prune_empty_parents(out, gone)
        os.replace(tmp / manifest, out / manifest)
        pending.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        unlock_output(out)


def numbered_png(name: str) -> bool:
    """``000123.png``: the per-image files sample and decode write."""
    return re.fullmatch(r"\d{6,}\.png", name) is not None


__all__ = ["OutputError", "check_not_input", "check_output_file", "check_writable",
           "claim_output_dir",
           "lock_output", "manifest_files", "numbered_png", "owned_output_dir",
           "release_output_locks", "remove_stale_temps", "unlock_output"]
