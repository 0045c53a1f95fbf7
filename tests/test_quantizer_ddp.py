"""The quantizer's statistics under torch.distributed (2 gloo processes, no Lightning):
one codebook on every rank, built from every rank's data, equal to what one process
computes on the union of the ranks' batches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqgen.stage1_vqvae.quantizer import VectorQuantizer, _kmeans_pp_seeds, nearest_codes

K, D, N = 8, 3, 64

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")


def _data(rank: int) -> torch.Tensor:
    """Rank r's batch (1, D, 8, 8): different data on each rank (a shifted cloud)."""
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(1, D, 8, 8, generator=g) + 3.0 * rank


def _flat(rank: int) -> torch.Tensor:
    """Rank r's batch as (N, D) vectors, the way the quantizer flattens it."""
    return _data(rank).permute(0, 2, 3, 1).reshape(-1, D)


def _fresh(dead_after: int = 0) -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(K, D, decay=0.5, kmeans_init=False, dead_after=dead_after).train()


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        vq = VectorQuantizer(K, D, decay=0.5, kmeans_init=True, dead_after=0).train()
        vq._kmeans_init(_flat(rank))  # k-means over both ranks' data
        init_codebook = vq.codebook.clone()
        q = _fresh()
        for _ in range(3):  # EMA updates only
            q(_data(rank))
        r = _fresh(dead_after=1)
        with torch.no_grad():  # half the codes far from any data: they die and restart
            r.codebook[K // 2:] = 100.0
            r.ema_sum[K // 2:] = 100.0
        for _ in range(3):  # EMA updates and restarts of the codes unused in a step
            r(_data(rank))
        torch.save({"init": init_codebook, "ema": q.state_dict(), "restart": r.state_dict()},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("vq_ddp")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp / "store"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_every_rank_holds_the_same_codebook(ranks):
    a, b = ranks
    assert torch.equal(a["init"], b["init"])
    for part in ("ema", "restart"):
        for key in ("codebook", "ema_sum", "ema_count", "steps_unused"):
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    # the restart run did restart codes (else the comparison above proves little)
    assert not torch.equal(a["restart"]["codebook"], a["ema"]["codebook"])


def test_ema_statistics_equal_one_process_on_the_union(ranks):
    """3 EMA steps with each rank holding half the data = one process stepping on both."""
    q = _fresh()
    both = torch.cat([_data(0), _data(1)])
    for _ in range(3):
        q(both)
    for key in ("codebook", "ema_sum", "ema_count"):
        assert torch.allclose(ranks[0]["ema"][key], q.state_dict()[key], atol=1e-5), key
    alone = _fresh()  # and rank 0's data alone gives something else
    for _ in range(3):
        alone(_data(0))
    assert not torch.allclose(alone.ema_count, q.ema_count)


def test_kmeans_init_is_one_kmeans_over_both_ranks(ranks):
    """Rank 0's k-means++ seeds, then Lloyd steps over the union of the ranks' data."""
    g = torch.Generator().manual_seed(0)  # the quantizer's k-means generator
    centroids = _kmeans_pp_seeds(_flat(0), K, g)
    both = torch.cat([_flat(0), _flat(1)])
    for _ in range(10):
        assign = nearest_codes(both, centroids)
        for k in range(K):
            if (assign == k).any():
                centroids[k] = both[assign == k].mean(0)
    assert torch.allclose(ranks[0]["init"], centroids, atol=1e-5)
    # the two clouds sit 3 apart: centroids land near each of them
    init = ranks[0]["init"]
    centre0, centre1 = _data(0).mean(), _data(1).mean()
    near0 = (init.mean(1) - centre0).abs() < 1.0
    near1 = (init.mean(1) - centre1).abs() < 1.0
    assert near0.any() and near1.any(), init
