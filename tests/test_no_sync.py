"""No host sync in a training step of either stage: a GPU must not wait for the host.

On CPU a sync cannot be observed, so every Python-level way of reading a tensor's value on
the host is made to raise during ``training_step`` (from the second step on: the first one
runs the one-time k-means), inside a real Lightning fit. Syncs hidden in C++ (e.g. inside
``torch.bincount`` on CUDA) are covered by banning the ops that do them; with a GPU,
``torch.cuda.set_sync_debug_mode`` checks the real thing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from vqgen.stage1_vqvae.data import VQDataModule
from vqgen.stage1_vqvae.lit import LitVQVAE
from vqgen.stage2_prior.data import CodeMapDataModule
from vqgen.stage2_prior.lit import LitPrior


class HostRead(AssertionError):
    pass


def _refuse(name: str, original):
    def refuse(*args, **kwargs):
        raise HostRead(f"{name} in a training step reads a tensor on the host (a GPU sync)")
    return refuse


def _no_bool_mask(name: str, original):
    def checked(self, index, *rest):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            raise HostRead(f"boolean-mask {name} in a training step (a nonzero, a GPU sync)")
        return original(self, index, *rest)
    return checked


TENSOR_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__",
                "nonzero", "bincount", "unique", "masked_select")
TORCH_READS = ("nonzero", "bincount", "unique", "masked_select", "argwhere")


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    saved = []
    try:
        for owner, names, wrap in ((torch.Tensor, TENSOR_READS, _refuse),
                                   (torch, TORCH_READS, _refuse),
                                   (torch.Tensor, ("__getitem__", "__setitem__"), _no_bool_mask)):
            for name in names:
                original = getattr(owner, name)
                saved.append((owner, name, original))
                setattr(owner, name, wrap(name, original))
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def test_the_guard_catches_a_sync():
    x = torch.arange(4)
    with no_host_reads():
        for read in (lambda: int(x.max()), lambda: bool(x.any()), lambda: x.nonzero(),
                     lambda: x[x > 1], lambda: torch.bincount(x), lambda: x.tolist()):
            with pytest.raises(HostRead):
                read()
        torch.where(x > 1, x, 0).sum()  # device-side ops stay allowed
    assert int(x.max()) == 3  # restored afterwards


def fit_with_guarded_steps(lit: pl.LightningModule, dm: pl.LightningDataModule, steps: int = 4) -> int:
    """Fit ``steps`` steps; steps 1.. run their training_step under :func:`no_host_reads`."""
    step = lit.training_step
    guarded = []

    def training_step(batch, batch_idx):
        if batch_idx == 0:
            return step(batch, batch_idx)
        with no_host_reads():
            out = step(batch, batch_idx)
        guarded.append(batch_idx)
        return out

    lit.training_step = training_step
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(lit, datamodule=dm)
    return len(guarded)


@pytest.mark.parametrize("ema", [True, False])
def test_vqvae_training_step_reads_nothing_on_the_host(ema: bool):
    # dead_after=1: codes unused in a step are restarted in the next, so the restart path runs
    lit = LitVQVAE(hidden=16, res_hidden=8, num_res=1, code_dim=8, num_codes=64, ema=ema,
                   dead_after=1, batch_size=16, warmup_steps=1)
    dm = VQDataModule("mnist5k", batch_size=16, num_workers=0)
    assert fit_with_guarded_steps(lit, dm) == 3
    assert not bool(lit.model.quantizer.kmeans_pending)


@pytest.mark.parametrize("cond_drop", [0.0, 0.5])
def test_prior_training_step_reads_nothing_on_the_host(tiny_vqvae_run: Path, cond_drop: float):
    dm = CodeMapDataModule(str(tiny_vqvae_run / "codes"), batch_size=16, num_workers=0)
    meta = dm.meta
    lit = LitPrior(num_codes=int(meta["num_codes"]), code_shape=tuple(meta["code_shape"]),
                   num_classes=int(meta["num_classes"]), hidden=8, num_layers=2, head_hidden=16,
                   cond_drop=cond_drop, warmup_steps=1)
    assert fit_with_guarded_steps(lit, dm) == 3


def test_direct_prior_calls_still_check_their_inputs(tiny_vqvae_run: Path):
    """The checks skipped in the training step stay for user-facing calls."""
    from vqgen.stage1_vqvae.runtime.errors import UserError

    lit = LitPrior(num_codes=8, code_shape=(2, 2), num_classes=3, hidden=8, num_layers=2,
                   head_hidden=8)
    with pytest.raises(UserError, match="must be in"):
        lit(torch.full((1, 2, 2), 8), torch.tensor([0]))
    with pytest.raises(UserError, match="must be in"):
        lit(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([4]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quantizer_and_prior_steps_do_not_sync_on_cuda():
    from vqgen.stage1_vqvae.quantizer import VectorQuantizer
    from vqgen.stage2_prior.model import GatedPixelCNN

    q = VectorQuantizer(64, 8, kmeans_init=True, dead_after=1).cuda().train()
    prior = GatedPixelCNN(64, (4, 4), num_classes=3, hidden=8, num_layers=2, head_hidden=8).cuda()
    z = torch.randn(8, 8, 4, 4, device="cuda")
    q(z)  # k-means: the one step that may read on the host
    codes, labels = torch.randint(64, (8, 4, 4), device="cuda"), torch.randint(3, (8,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            _, _, losses = q(z + torch.randn_like(z))
            losses["loss"].backward() if losses["loss"].requires_grad else None
            lab = prior.drop_labels(labels, 0.5, validated=True)
            prior(codes, lab, validated=True).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
