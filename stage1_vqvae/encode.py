"""Dataset -> code-map folder, streaming and deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .checkpoint import file_sha256
from .codes import CodeMapWriter
from .lit import LitVQVAE
from .progress import progress


@torch.inference_mode()
def encode_dataset(
    lit: LitVQVAE,
    dataset: Dataset,
    out_folder: str | os.PathLike,
    *,
    num_classes: int,
    class_names: tuple[str, ...] | list[str],
    source: str,
    checkpoint_path: str | os.PathLike | None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    checkpoint_sha256: str | None = None,
) -> Path:
    """Encode ``dataset`` (items (images (C,H,W) in [0,1], label)) in order into a code-map
    folder. Memory stays flat: batches stream from the loader into a memory-mapped file.

    Returns the folder. ``meta.json`` appears only when every row is written.
    ``checkpoint_sha256`` saves re-hashing the checkpoint when several splits are encoded.
    """
    model = lit.model.to(device).eval()
    n = len(dataset)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    ckpt = Path(checkpoint_path).resolve() if checkpoint_path else None
    meta = {
        "num_classes": int(num_classes),
        "class_names": list(class_names),
        "vqvae_checkpoint": str(ckpt) if ckpt else None,
        "vqvae_sha256": checkpoint_sha256 or (file_sha256(ckpt) if ckpt else None),
        "source": source,
        "image_size": list(model.image_size),
        "channels": int(model.in_channels),
    }
    has_labels = num_classes > 0
    desc = f"encode {Path(out_folder).name}"
    with CodeMapWriter(
        out_folder, count=n, code_shape=model.code_shape, num_codes=model.num_codes,
        has_labels=has_labels, meta=meta,
    ) as writer:
        for images, labels in progress(loader, total=len(loader), desc=desc):
            codes = model.encode(images.to(device)).cpu().numpy()
            writer.write(codes, np.asarray(labels, dtype=np.int64) if has_labels else None)
    return Path(out_folder)
