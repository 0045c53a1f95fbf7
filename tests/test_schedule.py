"""Learning-rate schedules that follow the budget, and the prior's averaged weights.

- :class:`LRSchedule`: warm-up, cosine to the floor, re-targeted without a jump;
- ``--max-time``: the schedule of either stage is finished when the run stops (the lr has
  reached its floor), instead of being cut near its peak;
- the prior's EMA weights: the update rule, validation measures them, every verb loads them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqgen.stage1_vqvae.runtime.trainer import LRSchedule, lr_schedule
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.lit import LitPrior, load_prior
from vqgen.stage2_prior.train import train_prior

TINY_PRIOR = dict(hidden=8, num_layers=2, head_hidden=16, lr=3e-3, warmup_steps=5)
QUIET = dict(accelerator="cpu", quiet=True, checkpoint_every_minutes=0, limit_val_batches=2)


# ----------------------------------------------------------------------- LRSchedule


def test_warmup_then_cosine_to_the_floor():
    s = LRSchedule(warmup_steps=10, floor=0.1, total_steps=110)
    assert [s.factor(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: the cosine's middle
    assert s.factor(110) == pytest.approx(0.1) and s.factor(500) == pytest.approx(0.1)
    lrs = [s.factor(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_unknown_total_holds_the_peak():
    s = LRSchedule(warmup_steps=5, floor=0.05)
    assert s.factor(4) == pytest.approx(1.0) and s.factor(10_000) == pytest.approx(1.0)


def test_retarget_continues_without_a_jump_and_ends_at_the_new_total():
    s = LRSchedule(warmup_steps=10, floor=0.1, total_steps=110)
    before = s.factor(40)
    s.retarget(40, 300, "time")
    assert s.factor(40) == pytest.approx(before)
    assert s.factor(41) < before and s.factor(41) == pytest.approx(before, abs=0.01)
    assert s.factor(299) > 0.1 + 1e-6 and s.factor(300) == pytest.approx(0.1)
    # a budget found far shorter than hoped: done at once
    s.retarget(100, 50, "time")
    assert s.factor(101) == pytest.approx(0.1)


def test_an_estimate_before_warmup_ends_leaves_the_warmup_alone():
    s = LRSchedule(warmup_steps=20, floor=0.1)
    s.retarget(7, 120, "time")
    assert s.factor(7) == pytest.approx(8 / 20) and s.factor(19) == pytest.approx(1.0)
    assert s.factor(70) == pytest.approx(0.1 + 0.9 * 0.5)


@pytest.mark.parametrize("stage", ["prior", "vqvae"])
def test_checkpoint_hooks_carry_a_time_estimate_to_the_resumed_run(stage: str):
    from vqgen.stage1_vqvae.lit import LitVQVAE

    def build():
        if stage == "prior":
            return LitPrior(num_codes=4, code_shape=(2, 2), **TINY_PRIOR)
        return LitVQVAE(hidden=8, res_hidden=4, num_res=1, code_dim=4, num_codes=8)

    trained = build()
    s = lr_schedule(trained, 10, 0.1)
    s.retarget(30, 200, "time")
    s.factor(57)
    ckpt: dict = {}
    trained.on_save_checkpoint(ckpt)  # what Lightning calls when it writes last.ckpt
    resumed = build()
    resumed.on_load_checkpoint(ckpt)  # and on --resume, before configure_optimizers
    # no trainer: the epochs give no total (as with --max-time alone); the saved estimate wins
    r = lr_schedule(resumed, 10, 0.1)
    assert r.state_dict() == s.state_dict()
    assert [r.factor(i) for i in (57, 120, 200)] == pytest.approx([s.factor(i) for i in (57, 120, 200)])


def test_resume_with_more_epochs_stretches_the_rest_of_the_schedule():
    s = LRSchedule(warmup_steps=10, floor=0.1, total_steps=110)
    at_60 = s.factor(60)
    lit = LitPrior(num_codes=4, code_shape=(2, 2), **TINY_PRIOR)
    lit._saved_lr_schedule = s.state_dict()  # last_step 60
    lit.trainer = type("T", (), {"estimated_stepping_batches": 210})()
    r = lr_schedule(lit, 10, 0.1)
    assert r.factor(60) == pytest.approx(at_60) and r.factor(210) == pytest.approx(0.1)
    assert r.factor(110) > 0.2


# ------------------------------------------------------------- --max-time budgets


def _final_lr_and_schedule(ckpt_path: Path) -> tuple[float, float, dict]:
    ckpt = torch.load(ckpt_path, weights_only=True)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    return group["lr"], group["initial_lr"], ckpt["lr_schedule"]


def test_max_time_alone_finishes_the_prior_schedule(tiny_vqvae_run: Path, tmp_path: Path):
    run = tmp_path / "prior"
    res = train_prior(tiny_vqvae_run / "codes", run, dict(TINY_PRIOR, min_lr_ratio=0.05),
                      trainer_args=dict(QUIET, max_epochs=-1, max_time="8"), batch_size=32)
    lr, base, sched = _final_lr_and_schedule(res.last)
    # at its floor, or near it when the clock ran out a few steps early on a loaded machine
    # (within 0.1 x: the last ~12% of the cosine); a run cut by time alone ends at the peak
    assert sched["source"] == "time" and sched["total"] > 50
    assert 0.05 * base <= lr <= 0.1 * base, "the run stopped before its schedule ended"
    ckpt = torch.load(res.last, weights_only=True)
    timer = next(v for k, v in ckpt["callbacks"].items() if k.startswith("Timer"))
    assert timer["time_elapsed"]["train"] <= 8.5


def test_max_time_alone_finishes_the_vqvae_schedule(tmp_path: Path):
    model = dict(hidden=16, res_hidden=8, num_res=1, code_dim=8, num_codes=32, warmup_steps=5,
                 min_lr_ratio=0.05)
    data = dict(data="mnist5k", channels=1, image_size=(28, 28), batch_size=32, seed=0)
    res = train_vqvae(tmp_path / "vq", model, data_args=data,
                      trainer_args=dict(QUIET, max_epochs=-1, max_time="8"), write_codes=False)
    lr, base, sched = _final_lr_and_schedule(res.last)
    assert sched["source"] == "time" and sched["total"] > 20
    assert 0.05 * base <= lr <= 0.1 * base, "the run stopped before its schedule ended"


def test_max_time_alone_is_not_bounded_by_the_presets_epochs():
    import argparse

    from vqgen.pipeline.cli.common import add_trainer_args, trainer_kwargs

    p = argparse.ArgumentParser()
    add_trainer_args(p)
    assert trainer_kwargs(p.parse_args(["--max-time", "600"]), 9)["max_epochs"] == -1
    assert trainer_kwargs(p.parse_args(["--max-time", "600", "--max-epochs", "3"]), 9)["max_epochs"] == 3
    assert trainer_kwargs(p.parse_args([]), 9)["max_epochs"] == 9


# ------------------------------------------------------------- averaged weights (EMA)


def test_ema_update_moves_the_average_toward_the_weights():
    lit = LitPrior(num_codes=4, code_shape=(2, 2), ema_decay=0.9, **TINY_PRIOR)
    with torch.no_grad():
        for p in lit.ema.parameters():
            p.zero_()
    raw = [p.detach().clone() for p in lit.model.parameters()]
    lit.on_train_batch_end(None, None, 0)  # global_step 0: decay min(0.9, 1/10) = 0.1
    for e, r in zip(lit.ema.parameters(), raw, strict=True):
        torch.testing.assert_close(e, 0.9 * r)
    lit.on_train_batch_end(None, None, 0)
    for e, r in zip(lit.ema.parameters(), raw, strict=True):
        torch.testing.assert_close(e, 0.1 * (0.9 * r) + 0.9 * r)
    assert not any(p.requires_grad for p in lit.ema.parameters())


def test_validation_and_every_verb_use_the_averaged_weights(tiny_vqvae_run: Path, tmp_path: Path):
    from vqgen.stage1_vqvae.codes import read_code_maps

    res = train_prior(tiny_vqvae_run / "codes", tmp_path / "p", dict(TINY_PRIOR, ema_decay=0.95),
                      trainer_args=dict(QUIET, max_epochs=1, limit_train_batches=20,
                                        limit_val_batches=None), batch_size=32)
    state = torch.load(res.last, weights_only=True)["state_dict"]
    ema = {k[4:]: v for k, v in state.items() if k.startswith("ema.")}
    assert any(not torch.equal(v, state[f"model.{k}"]) for k, v in ema.items())
    lit = load_prior(res.last)
    assert lit.ema is None
    for k, v in lit.model.state_dict().items():
        assert torch.equal(v, ema[k]), k
    # the logged held-out NLL is that of the averaged weights
    maps = read_code_maps(tiny_vqvae_run / "codes" / "val")
    codes = torch.from_numpy(maps.codes.astype("int64"))
    labels = None if maps.labels is None else torch.from_numpy(maps.labels.astype("int64"))
    with torch.no_grad():
        logits = lit.model(codes, labels if lit.model.num_classes else None)
        nll = float(torch.nn.functional.cross_entropy(logits, codes))
    assert nll == pytest.approx(res.metrics["val/nll"], rel=1e-4)
    raw = load_prior(res.last, averaged=False)
    with torch.no_grad():
        raw_nll = float(torch.nn.functional.cross_entropy(
            raw.model(codes, labels if raw.model.num_classes else None), codes))
    assert raw_nll != pytest.approx(nll, rel=1e-4)
