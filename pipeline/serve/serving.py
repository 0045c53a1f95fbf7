"""What ``vqgen serve`` does behind its page, without any UI library: sample, complete /
repair, compress / decompress and the model card, each writing its result into a fresh
folder under the server's temp folder.

Every action calls the library functions the CLI verbs call, with the CLI's defaults
(``generate.sample`` + ``write_samples``, ``inpaint.inpaint`` + ``write_inpainting``,
``codec.compress_codes`` / ``decode_codes``), and reads inputs the way the CLI reads
``--image`` / ``--mask`` files (``load_image``, ``load_mask``), so a result shown in the
page is byte for byte the file the CLI writes for the same inputs and seed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vqgen.pipeline.defaults import SAMPLE_BATCH_SIZE as SAMPLE_BATCH  # same batches, same bytes
from vqgen.stage1_vqvae.runtime.errors import MissingInputError, UserError

NO_CLASS = "(no class)"
INPAINT_BATCH = 512    # `vqgen inpaint --batch-size` default
VIEW_SCALE = 8         # display images are this many screen pixels per model pixel


def one_line(text: str, limit: int = 300) -> str:
    """A message as one line (newlines folded), at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# an absolute path with at least one folder: /srv/runs/mnist/last.ckpt -> last.ckpt
_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s'\"():,;/]+/)+([^\s'\"():,;/]*)")


def page_message(text: str, limit: int = 300) -> str:
    """An error as the page shows it: one line, and only the last part of any absolute path
    (a visitor has no business with the server's folders)."""
    return one_line(_ABS_PATH.sub(r"\1", str(text)), limit)


@dataclass
class Result:
    """One action's output: its folder and what the page shows."""
    folder: Path
    images: list[Path] = field(default_factory=list)   # shown in a gallery, in order
    extra: dict[str, Path] = field(default_factory=dict)  # other images / downloads by name
    status: str = ""                                   # one line: counts and timing
    table: list[list] | None = None                    # rows for a results table


class Server:
    """The loaded checkpoints and the temp folder every upload and result lives in.

    ``work`` is created by the caller and removed by it at exit. Actions are independent:
    each writes into its own ``work/results/NNN-*`` folder, so concurrent requests never
    share a file.
    """

    def __init__(self, prior_path: str | os.PathLike, vqvae_path: str | os.PathLike | None,
                 work: str | os.PathLike, *, device: str = "cpu", max_upload_mb: float = 10.0,
                 data: str | None = None, data_root: str = "data",
                 others: dict[str, str] | None = None) -> None:
        """``others``: more models the page's picker offers (name -> shipped name or
        folder), loaded when first picked; ``prior_path`` is the one shown first."""
        self.device = device
        self.work = Path(work)
        self.results = self.work / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.max_upload_mb = float(max_upload_mb)
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.data_root = data_root
        self._given_data = data
        self._loaded: dict[str, tuple] = {}
        self.first = self._load_pair(str(prior_path), vqvae_path)
        self.models = {self.first: (str(prior_path), vqvae_path), **{
            n: (str(p), None) for n, p in (others or {}).items() if n != self.first}}
        self.use(self.first)

    def _load_pair(self, prior_path: str, vqvae_path) -> str:
        from vqgen.pipeline.api import Pipeline

        pipe = Pipeline.from_pretrained(prior_path, vqvae=vqvae_path, device=self.device)
        name = str(pipe.card["name"])
        self._loaded[name] = (pipe, prior_path, str(getattr(pipe.vqvae, "checkpoint_path", "")))
        return name

    def model_choices(self) -> list[str]:
        """The picker's names (the first model first)."""
        return list(self.models)

    def use(self, name: str | None) -> None:
        """Make ``name`` (a :meth:`model_choices` entry; None: the first) the model every
        action uses until the next call (the page calls it at the start of each request;
        requests run one at a time)."""
        name = name or self.first
        if name not in self.models:
            raise UserError(f"no model {name!r} here; pick one of {', '.join(self.models)}")
        if name not in self._loaded:
            prior, vq = self.models[name]
            self._load_pair(prior, vq)
        if getattr(self, "name", None) == name:
            return
        self.pipe, self.prior_path, self.vqvae_path = self._loaded[name]
        self.name = name
        self.prior, self.vqvae = self.pipe.prior, self.pipe.vqvae
        self.data = self._given_data if name == self.first else None
        self._dataset = None
        hp = self.vqvae.hparams
        self.channels, self.image_size = int(hp.channels), tuple(int(s) for s in hp.image_size)
        self.code_shape = tuple(self.prior.code_shape)

    def title(self) -> str:
        """The page's header line: the model card's name and training data."""
        facts = self.pipe.card
        return f"{facts['name']} · trained on {facts['data']}"

    # ------------------------------------------------------------------ helpers

    @property
    def class_names(self) -> list[str]:
        k = self.prior.model.num_classes
        names = [str(n) for n in self.prior.hparams.class_names]
        return names if len(names) == k else [str(i) for i in range(k)]

    def class_choices(self) -> list[str]:
        """What the class pickers offer: the classes, then "(no class)" (the null class)."""
        return [*self.class_names, NO_CLASS]

    def _class_index(self, choice: str | None) -> int | None:
        if choice in (None, "", NO_CLASS):
            return None
        from vqgen.pipeline.generate import resolve_class

        return resolve_class(self.prior, str(choice))

    def new_folder(self, what: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{what}-", dir=self.results))

    def check_upload(self, path: str | os.PathLike, what: str = "upload") -> Path:
        """An uploaded file: it must exist, lie inside the temp folder and be small enough."""
        p = Path(path)
        if not p.is_file():
            raise MissingInputError(f"the {what} {p.name} is gone; upload it again")
        if self.work.resolve() not in p.resolve().parents:
            raise UserError(f"the {what} {p.name} is not an upload of this server")
        size = p.stat().st_size
        if size > self.max_upload_bytes:
            raise UserError(f"{p.name} is {size / 2**20:.3g} MB, over the "
                            f"{self.max_upload_mb:g} MB upload limit "
                            "(--max-upload-mb); upload a smaller file")
        return p

    def load_image(self, path: str | os.PathLike) -> torch.Tensor:
        """An image file -> float (C, H, W) in [0, 1], converted as ``--image`` is."""
        from vqgen.stage1_vqvae.data import load_image

        p = self.check_upload(path, "image")
        try:
            return load_image(p, self.channels, self.image_size)
        except UserError as e:
            why = one_line(str(e).replace(str(p), p.name), 120)  # no server paths in the page
            raise UserError(f"{p.name} is not an image this server can read ({why}); "
                            "upload a PNG, JPEG or WebP") from None

    def _view(self, images: torch.Tensor, path: Path) -> Path:
        """images float (C, H, W) in [0, 1] -> a PNG scaled up VIEW_SCALE x (nearest)."""
        from vqgen.stage1_vqvae.runtime.grid import to_uint8

        arr = to_uint8(images)
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        w, h = img.size
        img.resize((w * VIEW_SCALE, h * VIEW_SCALE), Image.Resampling.NEAREST).save(path)
        return path

    def _code_grid_overlay(self, image: torch.Tensor, code_mask: torch.Tensor, path: Path
                           ) -> Path:
        """The image with the masked code cells tinted red and the code grid drawn."""
        from vqgen.pipeline.edit.inpaint import masked_view
        from vqgen.pipeline.edit.masks import code_to_pixel_mask

        tinted = masked_view(image[None], code_to_pixel_mask(code_mask[None], self.image_size))
        self._view(tinted[0], path)
        img = Image.open(path).convert("RGB")
        draw = ImageDraw.Draw(img)
        (h, w), (big_h, big_w) = self.code_shape, img.size[::-1]
        for i in range(1, h):
            y = i * big_h // h
            draw.line([(0, y), (big_w, y)], fill=(80, 160, 255))
        for j in range(1, w):
            x = j * big_w // w
            draw.line([(x, 0), (x, big_h)], fill=(80, 160, 255))
        img.save(path)
        return path

    @staticmethod
    def _zip(folder: Path, names: list[str], zip_path: Path) -> Path:
        import zipfile

        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
            for n in names:
                z.write(folder / n, n)
        return zip_path

    # ------------------------------------------------------------------ sample

    def sample_defaults(self, class_choice: str | None) -> tuple[float, float]:
        """(guidance, temperature) `vqgen sample` uses for this class choice."""
        from vqgen.pipeline.defaults import sampling_defaults

        return sampling_defaults(self._class_index(class_choice) is not None)

    def sample(self, class_choice: str | None, num: int, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None,
               guidance: float | None = None, seed: int = 0) -> Result:
        """``vqgen sample --num N [--class C] ... --seed S``: its files, in a new folder
        (guidance / temperature None: the CLI's defaults for the class choice)."""
        from vqgen.pipeline.generate import grid_columns, make_labels, write_samples

        num = int(num)
        if not 1 <= num <= 256:
            raise UserError(f"number {num} must be between 1 and 256")
        class_index = self._class_index(class_choice)
        labels = make_labels(self.prior, num, class_index, None)
        g, t = self.sample_defaults(class_choice)
        guidance = g if guidance is None else guidance
        temperature = t if temperature is None else temperature
        t0 = time.perf_counter()
        res = self.pipe.sample(num, classes=labels, temperature=temperature, top_k=top_k,
                               top_p=top_p, guidance=guidance, seed=int(seed),
                               batch_size=SAMPLE_BATCH)
        seconds = time.perf_counter() - t0
        folder = self.new_folder("sample")
        out = folder / "samples"
        settings = dict(prior=self.prior_path, vqvae=self.vqvae_path, class_index=class_index,
                        per_class=None, temperature=temperature, top_k=top_k, top_p=top_p,
                        guidance=guidance, seed=int(seed), batch_size=SAMPLE_BATCH,
                        sampler="cached")
        write_samples(out, res, class_names=self.class_names, nrow=grid_columns(num),
                      settings=settings)
        pngs = [f"{i:06d}.png" for i in range(num)]
        extra = {"zip": self._zip(out, [*pngs, "codes.npy", "samples.json"],
                                  folder / "samples.zip")}
        what = "no class" if class_index is None else f"class {self.class_names[class_index]}"
        return Result(folder, [out / p for p in pngs], extra,
                      f"{num} images ({what}, seed {int(seed)}) sampled and decoded in "
                      f"{seconds:.2f} s")

    # ------------------------------------------------------------------ complete / repair

    def _data(self):
        if self._dataset is None:
            from vqgen.stage1_vqvae.lit import trained_dataset

            self._dataset = trained_dataset(self.vqvae, "val", data=self.data, data_root=self.data_root)
            if len(self._dataset) == 0:
                raise UserError("the checkpoint's validation split is empty; upload an image")
        return self._dataset

    def random_image(self, seed: int | None = None) -> tuple[Path, str]:
        """A random held-out image, scaled up for painting -> (PNG path, caption)."""
        ds = self._data()
        i = int(np.random.default_rng(seed).integers(len(ds)))
        x, y = ds[i]
        folder = self.new_folder("pick")
        caption = f"validation item {i}" + (f" (class {self.class_names[int(y)]})"
                                            if self.prior.model.num_classes and int(y) >= 0
                                            and int(y) < len(self.class_names) else "")
        return self._view(x, folder / f"val_{i:06d}.png"), caption

    def complete(self, image_path: str | os.PathLike, mask: np.ndarray | None, *,
                 num: int = 8, class_choice: str | None = None, temperature: float = 1.0,
                 seed: int = 0, repair_fraction: float | None = None) -> Result:
        """Inpaint the painted region of an image (``mask`` bool (H', W') at the image
        file's size, True = regenerate), or with ``repair_fraction`` repair that share of
        the most surprising codes. Writes ``input.png`` and ``mask.png`` first, so
        ``vqgen inpaint --image input.png --mask mask.png`` reproduces the result."""
        from vqgen.pipeline.edit.inpaint import (
            check_repair_args,
            heat_map,
            inpaint,
            repair_mask,
            surprisal,
            write_inpainting,
        )
        from vqgen.pipeline.edit.masks import code_to_pixel_mask, load_mask, pixel_to_code_mask
        from vqgen.pipeline.generate import make_labels

        num = int(num)
        if not 1 <= num <= 64:
            raise UserError(f"completions {num} must be between 1 and 64")
        folder = self.new_folder("complete")
        src = self.check_upload(image_path, "image")
        # the exact bytes the CLI would be given
        shutil.copyfile(src, folder / "input.png")
        image = self.load_image(folder / "input.png")
        class_index = self._class_index(class_choice)
        cond = make_labels(self.prior, 1, class_index, None)
        enc = self.vqvae.model.to(self.device).eval()
        with torch.inference_mode():
            codes = enc.encode(image[None].to(self.device)).cpu()
        bits = surprisal(self.prior, codes, cond, device=self.device, class_mixture=True)
        if repair_fraction is not None:
            check_repair_args(None, float(repair_fraction))
            code_mask = repair_mask(bits, fraction=float(repair_fraction))[0]
            pixel_mask = code_to_pixel_mask(code_mask, self.image_size)
            Image.fromarray(pixel_mask.numpy().astype(np.uint8) * 255).save(folder / "mask.png")
        else:
            if mask is None or not np.asarray(mask).any():
                raise UserError("nothing painted: paint over the part to regenerate with the "
                                "brush, or press repair")
            Image.fromarray(np.asarray(mask).astype(np.uint8) * 255).save(folder / "mask.png")
            pixel_mask = load_mask(folder / "mask.png", self.image_size)
            code_mask = pixel_to_code_mask(pixel_mask, self.code_shape)
        t0 = time.perf_counter()
        res = inpaint(self.prior, self.vqvae, image[None], code_mask, num=num, labels=cond,
                      temperature=temperature, seed=int(seed), pixel_mask=pixel_mask,
                      batch_size=INPAINT_BATCH, device=self.device)
        seconds = time.perf_counter() - t0
        out = folder / "result"
        settings = dict(verb="repair" if repair_fraction is not None else "inpaint",
                        prior=self.prior_path, vqvae=self.vqvae_path, class_index=class_index,
                        temperature=temperature, seed=int(seed), num=num,
                        fraction=repair_fraction)
        write_inpainting(out, res, image[None], pixel_mask, settings=settings,
                         inputs=[{"source": "input.png"}], bits=bits)
        extra = {
            "heat": self._view(heat_map(bits, self.image_size)[0], folder / "surprisal.png"),
            "overlay": self._code_grid_overlay(image, code_mask, folder / "mask_codes.png"),
            "zip": self._zip(out, [f"000000_{k}.png" for k in range(num)]
                             + ["codes.npy", "inpaint.json"], folder / "completions.zip"),
        }
        n_codes = int(code_mask.sum())
        return Result(folder, [out / f"000000_{k}.png" for k in range(num)], extra,
                      f"{num} completions (seed {int(seed)}) of {n_codes} of {code_mask.numel()} codes in "
                      f"{seconds:.2f} s (input {float(bits.sum()):.0f} bits under the prior)")

    # ------------------------------------------------------------------ codec

    def compress(self, paths: list[str | os.PathLike]) -> Result:
        """Images -> one .vqz (as ``vqgen compress FILES``) and, per image, bits for ours
        vs PNG and JPEG / WebP at our PSNR."""
        from vqgen.pipeline.codec.baselines import lossy_at_psnr, png_baseline
        from vqgen.pipeline.codec.coder import build_report, compress_codes, encode_batches, pixels_per_image
        from vqgen.stage1_vqvae.runtime.grid import to_uint8

        if not paths:
            raise UserError("no images uploaded; drop one or more PNG / JPEG files")
        images = torch.stack([self.load_image(p) for p in paths])
        names = [Path(p).name for p in paths]
        labels = torch.full((len(names),), -1, dtype=torch.long)
        enc = encode_batches(self.vqvae, [(images, labels)])
        t0 = time.perf_counter()
        res = compress_codes(self.prior, self.vqvae, enc.codes, enc.labels, names=names,
                             source=f"{len(names)} uploads")
        seconds = time.perf_counter() - t0
        rep = build_report(res, enc, pixels_per_image(self.vqvae), {"source": "upload"})
        folder = self.new_folder("compress")
        vqz = folder / "compressed.vqz"
        vqz.write_bytes(res.data)
        rows = []
        for i, row in enumerate(rep["per_image"]):
            u8 = to_uint8(images[i])
            base = [png_baseline(u8)] + [lossy_at_psnr(u8, c, row["psnr_db"])
                                        for c in ("jpeg", "webp")]
            rows.append([row["name"], round(row["bits"], 1), round(row["psnr_db"], 2)]
                        + [b.bits if b.bits is not None else f"> q{b.quality}" for b in base])
        (folder / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
        return Result(folder, [], {"vqz": vqz}, (
            f"{len(names)} images -> {len(res.data):,} bytes ({rep['bits_per_image']:.1f} bits "
            f"per image with the header; coded in {seconds:.2f} s)"), rows)

    def decompress(self, path: str | os.PathLike) -> Result:
        """A .vqz made with these checkpoints -> its images (PNGs, as ``vqgen decompress``)."""
        from vqgen.pipeline.codec.coder import decode_codes, decode_images, open_vqz, output_names
        from vqgen.stage1_vqvae.runtime.grid import save_png

        p = self.check_upload(path, ".vqz file")
        data = p.read_bytes()
        header, _ = open_vqz(data, p.name)
        dec = decode_codes(data, self.prior, self.vqvae, p.name)
        images = decode_images(self.vqvae, dec.codes, header.batch_size)
        folder = self.new_folder("decompress")
        out = folder / "decoded"
        out.mkdir()
        files = []
        for name, img in zip(output_names(header.names), images, strict=True):
            f = out / name  # the folders too: 0/d0.png and 9/d0.png are two images
            f.parent.mkdir(parents=True, exist_ok=True)
            save_png(img, f)
            files.append(f)
        return Result(folder, files, {}, f"{header.count} images decoded from {p.name} "
                      f"({len(data):,} bytes)")

    # ------------------------------------------------------------------ model card

    def model_card(self, num_images: int = 512) -> Result:
        """What the checkpoints are, the codebook usage on held-out images, and a few
        reconstructions. Data-dependent parts are skipped (with a note) without data."""
        from vqgen.pipeline.evaluation.report import plot_code_histogram, read_training_logs
        from vqgen.stage1_vqvae.runtime.grid import make_grid_image

        folder = self.new_folder("card")
        p, v = self.prior, self.vqvae
        card = Path(str(p.checkpoint_path)).parent / "README.md"
        if getattr(p, "pair_config", None) and card.is_file():  # a pretrained pair: its card
            text = re.sub(r"\A---\n.*?\n---\n", "", card.read_text(), flags=re.S)
            return Result(folder, [], {}, text.strip())
        lines = ["| | VQ-VAE | prior |", "|---|---|---|",
                 f"| checkpoint | `{self.vqvae_path}` | `{self.prior_path}` |"]

        def logged(path: str, keys: tuple[str, ...]) -> tuple[str, dict[str, float]]:
            series, _ = read_training_logs(Path(path).parent)
            steps = max((s for col in series.values() for s, _ in col), default=None)
            last = {k: series[k][-1][1] for k in keys if series.get(k)}
            return ("?" if steps is None else str(steps + 1)), last

        v_steps, v_last = logged(self.vqvae_path, ("val/psnr", "val/perplexity"))
        p_steps, p_last = logged(self.prior_path, ("val/nll", "val/bits_per_code"))
        n_params = [sum(t.numel() for t in m.parameters()) for m in (v, p)]
        lines += [
            f"| data | {v.hparams.get('data', '?')} | codes of that VQ-VAE |",
            f"| images | {self.channels} x {self.image_size[0]} x {self.image_size[1]} | |",
            f"| codebook K | {v.num_codes} | {p.num_codes} |",
            f"| code grid | {self.code_shape[0]} x {self.code_shape[1]} | same |",
            f"| classes | | {p.model.num_classes} ({', '.join(self.class_names[:10])}"
            f"{'...' if len(self.class_names) > 10 else ''}) |",
            f"| parameters | {n_params[0]:,} | {n_params[1]:,} |",
            f"| training steps | {v_steps} | {p_steps} |",
            "| held-out | " + (f"PSNR {v_last['val/psnr']:.2f} dB" if "val/psnr" in v_last
                               else "no PSNR logged") + " | "
            + (f"NLL {p_last['val/nll']:.3f} nats/code" if "val/nll" in p_last else "no NLL logged")
            + (f" ({p_last['val/bits_per_code']:.3f} bits)" if "val/bits_per_code" in p_last
               else "") + " |",
        ]
        extra: dict[str, Path] = {}
        try:
            ds = self._data()
        except (UserError, OSError) as e:
            lines.append(f"\nNo held-out data ({one_line(e, 160)}): no usage histogram or "
                         "reconstructions.")
            return Result(folder, [], extra, "\n".join(lines))
        n = min(num_images, len(ds))
        x = torch.stack([ds[i][0] for i in range(n)])
        enc = v.model.to(self.device).eval()
        with torch.inference_mode():
            codes = torch.cat([enc.encode(x[s:s + 256].to(self.device)).cpu()
                               for s in range(0, n, 256)])
            recon = enc.decode_codes(codes[:8].to(self.device)).cpu()
        counts = torch.bincount(codes.flatten(), minlength=v.num_codes).tolist()
        plot_code_histogram(counts, folder / "usage.png")
        m = min(8, n)
        make_grid_image(torch.cat([x[:m], recon[:m]]), nrow=m).save(folder / "recon.png")
        extra.update(usage=folder / "usage.png", recon=folder / "recon.png")
        lines.append(f"\nCodebook usage on {n} held-out images: {sum(c > 0 for c in counts)} "
                     f"of {v.num_codes} codes used. Reconstructions: originals (top), decoded "
                     "codes (bottom).")
        return Result(folder, [], extra, "\n".join(lines))
