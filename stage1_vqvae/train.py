"""Train stage one end to end: fit, then dump every split as code maps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from .codes import is_code_map_folder, is_unfinished_code_map_folder
from .data import SPLITS, VQDataModule
from .encode import encode_dataset
from .lit import LitVQVAE, has_codes, load_vqvae, stage_one_class
from .runtime.checkpoint import file_sha256, read_checkpoint
from .runtime.data_order import saved_loader_state
from .runtime.outputs import claim_output_dir
from .runtime.run_dir import prepare_run_dir, record_run_files, remove_run_files
from .runtime.trainer import make_trainer, quiet_lightning


@dataclass
class TrainResult:
    out_dir: Path
    last: Path
    best: Path | None
    codes: dict[str, Path]
    metrics: dict[str, float]
    is_global_zero: bool = True  # False on the other DDP ranks, which should stay quiet


def write_all_code_maps(
    lit: LitVQVAE,
    dm: VQDataModule,
    out_dir: Path,
    checkpoint: Path | None,
    *,
    batch_size: int = 512,
    device: str = "cpu",
) -> dict[str, Path]:
    """Encode every split of ``dm`` into ``out_dir/<split>`` code-map folders."""
    written = {}
    sha = file_sha256(checkpoint) if checkpoint else None
    for split in SPLITS:
        ds = dm.dataset(split)
        info = ds.info
        written[split] = encode_dataset(
            lit, ds, out_dir / split, num_classes=info.num_classes,
            class_names=list(info.class_names), source=info.source,
            checkpoint_path=checkpoint, batch_size=batch_size, device=device,
            checkpoint_sha256=sha,
        )
    return written


def train_vqvae(
    out_dir: str | os.PathLike,
    model_args: dict[str, Any],
    *,
    data_args: dict[str, Any],
    trainer_args: dict[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    write_codes: bool = True,
    device: str = "cpu",
) -> TrainResult:
    """Fit a :class:`LitVQVAE` and (on rank 0) write code maps for every split.

    model_args: LitVQVAE init arguments (ignored on resume: the checkpoint is the config);
    ``gan=True`` plus the VQ-GAN's arguments trains a :class:`LitVQGAN`,
    ``bottleneck="gaussian"`` a :class:`LitGaussianVAE` (which writes no code maps).
    data_args: data, data_root, download, channels, image_size, batch_size, num_workers,
    val_fraction, seed. trainer_args: :func:`make_trainer` keyword arguments.
    """
    quiet_lightning()
    out = Path(out_dir)
    existed = out.exists()
    data = str(data_args.get("data", ""))
    inputs = [("--data", data[len("folder:"):])] if data.startswith("folder:") else []
    ckpt_path = prepare_run_dir(out, resume=resume, overwrite=overwrite, verb="train-vqvae",
                                inputs=inputs)
    if ckpt_path is not None:
        # load_vqvae returns eval mode; Lightning keeps module modes as they are, and the
        # quantizer only updates its EMA codebook / restarts dead codes in train mode
        ckpt = read_checkpoint(ckpt_path, "vqvae")  # read once: the model and the loader position
        lit = load_vqvae(ckpt_path, checkpoint=ckpt).train()
        hp = lit.hparams
        data_args = {
            **data_args, "data": hp.data, "channels": hp.channels,
            "image_size": tuple(hp.image_size), "batch_size": hp.batch_size,
            "val_fraction": hp.val_fraction, "seed": hp.seed,
        }
        seed = hp.seed
    else:
        seed = int(data_args.get("seed", 0))
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = VQDataModule(**data_args)
    if ckpt_path is not None:
        dm.resume_state = saved_loader_state(ckpt)
    dm.setup("fit")
    if ckpt_path is None:
        info = dm.info
        lit = stage_one_class(model_args)(
            **model_args, data=data_args["data"], data_root=str(data_args.get("data_root", "data")),
            channels=data_args["channels"], image_size=tuple(data_args["image_size"]),
            batch_size=data_args["batch_size"], val_fraction=data_args.get("val_fraction", 0.1),
            seed=seed, num_classes=info.num_classes, class_names=tuple(info.class_names),
        )
    lit.preview_dir = str(out / "previews")
    trainer = make_trainer(out, monitor="val/recon_loss", mode="min", **trainer_args)
    try:
        trainer.fit(lit, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except Exception:
        # a new run that failed before its first checkpoint (e.g. a corrupt image) leaves
        # nothing behind, so the same command works once the input is fixed
        if ckpt_path is None and not (out / "last.ckpt").exists():
            record_run_files(out)
            remove_run_files(out)
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    last = out / "last.ckpt"
    best = out / "best.ckpt"
    codes: dict[str, Path] = {}
    if write_codes and trainer.is_global_zero and has_codes(lit):
        final = load_vqvae(last)
        codes = write_all_code_maps(final, dm, out / "codes", last, device=device)
    if trainer.is_global_zero:
        record_run_files(out)
    return TrainResult(out, last, best if best.exists() else None, codes, metrics,
                       trainer.is_global_zero)


def check_code_output(out: Path, overwrite: bool, splits: tuple[str, ...] | list[str] = SPLITS,
                      inputs: tuple[tuple[str, object], ...] | list = ()) -> None:
    """The output policy for an encode ``--out``: code-map folders (whole, or left unfinished
    by an older vqgen) are encode's own; replacing them needs ``--overwrite``, which never
    touches anything else; a split name held by something else is refused."""
    owned = set()
    if out.is_dir():
        owned = {p.name for p in out.iterdir()
                 if p.is_dir() and (is_code_map_folder(p) or is_unfinished_code_map_folder(p))}
    claim_output_dir(out, verb="encode", overwrite=overwrite, owned=owned,
                     writes=lambda n: n in splits, inputs=inputs)
