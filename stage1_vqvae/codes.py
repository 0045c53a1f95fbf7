"""Code-map folders: the contract between stage one and stage two.

One folder per split::

    codes.npy    (N, h, w) uint16 when num_codes <= 65536 (else int32), memory-mappable
    labels.npy   (N,) int64, only when the data has classes
    index.npy    (N,) int64, each row's position in the full source (dataset index; for
                 image folders the position in the sorted file list)
    paths.json   {"root": folder, "paths": [relative file path of each row]}, image folders only
    meta.json    format_version, num_codes, code_shape, count, num_classes, class_names,
                 vqvae_checkpoint, vqvae_sha256, source

numpy + json only, so stage two can import this cheaply. The folder is built beside its
target and swapped into place with ``meta.json`` written last: a folder with a
``meta.json`` is whole, and a previous whole folder stays whole until then. The reader
checks every meta.json value's type and range and names the file when something is off.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runtime.errors import MissingInputError, UserError
from .runtime.fsutil import replace_dir

FORMAT_VERSION = 1
META = "meta.json"
CODES = "codes.npy"
LABELS = "labels.npy"
INDEX = "index.npy"  # (N,) int64: each row's position in the full source (dataset index)
PATHS = "paths.json"  # {"root", "paths"}: each row's image file, relative (image folders)
OWN_FILES = (META, CODES, LABELS, INDEX, PATHS)
_REQUIRED_KEYS = ("format_version", "num_codes", "code_shape", "count", "num_classes")
MAX_NUM_CODES = 1 << 20  # the prior's embedding and logits grow with K: beyond this, refused
MAX_CODE_SIDE = 1024


class CodeMapError(UserError):
    """A code-map folder or file is missing, inconsistent or corrupt."""


def code_dtype(num_codes: int) -> np.dtype:
    return np.dtype(np.uint16) if num_codes <= 65536 else np.dtype(np.int32)


def is_code_map_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / META).is_file()


def is_unfinished_code_map_folder(path: str | os.PathLike) -> bool:
    """A folder an interrupted :class:`CodeMapWriter` left: no ``meta.json``, and only code
    arrays and their temp files (safe to write again)."""
    path = Path(path)
    if not path.is_dir() or (path / META).exists():
        return False
    names = [p.name for p in path.iterdir()]
    return all(n in OWN_FILES or (n.startswith(".") and ".tmp" in n) for n in names)


def _fsync_write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CodeMapWriter:
    """Stream code maps into ``folder`` batch by batch, in order, with constant memory.

    Usage::

        with CodeMapWriter(folder, count=N, code_shape=(h, w), num_codes=K,
                           has_labels=True, meta={...}, index=idx, paths=rel) as w:
            for codes, labels in batches:
                w.write(codes, labels)

    Everything is written into a hidden staging folder beside ``folder``
    (``.NAME.partial``); ``close`` writes ``meta.json`` there last and then swaps the
    staging folder onto ``folder`` (:func:`~.runtime.fsutil.replace_dir`). So a previous
    complete split stays readable until the new one is whole, and a killed writer leaves
    only the hidden staging folder (removed by the next writer of the same folder).

    ``index`` int (N,): each row's position in the full source (dataset index); ``paths``:
    each row's file path relative to the source folder (image folders). Both land beside
    the codes (``index.npy``, ``paths.json``) so every row can be traced to its image.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        count: int,
        code_shape: tuple[int, int],
        num_codes: int,
        has_labels: bool,
        meta: dict[str, Any] | None = None,
        attach: bool = False,
        index: np.ndarray | None = None,
        paths: list[str] | None = None,
        root: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.count, self.code_shape, self.num_codes = count, tuple(code_shape), num_codes
        self.has_labels = has_labels
        self.meta = dict(meta or {})
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.paths, self.root = (None if paths is None else [str(p) for p in paths]), root
        if self.index is not None and self.index.shape != (count,):
            raise CodeMapError(f"index has shape {self.index.shape}, expected ({count},)")
        if self.paths is not None and len(self.paths) != count:
            raise CodeMapError(f"{len(self.paths)} paths for {count} rows")
        self._pos = 0
        self.staging = staging_folder(self.folder)
        # attach=True: another process (DDP rank 0) created the staging arrays; this one
        # only fills rows with write_at and never commits
        self._attached = attach
        if not attach:
            self._check_replaceable()
            if self.staging.exists():  # a killed writer's leftovers
                shutil.rmtree(self.staging)
            self.staging.mkdir(parents=True)
        mode = "r+" if attach else "w+"
        self._codes = np.lib.format.open_memmap(
            self.staging / CODES, mode=mode, dtype=code_dtype(num_codes),
            shape=(count, *code_shape)
        )
        self._labels = (
            np.lib.format.open_memmap(self.staging / LABELS, mode=mode, dtype=np.int64,
                                      shape=(count,))
            if has_labels
            else None
        )
        self._closed = False

    def _check_replaceable(self) -> None:
        """Only a code-map folder (whole or unfinished) or an empty one is ever replaced."""
        f = self.folder
        if f.exists() and not f.is_dir():
            raise CodeMapError(f"{f} is a file, expected a code-map folder")
        if f.is_dir() and not (is_code_map_folder(f) or is_unfinished_code_map_folder(f)):
            other = sorted(p.name for p in f.iterdir() if p.name not in OWN_FILES)
            raise CodeMapError(f"{f} holds {other[0] if other else 'other files'}, not code "
                               "maps; write the code maps to another folder")

    def write(self, codes: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Append a batch: codes integer (B, h, w) in [0, num_codes), labels (B,)."""
        codes = np.asarray(codes)
        b = codes.shape[0]
        if codes.shape[1:] != self.code_shape:
            raise CodeMapError(f"batch grid {codes.shape[1:]} != code_shape {self.code_shape}")
        if self._pos + b > self.count:
            raise CodeMapError(f"more rows than the declared count {self.count}")
        if b and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise CodeMapError(f"code values outside [0, {self.num_codes})")
        self._codes[self._pos : self._pos + b] = codes
        if self._labels is not None:
            if labels is None:
                raise CodeMapError("labels expected for this code map")
            self._labels[self._pos : self._pos + b] = np.asarray(labels)
        self._pos += b

    def write_at(self, index: np.ndarray, codes: np.ndarray, labels: np.ndarray | None = None
                 ) -> None:
        """Write rows ``index`` (B,) in [0, count) out of order (one rank's share under DDP);
        the caller accounts for coverage and then calls :meth:`commit_rows` before close."""
        index = np.asarray(index, dtype=np.int64)
        codes = np.asarray(codes)
        if codes.shape[1:] != self.code_shape or codes.shape[0] != index.shape[0]:
            raise CodeMapError(f"batch {codes.shape} does not fit {index.shape[0]} rows of "
                               f"{self.code_shape}")
        if index.size and (index.min() < 0 or index.max() >= self.count):
            raise CodeMapError(f"row index outside [0, {self.count})")
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise CodeMapError(f"code values outside [0, {self.num_codes})")
        self._codes[index] = codes
        if self._labels is not None:
            if labels is None:
                raise CodeMapError("labels expected for this code map")
            self._labels[index] = np.asarray(labels)

    def flush(self) -> None:
        for arr in (self._codes, self._labels):
            if arr is not None:
                arr.flush()

    def commit_rows(self, rows: int) -> None:
        """Declare ``rows`` rows written by :meth:`write_at` (all ranks together)."""
        self._pos = int(rows)

    def close(self) -> None:
        """Flush the arrays, write the row sources and meta.json (last) in the staging
        folder, then swap it onto ``folder`` (the commit point)."""
        if self._closed:
            return
        if self._pos != self.count:
            raise CodeMapError(f"wrote {self._pos} rows, declared {self.count}")
        for arr, name in ((self._codes, CODES), (self._labels, LABELS)):
            if arr is None:
                continue
            arr.flush()
            with open(self.staging / name, "rb+") as f:
                os.fsync(f.fileno())
        self._codes = self._labels = None
        index = np.arange(self.count, dtype=np.int64) if self.index is None else self.index
        np.save(self.staging / INDEX, index)
        if self.paths is not None:
            _fsync_write_json(self.staging / PATHS, {"root": self.root, "paths": self.paths})
        meta = {
            **self.meta,
            "format_version": FORMAT_VERSION,
            "num_codes": int(self.num_codes),
            "code_shape": [int(s) for s in self.code_shape],
            "count": int(self.count),
        }
        meta.setdefault("num_classes", 0)
        meta.setdefault("class_names", [])
        _fsync_write_json(self.staging / META, meta)
        replace_dir(self.staging, self.folder)
        self._closed = True

    def abort(self) -> None:
        """Drop the staging folder (after an error); ``folder`` is left as it was."""
        self._codes = self._labels = None
        if not self._attached:  # the creating process owns the files
            shutil.rmtree(self.staging, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> CodeMapWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def staging_folder(folder: str | os.PathLike) -> Path:
    """Where :class:`CodeMapWriter` builds ``folder`` before swapping it into place (the
    same name on every DDP rank)."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.partial")


def write_code_maps(
    folder: str | os.PathLike,
    codes: np.ndarray,
    labels: np.ndarray | None,
    *,
    num_codes: int,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a whole code map at once: codes (N, h, w), labels (N,) or None."""
    codes = np.asarray(codes)
    with CodeMapWriter(
        folder, count=codes.shape[0], code_shape=codes.shape[1:], num_codes=num_codes,
        has_labels=labels is not None, meta=meta,
    ) as w:
        w.write(codes, labels)
    return Path(folder)


@dataclass
class CodeMaps:
    """A validated code-map folder: codes (N, h, w) (memory-mapped), labels (N,) or None."""

    folder: Path
    codes: np.ndarray
    labels: np.ndarray | None
    meta: dict[str, Any]
    index: np.ndarray | None = None  # (N,) int64 source position of each row, when recorded

    def paths(self) -> list[str] | None:
        """Each row's image file relative to ``meta["source"]``'s folder (``paths.json``),
        or None when the source was not an image folder."""
        p = self.folder / PATHS
        if not p.is_file():
            return None
        try:
            paths = json.loads(p.read_text())["paths"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CodeMapError(f"{p} is not readable ({e}); re-run `vqgen encode`") from e
        if not isinstance(paths, list) or len(paths) != len(self):
            raise CodeMapError(f"{p} does not list one path per row ({len(self)})")
        return paths

    @property
    def num_codes(self) -> int:
        return int(self.meta["num_codes"])

    @property
    def code_shape(self) -> tuple[int, int]:
        return tuple(self.meta["code_shape"])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.meta.get("num_classes", 0))

    def __len__(self) -> int:
        return int(self.codes.shape[0])


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / META
    if not folder.exists():
        raise MissingInputError(f"code-map folder {folder} does not exist; run `vqgen encode` first")
    if not path.is_file():
        raise CodeMapError(
            f"no code maps in {folder} (no meta.json); run `vqgen encode` first, or pass a split "
            "folder such as .../codes/train"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CodeMapError(f"{path} is not valid JSON ({e}); re-run `vqgen encode`") from e
    if not isinstance(meta, dict):
        raise CodeMapError(f"{path} should hold a JSON object; re-run `vqgen encode`")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise CodeMapError(f"{path} lacks {', '.join(missing)}; re-run `vqgen encode`")
    _check_meta(meta, path)
    return meta


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """Types and ranges of every value the readers use; one line naming the key."""
    def bad(key: str, expected: str) -> CodeMapError:
        return CodeMapError(f"{path}: {key} is {meta.get(key)!r}, expected {expected}; "
                            "re-run `vqgen encode` (the file was edited or damaged)")

    if not _is_int(meta["format_version"]) or meta["format_version"] < 1:
        raise bad("format_version", "an integer >= 1")
    if meta["format_version"] > FORMAT_VERSION:
        raise CodeMapError(
            f"{path} has format_version {meta['format_version']}, newer than this vqgen reads "
            f"({FORMAT_VERSION}); upgrade vqgen"
        )
    if not _is_int(meta["num_codes"]) or not 1 <= meta["num_codes"] <= MAX_NUM_CODES:
        raise bad("num_codes", f"an integer in [1, {MAX_NUM_CODES}]")
    shape = meta["code_shape"]
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(_is_int(v) and 1 <= v <= MAX_CODE_SIDE for v in shape)):
        raise bad("code_shape", f"[h, w] with integers in [1, {MAX_CODE_SIDE}]")
    if not _is_int(meta["count"]) or meta["count"] < 0:
        raise bad("count", "an integer >= 0")
    if not _is_int(meta["num_classes"]) or meta["num_classes"] < 0:
        raise bad("num_classes", "an integer >= 0")
    names = meta.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "a list of strings")
    if names and len(names) != meta["num_classes"]:
        raise CodeMapError(f"{path}: num_classes is {meta['num_classes']} but class_names has "
                           f"{len(names)} names; they must agree (re-run `vqgen encode`)")
    for key in ("vqvae_checkpoint", "vqvae_sha256", "source"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(key, "a string or null")


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise CodeMapError(f"{path} is missing; re-run `vqgen encode`")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CodeMapError(f"{path} is not a readable .npy array ({e}); re-run `vqgen encode`") from e


def validate_codes(
    codes: np.ndarray, num_codes: int, code_shape: tuple[int, int] | None, name: str
) -> None:
    """Check dtype (integer), rank, grid and value range; raise CodeMapError naming ``name``."""
    if not np.issubdtype(codes.dtype, np.integer):
        raise CodeMapError(f"{name} holds {codes.dtype}, expected integer codes")
    if codes.ndim != 3:
        raise CodeMapError(f"{name} has shape {codes.shape}, expected (N, h, w)")
    if code_shape is not None and tuple(codes.shape[1:]) != tuple(code_shape):
        raise CodeMapError(
            f"{name} holds {codes.shape[1]}x{codes.shape[2]} grids, expected "
            f"{code_shape[0]}x{code_shape[1]}"
        )
    if codes.size:
        # chunked so a memory-mapped file is scanned without loading it whole
        lo, hi = 0, -1
        step = max(1, (1 << 24) // max(1, codes[0].size))
        for s in range(0, codes.shape[0], step):
            chunk = np.asarray(codes[s : s + step])
            lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
        if lo < 0 or hi >= num_codes:
            raise CodeMapError(
                f"{name} holds codes in [{lo}, {hi}], outside [0, {num_codes}) for "
                f"num_codes={num_codes}; the codes come from a different VQ-VAE"
            )


def read_code_maps(folder: str | os.PathLike, *, mmap: bool = True) -> CodeMaps:
    """Open and validate a code-map folder written by :class:`CodeMapWriter`."""
    folder = Path(folder)
    meta = read_meta(folder)
    num_codes = meta["num_codes"]
    code_shape = tuple(meta["code_shape"])
    count = meta["count"]
    codes = _load_npy(folder / CODES, mmap)
    if codes.dtype != code_dtype(num_codes):
        raise CodeMapError(
            f"{folder / CODES} has dtype {codes.dtype}, expected {code_dtype(num_codes)}; "
            "re-run `vqgen encode`"
        )
    validate_codes(codes, num_codes, code_shape, str(folder / CODES))
    if codes.shape[0] != count:
        raise CodeMapError(f"{folder / CODES} has {codes.shape[0]} rows, meta.json says {count}")
    labels = None
    num_classes = int(meta.get("num_classes", 0))
    if num_classes > 0:
        labels = _load_npy(folder / LABELS, mmap)
        if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
            raise CodeMapError(
                f"{folder / LABELS} has shape {labels.shape} {labels.dtype}, expected ({count},) int64"
            )
        if count and (labels.min() < 0 or labels.max() >= num_classes):
            raise CodeMapError(f"{folder / LABELS} holds labels outside [0, {num_classes})")
    index = None
    if (folder / INDEX).exists():  # absent in folders written before vqgen recorded sources
        index = _load_npy(folder / INDEX, mmap)
        if index.shape != (count,) or not np.issubdtype(index.dtype, np.integer):
            raise CodeMapError(f"{folder / INDEX} has shape {index.shape} {index.dtype}, "
                               f"expected ({count},) int64")
    return CodeMaps(folder, codes, labels, meta, index)


def load_codes_file(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Codes from a code-map folder or a bare ``.npy`` (N, h, w) / (h, w) file.

    Returns (codes int (N, h, w), meta or None). Range checks against a model are the
    caller's job for bare files (no meta to check against).
    """
    path = Path(path)
    if path.is_dir():
        maps = read_code_maps(path)
        return maps.codes, maps.meta
    if not path.exists():
        raise MissingInputError(f"codes {path} do not exist; pass a code-map folder or a .npy file")
    codes = _load_npy(path, mmap=True)
    if codes.ndim == 2:
        codes = codes[None]
    if not np.issubdtype(codes.dtype, np.integer) or codes.ndim != 3:
        raise CodeMapError(f"{path} has {codes.dtype} {codes.shape}, expected integer (N, h, w)")
    return codes, None

