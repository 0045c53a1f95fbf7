"""Atomic writes: an interrupted command never leaves output that looks whole."""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: someone else's live process
        return True
    return True


# Temp names this program makes: ".{name}.vqgen-{pid}.{8 random}.tmp{suffix}" beside
# ``name``; a temp folder also holds TEMP_MARK. The sweep below removes only names of exactly
# that form (and folders only with the mark), so a user's ".samples.20240101.tmp.txt" or
# ".samples.7777777.backup.tmp" is never taken for a dead run's leftovers.
TEMP_MARK = ".vqgen-temp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.vqgen-{os.getpid()}."


def _temp_owner(path: Path, candidate: Path) -> int | None:
    """The writer's pid when ``candidate`` is one of our temps for ``path``, else None."""
    m = re.fullmatch(rf"\.{re.escape(path.name)}\.vqgen-(\d+)\.[a-z0-9_]{{8}}\.tmp(\.[^/]*)?",
                     candidate.name)
    if m is None:
        return None
    if candidate.is_symlink() or (candidate.is_dir() and not (candidate / TEMP_MARK).is_file()):
        return None
    return int(m.group(1))


def make_temp_dir(path: Path) -> Path:
    """A fresh temp folder beside ``path``, marked as ours, with mkdir's usual mode."""
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    (tmp / TEMP_MARK).touch()
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700); give mkdir's mode
    return tmp


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete our temp files/folders beside ``path`` whose writing process is gone (killed
    mid-write, e.g. by SIGKILL, which no ``finally`` survives); see TEMP_MARK."""
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{glob.escape(path.name)}.vqgen-*.tmp*"):
        pid = _temp_owner(path, p)
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); give open()'s mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``path``; on success it replaces ``path`` whole.

    The caller decides beforehand whether replacing an existing ``path`` is allowed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = make_temp_dir(path)
    try:
        yield tmp
        (tmp / TEMP_MARK).unlink()
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False when the
    platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished folder ``new`` onto ``path``. An existing ``path`` is swapped out
    atomically where the OS can (Linux), so a kill at any moment leaves either the old or
    the new folder whole at ``path``; elsewhere there is a moment with neither."""
    new, path = Path(new), Path(path)
    if not path.exists():
        os.replace(new, path)
        return
    if _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.replace(path, old)  # (onto the empty folder just made: a name no one else holds)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)
