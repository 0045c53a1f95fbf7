"""The cached incremental sampler: exactly the naive sampler's grids and logits, no state kept."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from vqgen.stage2_prior.cached import incremental_logits
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import sample


def make_model(
    code_shape: tuple[int, int] = (5, 7),
    num_classes: int = 0,
    num_layers: int = 3,
    kernel_size: int = 3,
    num_codes: int = 12,
    hidden: int = 16,
    seed: int = 0,
) -> GatedPixelCNN:
    """Small random model whose head and class embeddings are NOT zero (logits of order 1)."""
    torch.manual_seed(seed)
    model = GatedPixelCNN(num_codes, code_shape, num_classes=num_classes, hidden=hidden,
                          num_layers=num_layers, kernel_size=kernel_size, head_hidden=32)
    nn.init.normal_(model.head[-1].weight, std=0.5)
    nn.init.normal_(model.head[-1].bias, std=0.1)
    if model.class_embed is not None:
        for emb in model.class_embed:
            nn.init.normal_(emb.weight, std=1.0)
    return model.eval()


def naive_with_logits(model: GatedPixelCNN, num: int, **kwargs
                      ) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """The naive sampler (full forward pass per position) recording the guided logits
    (num, K) at each drawn position."""
    seen: dict[tuple[int, int], torch.Tensor] = {}

    def record(i: int, j: int, logits: torch.Tensor) -> None:
        seen[(i, j)] = logits.clone()

    return sample(model, num, sampler="naive", on_logits=record, **kwargs), seen


def cached_with_logits(model: GatedPixelCNN, num: int, **kwargs
                       ) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    seen: dict[tuple[int, int], torch.Tensor] = {}

    def record(i: int, j: int, logits: torch.Tensor) -> None:
        seen[(i, j)] = logits.clone()

    return sample(model, num, on_logits=record, **kwargs), seen


def assert_same(model: GatedPixelCNN, num: int, seed: int = 0, **kwargs) -> torch.Tensor:
    """Both samplers, same seed: identical grids, same drawn positions, logits to 1e-4."""
    naive, naive_logits = naive_with_logits(
        model, num, generator=torch.Generator().manual_seed(seed), **kwargs)
    cached, cached_logits = cached_with_logits(
        model, num, generator=torch.Generator().manual_seed(seed), **kwargs)
    assert torch.equal(naive, cached), f"grids differ:\n{naive}\n{cached}"
    assert naive_logits.keys() == cached_logits.keys()
    for pos, ref in naive_logits.items():
        torch.testing.assert_close(cached_logits[pos], ref, atol=1e-4, rtol=1e-4,
                                   msg=lambda m, pos=pos: f"logits at {pos}: {m}")
    # the default sampler is the cached one, through the public entry point
    default = sample(model, num, generator=torch.Generator().manual_seed(seed), **kwargs)
    assert torch.equal(default, cached)
    return cached


# ---------------------------------------------------------------------- teacher forcing
@pytest.mark.parametrize(
    "shape,num_layers,kernel_size,num_classes",
    [((5, 7), 3, 3, 0), ((7, 5), 1, 3, 3), ((4, 6), 2, 5, 0), ((6, 6), 4, 3, 2),
     ((1, 8), 3, 3, 0), ((8, 1), 3, 5, 2), ((1, 1), 2, 3, 0), ((3, 2), 2, 7, 0)],
)
def test_incremental_logits_equal_forward(shape, num_layers, kernel_size, num_classes) -> None:
    """Every position's cached logits equal the full forward pass on the same codes, for a
    batch (matrix-matrix products) and a single grid (the matrix-vector path)."""
    model = make_model(shape, num_classes, num_layers, kernel_size)
    torch.manual_seed(1)
    codes = torch.randint(0, model.num_codes, (3, *shape))
    labels = torch.tensor([0, 1, num_classes]) if num_classes else None  # incl. the null class
    with torch.no_grad():
        ref = model(codes, labels)
    torch.testing.assert_close(incremental_logits(model, codes, labels), ref,
                               atol=1e-5, rtol=1e-5)
    one = None if labels is None else labels[1:2]
    torch.testing.assert_close(incremental_logits(model, codes[1:2], one), ref[1:2],
                               atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------- exact sampling
@pytest.mark.parametrize(
    "shape,num_layers,kernel_size",
    [((6, 6), 3, 3), ((4, 7), 2, 3), ((7, 4), 4, 3), ((5, 6), 2, 5), ((1, 9), 3, 3),
     ((9, 1), 2, 3), ((1, 1), 1, 3)],
)
def test_same_grids_unconditional(shape, num_layers, kernel_size) -> None:
    model = make_model(shape, 0, num_layers, kernel_size)
    out = assert_same(model, 4, seed=3)
    assert out.shape == (4, *shape) and out.dtype == torch.long


@pytest.mark.parametrize("num_classes,labels", [(0, None), (3, [1]), (3, None)])
def test_same_grids_batch_of_one(num_classes, labels) -> None:
    """num=1 runs the matrix-vector path (guidance doubles it to a batch of 2)."""
    model = make_model((5, 6), num_classes, num_layers=3)
    labels = None if labels is None else torch.tensor(labels)
    assert_same(model, 1, labels=labels, seed=2, top_p=0.9)
    if labels is not None:
        assert_same(model, 1, labels=labels, guidance=2.0, seed=2)
    prefix = torch.randint(0, model.num_codes, (1, 5, 6))
    mask = torch.rand(5, 6) < 0.4
    assert_same(model, 1, labels=labels, prefix=prefix, known=mask, seed=2)


@pytest.mark.parametrize("shape,num_layers", [((5, 5), 2), ((3, 6), 3), ((6, 3), 1)])
def test_same_grids_with_classes(shape, num_layers) -> None:
    model = make_model(shape, num_classes=3, num_layers=num_layers)
    labels = torch.tensor([0, 1, 2, 2, 0])
    assert_same(model, 5, labels=labels)
    assert_same(model, 5)  # labels=None: the null class


@pytest.mark.parametrize("guidance", [0.0, 1.5, 3.0])
def test_same_grids_with_guidance(guidance: float) -> None:
    model = make_model((4, 5), num_classes=3, num_layers=2)
    assert_same(model, 3, labels=torch.tensor([2, 0, 1]), guidance=guidance, seed=7)


@pytest.mark.parametrize(
    "options",
    [dict(temperature=0.7), dict(top_k=3), dict(top_p=0.8), dict(top_k=5, top_p=0.9,
                                                                temperature=1.3),
     dict(top_k=1)],
)
def test_same_grids_with_filters(options: dict) -> None:
    model = make_model((5, 4), num_classes=2, num_layers=3)
    assert_same(model, 4, labels=torch.tensor([0, 1, 1, 0]), guidance=2.0, seed=11, **options)


def test_same_grids_bigger_batch_default_like_model() -> None:
    """More codes and channels, many rows in one batch, kernel 5 and guidance."""
    model = make_model((6, 6), num_classes=4, num_layers=4, kernel_size=5, num_codes=64,
                       hidden=32)
    assert_same(model, 16, labels=torch.arange(16) % 4, guidance=1.5, top_p=0.95, seed=5)


def test_same_completion() -> None:
    """prefix/mask: shared mask (rows kept whole, gaps, a tail kept), per-row mask, all kept."""
    model = make_model((6, 5), num_classes=2, num_layers=3)
    torch.manual_seed(4)
    prefix = torch.randint(0, model.num_codes, (3, 6, 5))
    labels = torch.tensor([0, 1, 1])
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[:2] = True  # the top rows: no horizontal stack needed there
    mask[3, 1:3] = True
    mask[5, 2:] = True  # the end of the last row: never computed
    out = assert_same(model, 3, labels=labels, prefix=prefix, known=mask, guidance=1.5)
    assert torch.equal(out[:, mask], prefix[:, mask])
    row_mask = torch.rand(3, 6, 5) < 0.5
    row_mask[:, 0] = True
    junk = torch.where(row_mask, prefix, torch.full_like(prefix, 999))
    out = assert_same(model, 3, labels=labels, prefix=junk, known=row_mask, top_k=4)
    assert torch.equal(out[row_mask], prefix[row_mask])
    full = torch.ones(6, 5, dtype=torch.bool)
    assert torch.equal(sample(model, 3, prefix=prefix, known=full), prefix)


def test_greedy_cached_samples_are_argmax_of_forward() -> None:
    """top_k=1 through the cached sampler reproduces the model's own argmax."""
    model = make_model((5, 6), num_classes=3, num_layers=3)
    labels = torch.tensor([0, 1, 2])
    samples = sample(model, 3, labels=labels, top_k=1)
    with torch.no_grad():
        assert torch.equal(model(samples, labels).argmax(1), samples)


def test_generator_consumed_identically() -> None:
    """After either sampler the generator is in the same state (same draws, same shapes)."""
    model = make_model((4, 4), num_classes=2)
    states = []
    for sampler in ("naive", "cached"):
        gen = torch.Generator().manual_seed(9)
        sample(model, 2, labels=torch.tensor([0, 1]), guidance=2.0, top_p=0.9, generator=gen,
                     sampler=sampler)
        states.append(gen.get_state())
    assert torch.equal(states[0], states[1])


def test_global_rng_when_no_generator() -> None:
    model = make_model((3, 4))
    outs = []
    for sampler in ("naive", "cached"):
        torch.manual_seed(123)
        outs.append(sample(model, 3, sampler=sampler))
    assert torch.equal(outs[0], outs[1])


# --------------------------------------------------------------------- state and memory
def test_no_state_between_calls() -> None:
    """Same seed twice gives the same grids, whatever ran in between; nothing on the model."""
    model = make_model((5, 5), num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = set(vars(model))

    def draw() -> torch.Tensor:
        return sample(model, 4, labels=torch.tensor([0, 1, 2, 0]), guidance=1.5,
                            generator=torch.Generator().manual_seed(0))

    first = draw()
    sample(model, 2, labels=torch.tensor([2, 2]), top_k=2)  # a different call in between
    torch.manual_seed(0)
    sample(model, 7, prefix=first.repeat(2, 1, 1)[:7], known=torch.rand(5, 5) < 0.3)
    assert torch.equal(draw(), first)
    assert set(vars(model)) == attrs
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_memory_does_not_grow_with_batches() -> None:
    """Repeated calls leave no tensors behind (the caches die with the call)."""
    model = make_model((6, 6), num_classes=2, hidden=32)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))

    labels = torch.tensor([0, 1] * 8)
    sample(model, 16, labels=labels, guidance=1.5)  # warm-up
    base = live_tensors()
    for _ in range(5):
        sample(model, 16, labels=labels, guidance=1.5)
    assert live_tensors() <= base


def test_sampler_argument() -> None:
    model = make_model((3, 3))
    with pytest.raises(ValueError, match="sampler='fast' must be one of cached, naive"):
        sample(model, 2, sampler="fast")
    # both refuse bad input the same way (shared checks)
    for sampler in ("cached", "naive"):
        with pytest.raises(ValueError, match="temperature"):
            sample(model, 2, temperature=0, sampler=sampler)
        with pytest.raises(ValueError, match="needs labels"):
            sample(model, 2, guidance=2.0, sampler=sampler)
