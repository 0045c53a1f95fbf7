"""The ``.vqz`` container: bytes in, validated fields out. No torch, no models.

Layout (little-endian; ``varint`` = unsigned LEB128; ``str`` = varint length + UTF-8)::

    magic            4 bytes  b"\\x89VQZ" (the high byte catches 7-bit / text-mode copies)
    format_version   u8       FORMAT_VERSION; a newer one is refused
    header_length    varint   bytes of the header body that follow
    header body:
      prior_sha256   32 bytes  sha256 of the prior checkpoint file
      vqvae_sha256   32 bytes  sha256 of the VQ-VAE checkpoint file
      prior_path     str       where the checkpoints were (decompress looks there first)
      vqvae_path     str
      code_h, code_w, num_codes, num_classes, count, batch_size, images_per_stream: varints
      label_mode     u8        0 no image's label is coded, 1 every image's, 2 per-record flags
      device_type    str       "cpu", "cuda", "mps": where the probabilities were computed
      source         str       what the images were (a data spec and split, or a folder)
      names          u8 kind + data: 0 = "00000", "00001", ... (nothing stored);
                     1 = varint length + zlib("\\n".join(names))
    header_crc       u32      CRC-32 of magic .. end of header body
    records, one per stream of ``images_per_stream`` consecutive images (the last may be
    shorter):
      flags          ceil(n / 8) bytes, only when label_mode == 2: bit i = image i's label
                     is coded in the payload
      payload_length varint
      payload        the entropy coder's words, little-endian, high zero bytes of the last
                     word dropped (at most 3; ``pad_words`` restores them)
      crc            u32      CRC-32 of flags + payload_length + payload

The file ends right after the last record; anything after it is refused too. Per-image
names live in the header (one zlib stream compresses a list of file names far better than
names spread over the records), so a record is pure payload plus 5-6 bytes of framing.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from vqgen.stage1_vqvae.runtime.errors import UserError

MAGIC = b"\x89VQZ"
FORMAT_VERSION = 1
LABELS_NONE, LABELS_ALL, LABELS_MIXED = 0, 1, 2
NAMES_INDEX, NAMES_LIST = 0, 1


class VqzError(UserError):
    """A .vqz file that cannot be read: not one, truncated, corrupted or too new."""


def index_names(count: int) -> list[str]:
    """The names stored as kind 0: "00000", "00001", ... (rows of a data split)."""
    return [f"{i:05d}" for i in range(count)]


@dataclass
class Header:
    prior_sha256: str
    vqvae_sha256: str
    prior_path: str
    vqvae_path: str
    code_shape: tuple[int, int]
    num_codes: int
    num_classes: int
    count: int
    batch_size: int
    images_per_stream: int
    label_mode: int
    device_type: str
    source: str
    names: list[str] = field(default_factory=list)

    def streams(self) -> list[range]:
        """The image indices of each record, in file order."""
        g = self.images_per_stream
        return [range(s, min(s + g, self.count)) for s in range(0, self.count, g)]


@dataclass
class Record:
    images: range           # which images this stream codes
    flags: list[bool]       # per image: its label is coded in the payload
    payload: bytes
    size: int = 0           # bytes the record takes in the file (framing + payload)


# --------------------------------------------------------------------------- primitives


def _varint(n: int) -> bytes:
    assert n >= 0, n
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return _varint(len(raw)) + raw


class _Reader:
    """Reads fields from ``data``; a read past the end raises ``_Short``."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Short
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def varint(self) -> int:
        n = shift = 0
        while True:
            b = self.u8()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise _Bad("a length field is malformed")

    def str(self) -> str:
        raw = self.take(self.varint())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("a text field is not UTF-8") from None


class _Short(Exception):
    pass


class _Bad(Exception):
    pass


def words_to_payload(words_le: bytes) -> bytes:
    """Coder words as little-endian bytes -> payload: the last word's high zero bytes
    (at most 3) dropped. ANS keeps its state in the last word, which is often small."""
    trim = 0
    while trim < 3 and len(words_le) > trim and words_le[len(words_le) - 1 - trim] == 0:
        trim += 1
    return words_le[:len(words_le) - trim]


def pad_words(payload: bytes) -> bytes:
    """Inverse of :func:`words_to_payload`: zero bytes back to a whole number of words."""
    return payload + b"\0" * (-len(payload) % 4)


# --------------------------------------------------------------------------- writing


def pack_header(header: Header, names_blob: bytes | None) -> bytes:
    """The header with its CRC: names by index (``names_blob`` None) or the given deflated
    name table; ``header.names`` is not read (tests and benchmarks build hostile headers
    whose counts no names list could match)."""
    h, w = header.code_shape
    body = bytearray()
    body += bytes.fromhex(header.prior_sha256) + bytes.fromhex(header.vqvae_sha256)
    body += _str(header.prior_path) + _str(header.vqvae_path)
    for n in (h, w, header.num_codes, header.num_classes, header.count, header.batch_size,
              header.images_per_stream):
        body += _varint(n)
    body += bytes([header.label_mode]) + _str(header.device_type) + _str(header.source)
    if names_blob is None:
        body += bytes([NAMES_INDEX])
    else:
        body += bytes([NAMES_LIST]) + _varint(len(names_blob)) + names_blob
    out = bytearray(MAGIC + bytes([FORMAT_VERSION]) + _varint(len(body)) + body)
    return bytes(out + struct.pack("<I", zlib.crc32(out)))


def write_vqz(header: Header, records: list[Record]) -> bytes:
    """The whole file. ``records`` in ``header.streams()`` order; fills ``Record.size``."""
    blob = (None if header.names == index_names(header.count)
            else zlib.compress("\n".join(header.names).encode("utf-8"), 9))
    out = bytearray(pack_header(header, blob))
    assert [r.images for r in records] == header.streams()
    for rec in records:
        part = bytearray()
        if header.label_mode == LABELS_MIXED:
            part += _pack_flags(rec.flags)
        part += _varint(len(rec.payload)) + rec.payload
        part += struct.pack("<I", zlib.crc32(part))
        rec.size = len(part)
        out += part
    return bytes(out)


def _pack_flags(flags: list[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, f in enumerate(flags):
        if f:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


# --------------------------------------------------------------------------- reading


def read_header(data: bytes, where: str = "the file") -> tuple[Header, int]:
    """Parse and check the header; returns it and the offset of the first record.

    Raises VqzError: not a .vqz file, a newer format version, truncated, corrupted.
    """
    if data[:4] != MAGIC:
        raise VqzError(f"{where} is not a .vqz file (it does not start with the vqz magic "
                       "bytes); pass a file written by `vqgen compress`")
    r = _Reader(data, 4)
    try:
        version = r.u8()
        if version > FORMAT_VERSION:
            raise VqzError(f"{where} has .vqz format version {version}, newer than this vqgen "
                           f"reads ({FORMAT_VERSION}); upgrade vqgen")
        if version < 1:
            raise _Bad(f"format version {version} does not exist")
        body_len = r.varint()
        body = _Reader(r.take(body_len))
        crc = r.u32()
    except _Short:
        raise VqzError(f"{where} is truncated inside its header; copy the file again") from None
    except _Bad as e:
        raise VqzError(f"{where} has a corrupted header ({e}); copy the file again") from None
    if zlib.crc32(data[:r.pos - 4]) != crc:
        raise VqzError(f"{where} has a corrupted header (its CRC does not match); "
                       "copy the file again")
    try:
        prior_sha, vqvae_sha = body.take(32).hex(), body.take(32).hex()
        prior_path, vqvae_path = body.str(), body.str()
        h, w, k, nc, count, bs, per = (body.varint() for _ in range(7))
        label_mode = body.u8()
        device_type, source = body.str(), body.str()
        kind = body.u8()
        _check_count(count, h, w, where)
        if kind == NAMES_INDEX:
            names = index_names(count)
        elif kind == NAMES_LIST:
            names = _read_names(body.take(body.varint()), count, where)
        else:
            raise _Bad(f"unknown name table kind {kind}")
    except (_Short, _Bad, zlib.error, UnicodeDecodeError) as e:
        # the CRC matched, so these bytes were written like this: not a vqgen file
        raise VqzError(f"{where} has a header this vqgen cannot parse ({e or 'too short'}); "
                       "it was not written by `vqgen compress`") from None
    if (len(names) != count or min(h, w, k, bs, per) < 1 or label_mode > LABELS_MIXED
            or body.pos != len(body.data)):
        raise VqzError(f"{where} has an inconsistent header; it was not written by "
                       "`vqgen compress`")
    return Header(prior_sha, vqvae_sha, prior_path, vqvae_path, (h, w), k, nc, count, bs,
                  per, label_mode, device_type, source, names), r.pos


# a stored name is a path: at most this many bytes (PATH_MAX) plus its newline
MAX_NAME_BYTES = 4096
# zlib inflates at most ~1032:1; names need >= 2 bytes each ("a\n")
ZLIB_MAX_RATIO = 1032
# what decoding one image holds at least: its codes (int64) and its name (a Python str)
BYTES_PER_IMAGE = 8 + 64


def _check_count(count: int, h: int, w: int, where: str) -> None:
    """Refuse a header whose image count cannot be decoded in this machine's memory, before
    anything of that size is allocated (a 169-byte file said 10**9 images)."""
    from vqgen.stage1_vqvae.runtime.memory import available_memory

    need = count * (8 * h * w + BYTES_PER_IMAGE)
    have = available_memory()
    if have is not None and need > 0.8 * have:
        raise VqzError(f"{where} says it holds {count:,} images of {h}x{w} codes, which would "
                       f"need {need / 2**30:.1f} GiB to decode ({have / 2**30:.1f} GiB "
                       "available); it is damaged or was not written by `vqgen compress`")


def _read_names(packed: bytes, count: int, where: str) -> list[str]:
    """The zlib name table, inflated at most as far as ``count`` names can reach (a 204 KB
    zlib bomb reached 2.6 GB before)."""
    if 2 * count - 1 > ZLIB_MAX_RATIO * len(packed) + 64:
        raise _Bad(f"{count:,} names cannot fit in {len(packed):,} compressed bytes")
    cap = count * (MAX_NAME_BYTES + 1)
    d = zlib.decompressobj()
    raw = d.decompress(packed, cap + 1)
    if len(raw) > cap or d.unconsumed_tail:
        raise _Bad(f"its name table inflates past {cap:,} bytes for {count:,} names")
    text = raw.decode("utf-8")
    return text.split("\n") if count else []


def read_records(data: bytes, header: Header, start: int, where: str = "the file"
                 ) -> list[Record]:
    """Every record, its CRC checked. A truncated or corrupted record is named by its
    images (names and positions) in the VqzError."""
    r = _Reader(data, start)
    records = []
    for images in header.streams():
        begin = r.pos
        try:
            flags = [header.label_mode == LABELS_ALL] * len(images)
            if header.label_mode == LABELS_MIXED:
                raw = r.take((len(images) + 7) // 8)
                flags = [bool(raw[i // 8] >> (i % 8) & 1) for i in range(len(images))]
            payload = r.take(r.varint())
            crc = r.u32()
        except (_Short, _Bad):
            raise VqzError(f"{where} is truncated: it ends inside the data of "
                           f"{_describe(header, images)}; copy the file again") from None
        if zlib.crc32(data[begin:r.pos - 4]) != crc:
            raise VqzError(f"{where} is corrupted: the CRC of {_describe(header, images)} "
                           "does not match; copy the file again")
        records.append(Record(images, flags, payload, r.pos - begin))
    if r.pos != len(data):
        raise VqzError(f"{where} has {len(data) - r.pos} unexpected bytes after its last "
                       "image; it is damaged or not a .vqz file")
    return records


def _describe(header: Header, images: range) -> str:
    if len(images) == 1:
        return f"image {images[0]} ({header.names[images[0]]})"
    first, last = images[0], images[-1]
    return (f"images {first}..{last} ({header.names[first]} .. {header.names[last]}, "
            "coded as one stream)")
