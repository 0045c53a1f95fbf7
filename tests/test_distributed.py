"""DDP through Lightning with 2 CPU processes (gloo): both stages train with every rank
ending on the same weights, the checkpoint loads in one process, and a 2-process encode
writes the same bytes as a 1-process one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_MODEL_ARGS
from tests.subproc import vqgen
from vqgen.stage1_vqvae.codes import read_code_maps
from vqgen.stage1_vqvae.lit import load_vqvae
from vqgen.stage2_prior.lit import load_prior

STEPS_PER_EPOCH = 4
DDP = ("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not built in")


def _ok(proc) -> str:
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _ranks(run: Path) -> dict:
    report = json.loads((run / "ranks.json").read_text())
    assert report["world_size"] == 2
    return report


@pytest.fixture(scope="module")
def ddp_vqvae(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddp") / "vqvae"
    stdout = _ok(vqgen(
        "train-vqvae", "--data", "mnist5k", "--out", out, *TINY_MODEL_ARGS, "--max-epochs", "2",
        "--limit-train-batches", STEPS_PER_EPOCH, "--batch-size", "32", *DDP,
    ))
    return out, stdout


def test_ddp_stage_one_ranks_agree_and_checkpoint_loads(ddp_vqvae):
    out, stdout = ddp_vqvae
    report = _ranks(out)
    # each rank trained its own shard: 2 epochs x 4 steps, the weights hashed on each rank
    assert report["global_step"] == 2 * STEPS_PER_EPOCH
    assert report["agree"] and len(set(report["digests"])) == 1, report
    # printed once (rank 0 only), not once per rank
    assert stdout.count("checkpoint:") == 1, stdout
    lit = load_vqvae(out / "last.ckpt")  # a plain single-process load
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * STEPS_PER_EPOCH
    # the EMA codebook moved (the all-reduced statistics were applied) and is used
    assert float(lit.model.quantizer.ema_count.sum()) > 0
    codes = read_code_maps(out / "codes" / "val").codes
    assert len(np.unique(codes)) > 1


def _last_logged(run: Path, key: str) -> float:
    import csv

    rows = list(csv.DictReader((run / "logs" / "version_0" / "metrics.csv").open()))
    return float([r[key] for r in rows if r.get(key)][-1])


def test_ddp_validation_metrics_cover_both_ranks(ddp_vqvae):
    """The logged held-out PSNR, usage and perplexity are those of the whole split (each
    rank validated half of it), as one process computes them from the final weights."""
    from vqgen.pipeline.evaluation.stage1 import stage1_metrics
    from vqgen.stage1_vqvae.data import build_dataset

    out = ddp_vqvae[0]
    one = stage1_metrics(load_vqvae(out / "last.ckpt"), build_dataset("mnist5k", "val"))
    assert one["num_images"] == 500
    assert _last_logged(out, "val/psnr") == pytest.approx(one["psnr_db"], abs=1e-3)
    assert _last_logged(out, "val/perplexity") == pytest.approx(one["perplexity"], rel=1e-4)
    assert _last_logged(out, "val/codebook_usage") == pytest.approx(one["codebook_usage"])


def test_ddp_stage_two_ranks_agree(ddp_vqvae, tmp_path: Path):
    codes = ddp_vqvae[0] / "codes"
    out = tmp_path / "prior"
    _ok(vqgen("train-prior", "--codes", codes, "--out", out, "--hidden", "8", "--num-layers", "2",
              "--head-hidden", "16", "--max-epochs", "2", "--limit-train-batches", "3",
              "--batch-size", "32", *DDP))
    report = _ranks(out)
    assert report["global_step"] == 6 and report["agree"], report
    prior = load_prior(out / "last.ckpt")
    assert prior.num_codes == load_vqvae(ddp_vqvae[0] / "last.ckpt").num_codes
    # the logged held-out NLL is over the whole split (250 maps on each rank)
    from vqgen.pipeline.evaluation.stage2 import prior_nll

    val = read_code_maps(codes / "val")
    nll = prior_nll(prior, np.asarray(val.codes), torch.as_tensor(np.asarray(val.labels)))
    assert _last_logged(out, "val/nll") == pytest.approx(float(nll.mean()), rel=1e-4)


def test_ddp_encode_equals_single_process(ddp_vqvae, tmp_path: Path):
    ckpt = ddp_vqvae[0] / "last.ckpt"
    one, two = tmp_path / "one", tmp_path / "two"
    # each rank encodes a contiguous block of 250 rows; batches of 50 hold the same images
    # in both runs (the kernels' rounding may depend on the batch), the last one of each
    # block included
    _ok(vqgen("encode", "--vqvae", ckpt, "--out", one, "--device", "cpu", "--splits", "val",
              "--batch-size", "50"))
    stdout = _ok(vqgen("encode", "--vqvae", ckpt, "--out", two, "--splits", "val",
                       "--batch-size", "50", "--accelerator", "cpu", "--devices", "2"))
    assert stdout.count("codes val:") == 1, stdout
    for name in ("codes.npy", "labels.npy", "index.npy", "meta.json"):
        assert (one / "val" / name).read_bytes() == (two / "val" / name).read_bytes(), name
    assert sorted(p.name for p in (two / "val").iterdir()) == ["codes.npy", "index.npy",
                                                               "labels.npy", "meta.json"]
    assert sorted(p.name for p in two.iterdir()) == ["val"]  # no staging folder left


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_impossible_device_request_is_one_line(tiny_vqvae_run: Path, tmp_path: Path, capsys):
    from vqgen.pipeline.cli import main

    rc = main(["encode", "--vqvae", str(tiny_vqvae_run / "last.ckpt"), "--out",
               str(tmp_path / "c"), "--accelerator", "gpu", "--devices", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("vqgen encode: error:") and len(err.splitlines()) == 1, err
    assert "gpu" in err.lower()
    assert not (tmp_path / "c").exists()


def test_cli_closes_the_process_group(tmp_path: Path):
    """A DDP run's process group is destroyed before `vqgen` returns (whatever the outcome):
    left to interpreter exit, gloo's threads can abort a run that succeeded (rc -6)."""
    import torch.distributed as dist

    from vqgen.pipeline.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        assert main(["sample", "--prior", str(tmp_path / "missing.ckpt"), "--out",
                     str(tmp_path / "out")]) == 2
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
