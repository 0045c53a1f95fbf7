"""An image codec from the two stages: VQ-VAE codes, entropy-coded under the prior.

``compress`` encodes images to code grids with the VQ-VAE and codes each grid in raster
order with an ANS coder (``constriction``) driven by the prior's conditional
distributions; ``decompress`` decodes code by code, rebuilding the same distributions,
then decodes the grids to images. The container is :mod:`pipeline.codec.vqz`.

Bit-exact decoding: encoder and decoder get their probabilities from one code path,
:func:`stage2_prior.cached.scan_codes` (the cached sampler's per-position logits) on the
same batches (``batch_size`` is recorded in the file and the decoder reuses it: float
rounding in a matmul may depend on the batch), then :func:`code_probabilities` (float32
softmax, as float64 for the coder) and constriction's ``Categorical(perfect=False)``,
which quantises to the coder's 24-bit integer probabilities deterministically. So a file
decodes with the same checkpoints on the same device type; the ANS coder must end
exactly empty, which catches probabilities that differ from the encoder's (another device
type or torch build) with near certainty and names the images.

Labels: with a class-conditional prior, an image's label is coded first, uniformly over
the classes (log2(num_classes) bits), and its codes under the class; ``labels="null"``
codes every image under the null class instead (docs/codec.md says which is smaller).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import constriction
import numpy as np
import torch
from torch import Tensor

from vqgen.pipeline import metrics as M
from vqgen.pipeline.codec.vqz import (
    LABELS_ALL,
    LABELS_MIXED,
    LABELS_NONE,
    Header,
    Record,
    VqzError,
    index_names,
    pad_words,
    read_header,
    read_records,
    words_to_payload,
    write_vqz,
)
from vqgen.pipeline.generate import MismatchError, check_compatible
from vqgen.stage1_vqvae.lit import LitVQVAE
from vqgen.stage1_vqvae.runtime.checkpoint import file_sha256
from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage1_vqvae.runtime.pretrained import model_sha256
from vqgen.stage2_prior.cached import scan_codes
from vqgen.stage2_prior.lit import LitPrior

STREAMS = ("batch", "image", "all")  # images per ANS stream: a batch, one, all of them
LABEL_MODES = ("code", "null")
DEFAULT_LABELS = "code"   # 3.3 bits for the label buy ~7.6 bits on the codes (README)
DEFAULT_BATCH_SIZE = 64

# one coder semantics for encoder and decoder (perfect=False: fast, deterministic)
_CODE_MODEL = constriction.stream.model.Categorical(perfect=False)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the prior's scan on one CPU thread, in the encoder and the decoder alike.

    A CPU's matmul and convolution kernels split their work by the thread count, and the
    float32 sums (so the probabilities the coder sees) can differ in the last bit between
    2 threads and 1: a file made by a 1-thread process (``vqgen serve``'s workers, a CI
    job) then would not decode in a 2-thread one. One thread makes the file independent of
    the process's thread setting; docs/codec.md's speeds were measured on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def code_probabilities(logits: Tensor) -> np.ndarray:
    """The one function from logits to the coder's input, used by encoder and decoder.

    logits float (B, K) -> float64 numpy (B, K): float32 softmax on the logits' device,
    widened exactly to float64. constriction quantises it to integers deterministically.
    """
    return torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------- checkpoints


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def checkpoint_sha256(module: torch.nn.Module, what: str) -> tuple[str, str]:
    """(absolute path, sha256) of the file ``module`` was loaded from (``load_prior`` /
    ``load_vqvae`` record it; a pretrained folder's weights); cached per (path, mtime, size)."""
    path = getattr(module, "checkpoint_path", None)
    if not path:
        raise UserError(f"the {what} was not loaded from a checkpoint file; a .vqz records "
                        f"its checkpoint's sha256, so load it with load_{what.replace('-', '')}"
                        "(path) or load_pair")
    p = Path(path).resolve()
    if p.is_dir():  # a pretrained folder: the sha256 of its weights, recorded (and checked) at load
        return str(p), model_sha256(p)
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(p)
    return str(p), _SHA_CACHE[key]


def check_checkpoints(header: Header, prior: LitPrior, vqvae: LitVQVAE, where: str) -> None:
    """Refuse models whose checkpoint files are not the ones ``header`` was made with,
    naming both hashes."""
    for what, module, want, made in (("prior", prior, header.prior_sha256, header.prior_path),
                                     ("VQ-VAE", vqvae, header.vqvae_sha256, header.vqvae_path)):
        path, have = checkpoint_sha256(module, what.lower().replace("-", ""))
        if have != want:
            flag = "--prior" if what == "prior" else "--vqvae"
            raise MismatchError(
                f"{where} was made with a {what} of sha256 {want[:16]}... ({made}), but "
                f"{path} has sha256 {have[:16]}...; pass the {what} it was made with ({flag})")


# --------------------------------------------------------------------------- labels


def _label_index(prior: LitPrior, labels: Tensor, flags: Sequence[bool]) -> Tensor | None:
    """What the network runs on: the label where it is coded, the null class elsewhere;
    None for an unconditional prior."""
    model = prior.model
    if model.num_classes == 0:
        return None
    idx = torch.where(torch.as_tensor(list(flags), dtype=torch.bool), labels,
                      torch.full_like(labels, model.null_label))
    return idx.to(model.embed.weight.device)


def _check_labels(prior: LitPrior, labels: Tensor | None, count: int, mode: str
                  ) -> tuple[Tensor, list[bool]]:
    """labels int64 (count,) (-1 = none) and per-image flags (label coded or not)."""
    if mode not in LABEL_MODES:
        raise UserError(f"labels mode {mode!r}: expected one of {', '.join(LABEL_MODES)}")
    if labels is None:
        labels = torch.full((count,), -1, dtype=torch.long)
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (count,) or labels.is_floating_point():
        raise UserError(f"labels must be an integer tensor of shape ({count},), got "
                        f"{labels.dtype} {tuple(labels.shape)}")
    labels = labels.long()
    nc = prior.model.num_classes
    bad = (labels < -1) | (labels >= nc)
    if nc and bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise UserError(f"label {int(labels[i])} of image {i} is not a class of this prior "
                        f"(0..{nc - 1}; -1 = no label)")
    flags = [bool(nc and mode == "code" and v >= 0) for v in labels.tolist()]
    return labels, flags


# --------------------------------------------------------------------------- streams


def _stream_size(stream: str, batch_size: int, count: int) -> int:
    if stream not in STREAMS:
        raise UserError(f"stream {stream!r}: expected one of {', '.join(STREAMS)}")
    return {"image": 1, "batch": batch_size, "all": max(count, 1)}[stream]


def _batches(count: int, batch_size: int) -> list[range]:
    return [range(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]


def _check_layout(header: Header, where: str) -> None:
    g, bs = header.images_per_stream, header.batch_size
    if not (g == 1 or g % bs == 0 or g >= header.count):
        raise VqzError(f"{where} codes {g} images per stream with batches of {bs}; this "
                       "vqgen writes 1, a multiple of the batch, or all: not a vqgen file")


# --------------------------------------------------------------------------- encoding


@dataclass
class Compressed:
    data: bytes                # the .vqz file
    header: Header
    records: list[Record]      # sizes filled in
    code_bits: np.ndarray      # float64 (N,): ideal -log2 p of each image's codes
    label_bits: np.ndarray     # float64 (N,): ideal bits of each coded label (0 if none)
    header_bytes: int

    @property
    def ideal_bits(self) -> np.ndarray:
        return self.code_bits + self.label_bits


@torch.inference_mode()
def compress_codes(
    prior: LitPrior,
    vqvae: LitVQVAE,
    codes: Tensor,
    labels: Tensor | None = None,
    *,
    names: Sequence[str] | None = None,
    source: str = "",
    batch_size: int = DEFAULT_BATCH_SIZE,
    stream: str = "batch",
    label_mode: str = DEFAULT_LABELS,
) -> Compressed:
    """Entropy-code code grids int (N, h, w) in [0, K) into a .vqz file.

    labels int64 (N,) class indices, -1 where unknown (coded when ``label_mode="code"``
    and the prior is class-conditional). names: one per image (default "00000", ...).
    Images are run through the prior ``batch_size`` at a time (the decoder reuses it);
    each ANS stream holds one image, one batch or all images (``stream``).
    """
    check_compatible(prior, vqvae)
    model = prior.model.eval()
    codes = torch.as_tensor(codes)
    count = codes.shape[0] if codes.dim() == 3 else -1
    if count < 0 or tuple(codes.shape[1:]) != tuple(model.code_shape):
        raise UserError(f"codes must be (N, {model.code_shape[0]}, {model.code_shape[1]}), "
                        f"got {tuple(codes.shape)}")
    if count and (int(codes.min()) < 0 or int(codes.max()) >= model.num_codes):
        raise UserError(f"codes must be in [0, {model.num_codes - 1}]")
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be positive")
    names = index_names(count) if names is None else [str(n) for n in names]
    if len(names) != count or any("\n" in n or not n for n in names):
        raise UserError(f"names: expected {count} non-empty names without newlines")
    output_names(names, where="compress")  # a file decompress could not write out: refuse now
    labels, flags = _check_labels(prior, labels, count, label_mode)
    prior_path, prior_sha = checkpoint_sha256(prior, "prior")
    vqvae_path, vqvae_sha = checkpoint_sha256(vqvae, "vqvae")
    g = _stream_size(stream, batch_size, count)
    nc = model.num_classes
    label_mode_id = (LABELS_ALL if all(flags) and count else
                     LABELS_NONE if not any(flags) else LABELS_MIXED)
    header = Header(prior_sha, vqvae_sha, prior_path, vqvae_path, tuple(model.code_shape),
                    model.num_codes, nc, count, batch_size, g, label_mode_id,
                    model.embed.weight.device.type, source, names)
    h, w = model.code_shape
    dev = model.embed.weight.device
    code_bits = np.zeros(count)
    label_bits = np.array([math.log2(nc) if f else 0.0 for f in flags])
    coders: dict[int, constriction.stream.stack.AnsCoder] = {}

    def coder(i: int) -> constriction.stream.stack.AnsCoder:
        return coders.setdefault(i // g, constriction.stream.stack.AnsCoder())

    # ANS is a stack: push the last batch first, so the decoder pops batches in order
    for batch in reversed(_batches(count, batch_size)):
        n = len(batch)
        known = codes[batch.start:batch.stop].to(dev, torch.long)
        probs: list[np.ndarray] = []

        def pick(i: int, j: int, logits: Tensor, known=known, probs=probs) -> Tensor:
            probs.append(code_probabilities(logits))
            return known[:, i, j]

        with one_thread():
            scan_codes(model, _label_index(prior, labels[batch.start:batch.stop],
                                           flags[batch.start:batch.stop]), n, (h, w), pick)
        p = np.stack(probs)  # (h*w, n, K) in decoding order
        sym = known.reshape(n, h * w).t().cpu().numpy().astype(np.int32)  # (h*w, n)
        chosen = np.take_along_axis(p, sym[:, :, None].astype(np.int64), 2)[:, :, 0]
        code_bits[batch.start:batch.stop] = -np.log2(chosen).sum(0)
        lab = labels[batch.start:batch.stop].numpy().astype(np.int32)
        fl = np.asarray(flags[batch.start:batch.stop], dtype=bool)
        if g == 1:
            for b in range(n):
                c = coder(batch.start + b)
                c.encode_reverse(np.ascontiguousarray(sym[:, b]), _CODE_MODEL,
                                 np.ascontiguousarray(p[:, b]))
                if fl[b]:
                    c.encode_reverse(lab[b:b + 1], constriction.stream.model.Uniform(nc))
        else:
            c = coder(batch.start)
            c.encode_reverse(sym.reshape(-1), _CODE_MODEL, p.reshape(-1, p.shape[2]))
            if fl.any():
                c.encode_reverse(lab[fl], constriction.stream.model.Uniform(nc))
    records = []
    for k, images in enumerate(header.streams()):
        words = coders[k].get_compressed().astype("<u4").tobytes()
        records.append(Record(images, flags[images.start:images.stop], words_to_payload(words)))
    data = write_vqz(header, records)
    header_bytes = len(data) - sum(r.size for r in records)
    return Compressed(data, header, records, code_bits, label_bits, header_bytes)


@torch.inference_mode()
def encode_images(vqvae: LitVQVAE, images: Tensor, batch_size: int = DEFAULT_BATCH_SIZE
                  ) -> Tensor:
    """images float (N, C, H, W) in [0, 1], as the VQ-VAE was trained -> codes int64
    (N, h, w) on the CPU."""
    hp = vqvae.hparams
    want = (int(hp.channels), *tuple(hp.image_size))
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise UserError(f"images must be (N, {want[0]}, {want[1]}, {want[2]}) for this VQ-VAE, "
                        f"got {tuple(images.shape)}")
    dev = next(vqvae.parameters()).device
    out = [vqvae.model.encode(images[s:s + batch_size].to(dev)).cpu()
           for s in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, *vqvae.code_shape, dtype=torch.long)


def compress(prior: LitPrior, vqvae: LitVQVAE, images: Tensor, labels: Tensor | None = None,
             **options) -> bytes:
    """images float (N, C, H, W) in [0, 1] (the VQ-VAE's channels and size), labels int64
    (N,) or None -> the bytes of a .vqz file. ``options``: those of :func:`compress_codes`
    (names, source, batch_size, stream, label_mode). Both models must have been loaded
    from checkpoint files (the file records their sha256)."""
    codes = encode_images(vqvae, images, options.get("batch_size", DEFAULT_BATCH_SIZE))
    return compress_codes(prior, vqvae, codes, labels, **options).data


# --------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    header: Header
    codes: Tensor          # int64 (N, h, w), CPU
    labels: Tensor         # int64 (N,), -1 where no label was coded
    records: list[Record]


def open_vqz(data: bytes, where: str = "the file") -> tuple[Header, list[Record]]:
    """Parse and verify a whole .vqz (magic, version, CRCs, length); no models needed."""
    header, start = read_header(data, where)
    _check_layout(header, where)
    return header, read_records(data, header, start, where)


@torch.inference_mode()
def decode_codes(data: bytes, prior: LitPrior, vqvae: LitVQVAE, where: str = "the file"
                 ) -> Decoded:
    """The code grids (and coded labels) of a .vqz, checked against the checkpoints."""
    header, records = open_vqz(data, where)
    check_checkpoints(header, prior, vqvae, where)
    check_compatible(prior, vqvae)
    model = prior.model.eval()
    if tuple(model.code_shape) != tuple(header.code_shape) or model.num_codes != header.num_codes:
        raise VqzError(f"{where} holds {header.code_shape} codes of K={header.num_codes}, "
                       "but the prior with its checkpoint hash does not: damaged header")
    if header.num_classes != model.num_classes:
        raise VqzError(f"{where} says its labels have {header.num_classes} classes, but the "
                       f"prior with its checkpoint hash has {model.num_classes}: damaged header")
    dev = model.embed.weight.device
    g, nc = header.images_per_stream, header.num_classes
    count, (h, w) = header.count, header.code_shape
    flags = [f for r in records for f in r.flags]
    coders = []
    for r in records:
        words = np.frombuffer(pad_words(r.payload), dtype="<u4").astype(np.uint32)
        try:
            coders.append(constriction.stream.stack.AnsCoder(words))
        except (ValueError, RuntimeError) as e:
            raise VqzError(f"{where}: the data of images {r.images[0]}.. is not a valid stream "
                           f"({e}); the file is damaged") from None
    codes = torch.empty(count, h, w, dtype=torch.long)
    labels = torch.full((count,), -1, dtype=torch.long)
    uniform = constriction.stream.model.Uniform(nc) if nc else None
    for batch in _batches(count, header.batch_size):
        n = len(batch)
        fl = flags[batch.start:batch.stop]
        try:
            if g == 1:
                mine = coders[batch.start:batch.stop]
                for b in range(n):
                    if fl[b]:
                        labels[batch.start + b] = int(mine[b].decode(uniform))
            else:
                mine = [coders[batch.start // g]]
                if any(fl):
                    got = mine[0].decode(uniform, sum(fl))
                    where_flagged = [batch.start + b for b in range(n) if fl[b]]
                    labels[where_flagged] = torch.from_numpy(got.astype(np.int64))
        except (ValueError, RuntimeError) as e:
            raise _mismatch(header, batch, where, e) from None
        idx = _label_index(prior, labels[batch.start:batch.stop], fl)

        def pick(i: int, j: int, logits: Tensor, mine=mine) -> Tensor:
            p = code_probabilities(logits)
            if g == 1:
                sym = np.concatenate([c.decode(_CODE_MODEL, p[b:b + 1])
                                      for b, c in enumerate(mine)])
            else:
                sym = mine[0].decode(_CODE_MODEL, p)
            return torch.from_numpy(sym.astype(np.int64)).to(dev)

        try:
            with one_thread():
                codes[batch.start:batch.stop] = scan_codes(model, idx, n, (h, w), pick).cpu()
        except (ValueError, RuntimeError) as e:
            raise _mismatch(header, batch, where, e) from None
    for r, c in zip(records, coders, strict=True):
        if not c.is_empty():
            raise _mismatch(header, r.images, where, None)
    return Decoded(header, codes, labels, records)


def _mismatch(header: Header, images: range, where: str, err: Exception | None) -> VqzError:
    extra = f" ({err})" if err else ""
    here = "cuda" if torch.cuda.is_available() else "this device"
    return VqzError(
        f"{where}: images {images[0]}..{images[-1]} ({header.names[images[0]]}..) do not "
        f"decode to the stream's end{extra}: the prior's probabilities differ from the "
        f"encoder's, which ran on {header.device_type}; decode on {header.device_type} with "
        f"the same checkpoints (not {here})")


@torch.inference_mode()
def decode_images(vqvae: LitVQVAE, codes: Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> Tensor:
    """codes int64 (N, h, w) -> images float (N, C, H, W) in [0, 1], on the CPU."""
    dev = next(vqvae.parameters()).device
    out = [vqvae.model.decode_codes(codes[s:s + batch_size].to(dev)).cpu()
           for s in range(0, codes.shape[0], batch_size)]
    if out:
        return torch.cat(out)
    hp = vqvae.hparams
    return torch.empty(0, int(hp.channels), *tuple(hp.image_size))


def decompress(data: bytes, prior: LitPrior, vqvae: LitVQVAE) -> Tensor:
    """The bytes of a .vqz file -> images float (N, C, H, W) in [0, 1]. The models must
    be the checkpoints the file was made with (sha256 checked), on the same device type."""
    dec = decode_codes(data, prior, vqvae)
    return decode_images(vqvae, dec.codes, dec.header.batch_size)


# --------------------------------------------------------------------------- data sets


@dataclass
class EncodedSet:
    codes: Tensor        # int64 (N, h, w)
    labels: Tensor       # int64 (N,), -1 = none
    sse: np.ndarray      # float64 (N,): squared error of the decoded image, summed
    ssim: np.ndarray | None  # float64 (N,), None when images are smaller than the window
    dims: int            # values per image (C * H * W)


@torch.inference_mode()
def encode_batches(vqvae: LitVQVAE, batches: Iterable[tuple[Tensor, Tensor]]) -> EncodedSet:
    """Encode (images, labels) batches to codes and measure each decoded image against
    its original (what decompress will produce): squared error and SSIM."""
    dev = next(vqvae.parameters()).device
    codes, labels, sse, ssims = [], [], [], []
    dims, with_ssim = 0, True
    for images, lab in batches:
        x = images.to(dev)
        c = vqvae.model.encode(x)
        y = vqvae.model.decode_codes(c)
        dims = x[0].numel()
        with_ssim = min(x.shape[-2:]) >= 11
        codes.append(c.cpu())
        labels.append(torch.as_tensor(lab).long().cpu())
        sse.append(((y.double() - x.double()) ** 2).flatten(1).sum(1).cpu().numpy())
        if with_ssim:
            ssims.append(M.ssim(x, y).cpu().numpy())
    if not codes:
        raise UserError("no images to compress")
    return EncodedSet(torch.cat(codes), torch.cat(labels), np.concatenate(sse),
                      np.concatenate(ssims) if with_ssim else None, dims)


def build_report(res: Compressed, enc: EncodedSet | None, pixels: int,
                 settings: dict) -> dict:
    """The ``--report`` JSON: per image and in total, bits, bits per pixel, ideal
    -log2 p, and (with ``enc``) PSNR / SSIM of the decoded image. Each image gets its
    ideal bits scaled by its stream's actual / ideal bits; the header is counted once in
    the total (``total_bits`` = 8 x file size = header_bits + sum of the images' bits)."""
    n = res.header.count
    bits = np.zeros(n)
    for r in res.records:
        ideal = res.ideal_bits[r.images.start:r.images.stop]
        share = ideal / ideal.sum() if ideal.sum() > 0 else np.full(len(ideal), 1 / len(ideal))
        bits[r.images.start:r.images.stop] = 8 * r.size * share
    total = 8 * len(res.data)
    ideal_total = float(res.ideal_bits.sum())
    per_image = []
    for i in range(n):
        row = {"name": res.header.names[i], "bits": float(bits[i]),
               "bits_per_pixel": float(bits[i] / pixels),
               "ideal_bits": float(res.ideal_bits[i]),
               "label_bits": float(res.label_bits[i])}
        if enc is not None:
            row["psnr_db"] = M.psnr_from_mse(enc.sse[i] / enc.dims)
            row["ssim"] = None if enc.ssim is None else float(enc.ssim[i])
        per_image.append(row)
    payload = sum(len(r.payload) for r in res.records) * 8
    out = {
        "images": n,
        "total_bits": total,
        "header_bits": 8 * res.header_bytes,
        "payload_bits": payload,
        "bits_per_image": total / max(n, 1),
        "bits_per_pixel": total / max(n, 1) / pixels,
        "ideal_bits": ideal_total,
        "ideal_bits_per_image": ideal_total / max(n, 1),
        "label_bits": float(res.label_bits.sum()),
        "overhead": total / ideal_total if ideal_total else None,
        "coder_overhead": payload / ideal_total if ideal_total else None,
        "streams": len(res.records),
    }
    if enc is not None:
        out["psnr_db"] = M.psnr_from_mse(float(enc.sse.sum()) / (enc.dims * max(n, 1)))
        out["ssim"] = None if enc.ssim is None else float(enc.ssim.mean())
    out["settings"] = settings
    out["per_image"] = per_image
    return out


def pixels_per_image(vqvae: LitVQVAE) -> int:
    h, w = tuple(vqvae.hparams.image_size)
    return int(h) * int(w)


def relative_names(paths: Sequence[Path], root: Path | None) -> list[str]:
    """Names for image files: the path under ``root`` (or the file name), POSIX style."""
    if root is None:
        return [Path(p).name for p in paths]
    return [Path(os.path.relpath(p, root)).as_posix() for p in paths]


# a name component longer than this cannot be a file on common file systems (ext4, APFS,
# NTFS: 255 bytes / characters)
MAX_NAME_BYTES = 255


def output_names(names: Sequence[str], where: str = "decompress") -> list[str]:
    """PNG file names for decoded images: each name with its suffix made ``.png``; when
    that makes two names equal (a.jpg, a.png), every name keeps its suffix plus ``.png``.

    Refuses (VqzError, naming the image) what could not be written as one file each: names
    that would leave the output folder, a NUL, a part too long for a file system, repeated
    names (20 images into one PNG), and a name that is another's folder (7/b.png beside
    7/b.png/c.png). ``where``: "compress" checks before coding, "decompress" before writing.
    """
    def refuse(n: str, why: str) -> VqzError:
        if where == "compress":
            return VqzError(f"image {n!r} {why}; `vqgen decompress` could not write it back: "
                            "rename it")
        return VqzError(f"image name {n!r} in the file {why}; it was not written by "
                        "`vqgen compress`")

    for n in names:
        parts = Path(n).parts
        if Path(n).is_absolute() or ".." in parts or not parts:
            raise refuse(n, "would be written outside the output folder")
        if "\0" in n:
            raise refuse(n, "holds a NUL character")
    out = [Path(n).with_suffix(".png").as_posix() if Path(n).suffix else f"{n}.png"
           for n in names]
    if len(set(out)) < len(out):
        out = [f"{n}.png" for n in names]
    seen: dict[str, str] = {}
    for n, o in zip(names, out, strict=True):
        if o in seen:
            raise refuse(n, f"is repeated (or decodes to the same file {o!r} as {seen[o]!r})")
        seen[o] = n
    for n, o in zip(names, out, strict=True):
        long = [p for p in o.split("/") if len(p.encode("utf-8")) > MAX_NAME_BYTES]
        if long:
            raise refuse(n, f"has a part of {len(long[0].encode())} bytes as {o!r} (file "
                         f"systems allow {MAX_NAME_BYTES})")
        parts = o.split("/")
        for k in range(1, len(parts)):
            folder = "/".join(parts[:k])
            if folder in seen:
                raise refuse(n, f"needs a folder {folder!r} where image {seen[folder]!r} is "
                             "written as a file")
    return out
