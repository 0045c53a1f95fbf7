"""Code-map folders: the contract between stage one and stage two.

One folder per split::

    codes.npy    (N, h, w) uint16 when num_codes <= 65536 (else int32), memory-mappable
    labels.npy   (N,) int64, only when the data has classes
    meta.json    format_version, num_codes, code_shape, count, num_classes, class_names,
                 vqvae_checkpoint, vqvae_sha256, source

numpy + json only, so stage two can import this cheaply. ``meta.json`` is written last
and every file goes through a temp file + rename: a folder with a ``meta.json`` is whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runtime.errors import MissingInputError, UserError

FORMAT_VERSION = 1
META = "meta.json"
CODES = "codes.npy"
LABELS = "labels.npy"
_REQUIRED_KEYS = ("format_version", "num_codes", "code_shape", "count", "num_classes")


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
    return all(n in (CODES, LABELS) or (n.startswith(".") and ".tmp" in n) for n in names)


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
                           has_labels=True, meta={...}) as w:
            for codes, labels in batches:
                w.write(codes, labels)

    Nothing in the folder looks complete until ``close`` renames the arrays into place
    and writes ``meta.json`` last. A pre-existing ``meta.json`` is removed first, so an
    interrupted re-run never leaves old metadata beside new codes.
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
    ) -> None:
        self.folder = Path(folder)
        self.count, self.code_shape, self.num_codes = count, tuple(code_shape), num_codes
        self.has_labels = has_labels
        self.meta = dict(meta or {})
        self._pos = 0
        self._tmp_codes = self.folder / f".{CODES}.tmp"
        self._tmp_labels = self.folder / f".{LABELS}.tmp"
        # attach=True: another process (DDP rank 0) created the temp arrays; this one only
        # fills rows with write_at and never commits
        self._attached = attach
        self._created = False if attach else not self.folder.exists()
        if not attach:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / META).unlink(missing_ok=True)
        mode = "r+" if attach else "w+"
        self._codes = np.lib.format.open_memmap(
            self._tmp_codes, mode=mode, dtype=code_dtype(num_codes), shape=(count, *code_shape)
        )
        self._labels = (
            np.lib.format.open_memmap(self._tmp_labels, mode=mode, dtype=np.int64, shape=(count,))
            if has_labels
            else None
        )
        self._closed = False

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
        """Flush, rename the arrays into place, then write meta.json (the commit point)."""
        if self._closed:
            return
        if self._pos != self.count:
            raise CodeMapError(f"wrote {self._pos} rows, declared {self.count}")
        for arr, tmp, name in ((self._codes, self._tmp_codes, CODES),
                               (self._labels, self._tmp_labels, LABELS)):
            if arr is None:
                (self.folder / name).unlink(missing_ok=True)
                continue
            arr.flush()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / name)
        self._codes = self._labels = None
        meta = {
            **self.meta,
            "format_version": FORMAT_VERSION,
            "num_codes": int(self.num_codes),
            "code_shape": [int(s) for s in self.code_shape],
            "count": int(self.count),
        }
        meta.setdefault("num_classes", 0)
        meta.setdefault("class_names", [])
        _fsync_write_json(self.folder / META, meta)
        self._closed = True

    def abort(self) -> None:
        """Drop the temp files (after an error); the folder keeps no meta.json."""
        self._codes = self._labels = None
        if self._attached:  # the creating process owns the files
            self._closed = True
            return
        self._tmp_codes.unlink(missing_ok=True)
        self._tmp_labels.unlink(missing_ok=True)
        if self._created:
            try:
                self.folder.rmdir()  # only when empty
            except OSError:
                pass
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
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise CodeMapError(
            f"{path} has format_version {meta['format_version']}, newer than this vqgen reads "
            f"({FORMAT_VERSION}); upgrade vqgen"
        )
    return meta


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
    num_codes = int(meta["num_codes"])
    code_shape = tuple(int(s) for s in meta["code_shape"])
    count = int(meta["count"])
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
    return CodeMaps(folder, codes, labels, meta)


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

