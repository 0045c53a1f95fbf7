"""One object for Python users: a prior and its VQ-VAE, and what the verbs do with them.

    >>> from vqgen import Pipeline
    >>> pipe = Pipeline.from_pretrained("mnist")            # shipped; or a folder / prior.ckpt
    >>> out = pipe.sample(16, classes=3, seed=0)            # .images (16, 1, 28, 28) in [0, 1]
    >>> out.save("samples/"); out.pil()[0]

Defaults are the CLI's (:mod:`vqgen.pipeline.defaults`, one source; ``vqgen sample`` and
``vqgen repair`` / ``inpaint`` call these methods). Errors raised from here name the Python
parameters (``num=0``), not the CLI's flags.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqgen.pipeline import defaults as D
from vqgen.stage1_vqvae.runtime.errors import UserError

ImageInput = Any  # Tensor (C, H, W) / (N, C, H, W) in [0, 1], PIL image, path, or a list of them

# a CLI flag in a library message and the Python parameter it means
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?: (-?[0-9][\w.+-]*|'[^']*'|\S+\.\w+))?")
_PARAM = {"class": "classes", "per-class": "classes", "candidates": "num_candidates",
          "prior": "prior", "vqvae": "vqvae"}


def python_message(text: str) -> str:
    """A library message with its CLI flags written as Python parameters (``--num 0`` ->
    ``num=0``, ``--top-k`` -> ``top_k``)."""
    def one(m: re.Match) -> str:
        name = _PARAM.get(m.group(1), m.group(1).replace("-", "_"))
        return f"{name}={m.group(2)}" if m.group(2) else name
    return _FLAG.sub(one, text)


def _python_errors(method):
    """Re-raise a UserError from the library with Python parameter names (same type)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except UserError as e:
            if getattr(args[0], "cli_errors", False):  # a CLI verb: its flags are the names
                raise
            err = type(e).__new__(type(e))
            err.args = (python_message(str(e)),)
            raise err.with_traceback(e.__traceback__) from None
    return wrapper


def _to_pil(images: Tensor) -> list:
    from PIL import Image

    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


@dataclass
class Images:
    """Images and, when they came from codes, those codes: ``images`` float (N, C, H, W) in
    [0, 1]; ``codes`` int64 (N, h, w) or None; ``labels`` int64 (N,) or None."""
    images: Tensor
    codes: Tensor | None = None
    labels: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pil(self) -> list:
        """The images as PIL images (mode L or RGB)."""
        return _to_pil(self.images)

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``NNNNNN.png`` per image into ``folder`` (created); returns the paths."""
        from vqgen.stage1_vqvae.runtime.grid import save_png

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{i:06d}.png" for i in range(len(self))]
        for img, p in zip(self.images, paths, strict=True):
            save_png(img, p)
        return paths


@dataclass
class Completions:
    """:meth:`Pipeline.inpaint` / :meth:`Pipeline.repair` results for N inputs, ``num`` each:
    ``images`` float (N, num, C, H, W) in [0, 1]; ``codes`` int64 (N, num, h, w); ``bits``
    float (N, num): the prior's bits of each completed grid; ``result``: the full
    :class:`~vqgen.pipeline.edit.inpaint.Inpainting` (weights, ESS, class posteriors)."""
    images: Tensor
    codes: Tensor
    bits: Tensor
    result: Any
    surprisal: Tensor | None = None  # repair: float64 (N, h, w), the bits that chose what to redraw

    def pil(self) -> list[list]:
        """``[input][k]`` PIL images."""
        return [_to_pil(row) for row in self.images]

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``NNNNNN_K.png`` (input N, completion K) into ``folder``; returns the paths."""
        from vqgen.stage1_vqvae.runtime.grid import save_png

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, row in enumerate(self.images):
            for k, img in enumerate(row):
                paths.append(folder / f"{i:06d}_{k}.png")
                save_png(img, paths[-1])
        return paths


class Pipeline:
    """A class-conditional (or unconditional) prior and the VQ-VAE whose codes it models.

    Build it with :meth:`from_pretrained` (a shipped name, a pretrained folder, a prior
    checkpoint) or from loaded modules. Every method takes images as tensors (C, H, W) /
    (N, C, H, W) in [0, 1], PIL images or file paths (converted to the VQ-VAE's channels and
    size as the CLI converts ``--image`` files), and classes as an index, a name, or one per
    image.
    """

    def __init__(self, prior, vqvae, device: str | torch.device = "cpu") -> None:
        from vqgen.pipeline.generate import check_compatible

        check_compatible(prior, vqvae)
        self.prior, self.vqvae = prior, vqvae
        self.device = str(device)
        self.cli_errors = False  # the CLI verbs set it: then errors keep naming their flags
        self.to(device)

    # ------------------------------------------------------------------ loading, saving

    @classmethod
    @_python_errors
    def from_pretrained(cls, name_or_path: str | os.PathLike = "mnist", *,
                        vqvae: str | os.PathLike | None = None,
                        device: str | torch.device = "auto") -> Pipeline:
        """A shipped name (``"mnist"``, ``"cifar10"``), a pretrained folder (a pair, or a prior
        whose VQ-VAE it records), ``hf://owner/name``, or a prior checkpoint; ``vqvae``
        overrides the recorded VQ-VAE (its sha256 must still match). ``device``: "auto"
        (CUDA, then MPS, then CPU), or any torch device."""
        from vqgen.pipeline.generate import load_pair
        from vqgen.stage1_vqvae.runtime.devices import resolve_device

        dev = resolve_device(str(device))
        prior, vq = load_pair(name_or_path, vqvae, dev)
        return cls(prior, vq, dev)

    def save_pretrained(self, folder: str | os.PathLike, *, name: str | None = None,
                        description: str = "", metrics: dict | None = None,
                        overwrite: bool = False) -> Path:
        """Write the pair as one folder: ``vqvae/`` and ``prior/`` (each config.json +
        model.safetensors), a ``config.json`` naming them and a ``README.md`` model card
        (``metrics``: numbers from ``vqgen evaluate`` to quote). Returns the folder."""
        from vqgen.pipeline.export import save_pair

        return save_pair(self.prior, self.vqvae, folder, name=name, description=description,
                         metrics=metrics, overwrite=overwrite)

    def to(self, device: str | torch.device) -> Pipeline:
        """Move both models to ``device`` (in place); returns self."""
        self.device = str(device)
        self.prior.to(device).eval()
        self.vqvae.to(device).eval()
        return self

    # ------------------------------------------------------------------ facts

    @property
    def class_names(self) -> list[str]:
        """The prior's class names ([] for an unconditional prior)."""
        k = int(self.prior.model.num_classes)
        names = [str(n) for n in self.prior.hparams.get("class_names") or ()]
        return names if len(names) == k else [str(i) for i in range(k)]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the VQ-VAE takes and makes."""
        hp = self.vqvae.hparams
        return (int(hp.channels), *(int(s) for s in hp.image_size))

    @property
    def code_shape(self) -> tuple[int, int]:
        return tuple(self.prior.code_shape)

    @property
    def card(self) -> dict:
        """The model card facts: name and training data (pretrained folders), else paths."""
        from vqgen.pipeline.export import card_facts

        return card_facts(self.prior, self.vqvae)

    # ------------------------------------------------------------------ inputs

    def images(self, images: ImageInput) -> Tensor:
        """Inputs as float (N, C, H, W) in [0, 1] on the CPU, in the VQ-VAE's format."""
        from vqgen.stage1_vqvae.data.images import load_image

        c, h, w = self.image_shape
        if isinstance(images, Tensor):
            x = images.unsqueeze(0) if images.dim() == 3 else images
            if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
                raise UserError(f"images of shape {tuple(images.shape)}: expected (N, {c}, {h}, {w}) "
                                f"or ({c}, {h}, {w}) floats in [0, 1] (this VQ-VAE's format)")
            if not x.is_floating_point():
                raise UserError(f"images are {x.dtype}: expected floats in [0, 1] (divide uint8 by 255)")
            return x.detach().float().cpu()
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise UserError("images is empty: pass at least one image")
        out = []
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                out.append(load_image(item, c, (h, w)))
            elif isinstance(item, Tensor):
                out.append(self.images(item)[0] if item.dim() == 3 else self.images(item))
            elif hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
                from vqgen.stage1_vqvae.data.images import convert_image

                out.append(torch.from_numpy(convert_image(item, c, (h, w))).permute(2, 0, 1)
                           .float().div_(255.0))
            else:
                raise UserError(f"cannot read an image from {type(item).__name__}: pass tensors, "
                                "PIL images or file paths")
        return torch.stack([o if o.dim() == 3 else o[0] for o in out])

    def labels(self, classes: int | str | Sequence[int | str] | Tensor | None, num: int
               ) -> Tensor | None:
        """``classes`` as int64 (num,): one index or name for all, or one per item; None
        stays None (no class)."""
        from vqgen.pipeline.generate import resolve_class

        if classes is None:
            return None
        if not self.class_names:
            raise UserError("classes: this prior is unconditional (trained without classes); "
                            "pass classes=None")
        if isinstance(classes, Tensor):
            classes = classes.tolist()
        if isinstance(classes, (int, str)):
            classes = [classes] * num
        if len(classes) != num:
            raise UserError(f"classes has {len(classes)} entries for {num} images: give one "
                            "class, or one per image")
        k = len(self.class_names)
        out = []
        for c in classes:
            if isinstance(c, str):
                out.append(resolve_class(self.prior, c))
            elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < k:
                out.append(c)
            else:
                raise UserError(f"classes holds {c!r}: expected a class index in [0, {k}) or a name "
                                f"({', '.join(self.class_names[:10])})")
        return torch.tensor(out, dtype=torch.int64)

    # ------------------------------------------------------------------ what the verbs do

    @_python_errors
    def sample(self, num: int = D.SAMPLE_NUM, *, classes=None, seed: int = 0,
               guidance: float | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None,
               batch_size: int = D.SAMPLE_BATCH_SIZE, unconditional: str = "mixture",
               sampler: str = "cached") -> Images:
        """``vqgen sample``: ``num`` images; ``classes`` an index / name for all or one per
        image. ``guidance`` / ``temperature`` default to the measured
        :func:`~vqgen.pipeline.defaults.sampling_defaults` (2 / 0.9 with a class, 1 / 1
        without). Same seed -> same images whatever ``batch_size``."""
        from vqgen.pipeline.generate import check_memory, sample

        if not isinstance(num, int) or num <= 0:
            raise UserError(f"num={num!r} must be a positive integer")
        check_memory(num, self.vqvae, f"num={num}")
        labels = self.labels(classes, num)
        g, t = D.sampling_defaults(labels is not None)
        res = sample(self.prior, self.vqvae, num, labels=labels,
                     temperature=t if temperature is None else temperature, top_k=top_k,
                     top_p=top_p, guidance=g if guidance is None else guidance, seed=seed,
                     batch_size=batch_size, device=self.device, sampler=sampler,
                     unconditional=unconditional)
        return Images(res.images, res.codes, res.labels)

    @_python_errors
    def encode(self, images: ImageInput) -> Tensor:
        """Images -> int64 codes (N, h, w) in [0, K)."""
        x = self.images(images)
        model = self.vqvae.model
        with torch.inference_mode():
            return torch.cat([model.encode(x[s : s + 256].to(self.device)).cpu()
                              for s in range(0, x.shape[0], 256)])

    @_python_errors
    def decode(self, codes: Tensor) -> Images:
        """int codes (N, h, w) or (h, w) in [0, K) -> :class:`Images`."""
        codes = torch.as_tensor(codes)
        codes = codes.unsqueeze(0) if codes.dim() == 2 else codes
        k, shape = int(self.prior.num_codes), self.code_shape
        if codes.dim() != 3 or tuple(codes.shape[1:]) != shape or codes.is_floating_point():
            raise UserError(f"codes of shape {tuple(codes.shape)} ({codes.dtype}): expected integers "
                            f"(N, {shape[0]}, {shape[1]})")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise UserError(f"codes hold values in [{int(codes.min())}, {int(codes.max())}]: "
                            f"expected [0, {k})")
        with torch.inference_mode():
            images = torch.cat([self.vqvae.model.decode_codes(codes[s : s + 256].long().to(self.device))
                                .float().cpu() for s in range(0, codes.shape[0], 256)])
        return Images(images, codes.long().cpu())

    def _complete(self, x: Tensor, code_mask: Tensor, pixel_mask: Tensor | None, classes,
                  num: int, num_candidates: int | None, seed: int, **options) -> Completions:
        from vqgen.pipeline.edit.inpaint import inpaint

        if not isinstance(num, int) or num <= 0:
            raise UserError(f"num={num!r} must be a positive integer")
        if num_candidates is not None and num_candidates < num:
            raise UserError(f"num_candidates={num_candidates} must be >= num={num}")
        res = inpaint(self.prior, self.vqvae, x, code_mask, num=num, num_candidates=num_candidates,
                      labels=self.labels(classes, x.shape[0]), seed=seed, pixel_mask=pixel_mask,
                      device=self.device, **options)
        bits = -res.log_prob / torch.log(torch.tensor(2.0, dtype=res.log_prob.dtype))
        return Completions(res.images, res.codes, bits, res)

    @_python_errors
    def inpaint(self, images: ImageInput, mask, *, num: int = D.INPAINT_NUM, classes=None,
                seed: int = 0, num_candidates: int | None = None, grow: int = D.INPAINT_GROW,
                feather: int = D.INPAINT_FEATHER, **options) -> Completions:
        """``vqgen inpaint``: redraw the masked part of each image, ``num`` completions each.
        ``mask``: bool pixels (H, W) / (N, H, W), True (or white in a mask image file / PIL
        image) = regenerate; ``options``: those of :func:`~vqgen.pipeline.edit.inpaint.inpaint`
        (select, temperature, guidance, paste, batch_size, class_mixture, ...)."""
        from vqgen.pipeline.edit.masks import load_mask, pixel_to_code_mask

        x = self.images(images)
        size = self.image_shape[1:]
        if isinstance(mask, (str, os.PathLike)):
            pixels = load_mask(mask, size)
        elif hasattr(mask, "convert") and hasattr(mask, "size"):
            import numpy as np

            pixels = torch.from_numpy(np.asarray(mask.convert("L").resize(size[::-1], 0)) > 127)
        else:
            pixels = torch.as_tensor(mask).bool()
        if tuple(pixels.shape[-2:]) != size:
            raise UserError(f"mask of shape {tuple(pixels.shape)}: expected pixels ({size[0]}, {size[1]}) "
                            "or (N, H, W), True = regenerate")
        code_mask = pixel_to_code_mask(pixels, self.code_shape, grow)
        if not bool(code_mask.any()):
            raise UserError("mask masks nothing: mark the region to regenerate with True / white")
        return self._complete(x, code_mask, pixels, classes, num, num_candidates, seed,
                              feather=feather, **options)

    @_python_errors
    def surprisal(self, images: ImageInput, *, classes=None, class_mixture: bool = True) -> Tensor:
        """Bits each code of each image costs under the prior: float64 (N, h, w)."""
        from vqgen.pipeline.edit.inpaint import surprisal

        codes = self.encode(images)
        return surprisal(self.prior, codes, self.labels(classes, codes.shape[0]), device=self.device,
                         class_mixture=class_mixture)

    @_python_errors
    def repair(self, images: ImageInput, *, threshold: float | None = None,
               fraction: float | None = None, num: int = D.REPAIR_NUM, classes=None,
               seed: int = 0, num_candidates: int | None = None, feather: int = D.INPAINT_FEATHER,
               class_mixture: bool = True, **options) -> Completions:
        """``vqgen repair``: redraw the codes the prior finds least likely (above ``threshold``
        bits, default :data:`~vqgen.pipeline.defaults.REPAIR_THRESHOLD`, or the top
        ``fraction`` of each image). Returns :class:`Completions` with ``.surprisal``: float64
        (N, h, w), the bits of each input code that chose what was redrawn."""
        from vqgen.pipeline.edit.inpaint import check_repair_args, repair_mask
        from vqgen.pipeline.edit.masks import code_to_pixel_mask

        if threshold is None and fraction is None:
            threshold = D.REPAIR_THRESHOLD
        check_repair_args(threshold, fraction)
        x = self.images(images)
        bits = self.surprisal(x, classes=classes, class_mixture=class_mixture)
        code_mask = repair_mask(bits, threshold=threshold, fraction=fraction)
        pixels = code_to_pixel_mask(code_mask, tuple(x.shape[-2:]))
        out = self._complete(x, code_mask, pixels, classes, num, num_candidates, seed,
                             feather=feather, class_mixture=class_mixture, **options)
        out.surprisal = bits
        return out

    @_python_errors
    def compress(self, images: ImageInput, classes=None, **options) -> bytes:
        """``vqgen compress``: images -> the bytes of a .vqz file (``classes``: coded with each
        image, or None; ``options``: those of :func:`~vqgen.pipeline.codec.coder.compress_codes`)."""
        from vqgen.pipeline.codec.coder import compress

        x = self.images(images)
        return compress(self.prior, self.vqvae, x, self.labels(classes, x.shape[0]), **options)

    @_python_errors
    def decompress(self, data: bytes | str | os.PathLike) -> Images:
        """``vqgen decompress``: .vqz bytes (or a .vqz path) -> :class:`Images` (with the codes
        and the labels the file holds)."""
        from vqgen.pipeline.codec.coder import decode_codes, decode_images

        if isinstance(data, (str, os.PathLike)):
            data = Path(data).read_bytes()
        dec = decode_codes(bytes(data), self.prior, self.vqvae)
        return Images(decode_images(self.vqvae, dec.codes), dec.codes, dec.labels)

    def __repr__(self) -> str:
        facts = self.card
        return (f"Pipeline({facts.get('name')!r}: {facts.get('data')}, images {self.image_shape}, "
                f"codes {self.code_shape}, {len(self.class_names)} classes, device {self.device})")
