"""Properties of the gated PixelCNN prior: causality, no blind spot, sampling, filtering."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqgen.stage2_prior.layers import dependency_mask
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import filter_logits, sample, validate_sampling_args


def make_model(
    num_codes: int = 12,
    code_shape: tuple[int, int] = (5, 7),
    num_classes: int = 0,
    hidden: int = 16,
    num_layers: int = 3,
    kernel_size: int = 3,
    seed: int = 0,
) -> GatedPixelCNN:
    """Small random model whose head and class embeddings are NOT zero, so tests can fail."""
    torch.manual_seed(seed)
    model = GatedPixelCNN(num_codes, code_shape, num_classes=num_classes, hidden=hidden,
                          num_layers=num_layers, kernel_size=kernel_size, head_hidden=32)
    # logits of order 1 that vary with position and class, not just a per-code bias
    nn.init.normal_(model.head[-1].weight, std=0.5)
    nn.init.zeros_(model.head[-1].bias)
    if model.class_embed is not None:
        for emb in model.class_embed:
            nn.init.normal_(emb.weight, std=1.0)
    return model.eval()


def raster_perturbations(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """codes (h, w) -> (1 + h*w, h, w): the original, then one copy per position p with the
    code at p changed (raster order)."""
    h, w = codes.shape
    batch = codes.repeat(1 + h * w, 1, 1)
    for p in range(h * w):
        i, j = divmod(p, w)
        batch[1 + p, i, j] = (codes[i, j] + 1 + p % (num_codes - 1)) % num_codes
    return batch


def check_causal(model: GatedPixelCNN, shape: tuple[int, int], labels_value: int | None) -> None:
    h, w = shape
    torch.manual_seed(1)
    codes = torch.randint(0, model.num_codes, (h, w))
    batch = raster_perturbations(codes, model.num_codes)
    labels = None if labels_value is None else torch.full((batch.shape[0],), labels_value)
    with torch.no_grad():
        logits = model(batch, labels)
    base = logits[0]  # (K, h, w)
    for p in range(h * w):
        i, j = divmod(p, w)
        diff = (logits[1 + p] - base).abs().amax(dim=0).flatten()  # per position, raster
        assert diff[: p + 1].max() <= 1e-6, f"changing {(i, j)} moved logits at or before it"
        if p < h * w - 1:
            assert diff[p + 1 :].max() > 1e-4, f"changing {(i, j)} moved nothing after it"
        # the positions that move are exactly those whose receptive field holds p
        moved = diff.view(h, w) > 1e-6
        depends = torch.stack([
            model.dependency_mask(qi, qj, shape)[i, j] for qi in range(h) for qj in range(w)
        ]).view(h, w)
        assert torch.equal(moved, depends), f"changing {(i, j)}: moved\n{moved}\nvs\n{depends}"


# ---------------------------------------------------------------------------- causality
@pytest.mark.parametrize("num_classes,label", [(0, None), (3, 2), (3, None)])
def test_causal_by_perturbation_non_square(num_classes: int, label: int | None) -> None:
    model = make_model(code_shape=(5, 7), num_classes=num_classes, num_layers=2)
    check_causal(model, (5, 7), label)


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (1, 1), (2, 3)])
def test_causal_on_thin_grids(shape: tuple[int, int]) -> None:
    model = make_model(code_shape=shape, num_layers=2)
    check_causal(model, shape, None)


def test_causal_kernel_5() -> None:
    model = make_model(code_shape=(6, 5), num_layers=2, kernel_size=5)
    check_causal(model, (6, 5), None)


# --------------------------------------------------------------------------- blind spot
def input_gradients(model: GatedPixelCNN, codes: torch.Tensor) -> torch.Tensor:
    """codes (h, w) -> bool (h*w, h, w): for each output position p (raster), where the
    gradient of a random projection of logits[p] w.r.t. the embedded input is non-zero."""
    h, w = codes.shape
    n = h * w
    captured = {}

    def hook(_module, _inp, out):
        out.retain_grad()
        captured["x"] = out

    handle = model.embed.register_forward_hook(hook)
    try:
        logits = model(codes.repeat(n, 1, 1))  # row b of the batch answers for position b
    finally:
        handle.remove()
    proj = torch.randn(model.num_codes, generator=torch.Generator().manual_seed(3))
    rows, cols = torch.arange(n) // w, torch.arange(n) % w
    at_p = logits[torch.arange(n), :, rows, cols]  # (n, K)
    (at_p @ proj).sum().backward()
    return captured["x"].grad.abs().sum(-1) > 0  # (n, h, w)


@pytest.mark.parametrize(
    "shape,num_layers,kernel_size",
    [((5, 7), 6, 3), ((7, 9), 3, 3), ((6, 8), 2, 5), ((4, 3), 3, 3)],
)
def test_no_blind_spot(shape: tuple[int, int], num_layers: int, kernel_size: int) -> None:
    h, w = shape
    model = make_model(code_shape=shape, num_layers=num_layers, kernel_size=kernel_size)
    torch.manual_seed(2)
    grads = input_gradients(model, torch.randint(0, model.num_codes, shape))
    reach = num_layers * (kernel_size // 2)
    for p in range(h * w):
        i, j = divmod(p, w)
        expected = dependency_mask(i, j, shape, num_layers, kernel_size)
        assert torch.equal(grads[p], expected), f"position {(i, j)}:\n{grads[p]}\n{expected}"
        # up-right neighbours (the classic blind spot) are reached
        for di in range(1, min(i, reach + 1) + 1):
            for dj in range(1, min(w - 1 - j, reach) + 1):
                assert grads[p, i - di, j + dj], f"blind spot at {(i - di, j + dj)} for {(i, j)}"
    if h - 1 <= 1 + reach and w - 1 <= reach:
        # receptive field covers the grid: every earlier position is seen
        earlier = torch.arange(h * w)[None, :] < torch.arange(h * w)[:, None]
        assert torch.equal(grads.view(h * w, h * w), earlier)


# ------------------------------------------------------------------------- untrained nll
@pytest.mark.parametrize("num_codes,num_classes", [(64, 0), (512, 10)])
def test_untrained_nll_is_log_k(num_codes: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = GatedPixelCNN(num_codes, (8, 8), num_classes=num_classes, hidden=16, num_layers=3,
                          head_hidden=32)
    codes = torch.randint(0, num_codes, (8, 8, 8))
    labels = torch.randint(0, num_classes, (8,)) if num_classes else None
    with torch.no_grad():
        nll = F.cross_entropy(model(codes, labels), codes)
    assert abs(nll.item() - math.log(num_codes)) < 0.02 * math.log(num_codes)


def test_forward_shape_any_grid() -> None:
    model = make_model(code_shape=(7, 7))
    for shape in [(7, 7), (8, 8), (5, 9), (16, 16), (1, 4)]:
        out = model(torch.zeros(2, *shape, dtype=torch.long))
        assert out.shape == (2, model.num_codes, *shape)


# ----------------------------------------------------------------------------- sampling
def test_same_seed_same_samples() -> None:
    model = make_model(code_shape=(4, 5), num_classes=2)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])

    def draw(seed: int) -> torch.Tensor:
        return sample(model, 6, labels=labels, generator=torch.Generator().manual_seed(seed),
                            top_p=0.9, guidance=1.5)

    a, b, c = draw(0), draw(0), draw(1)
    assert a.dtype == torch.long and a.shape == (6, 4, 5)
    assert int(a.min()) >= 0 and int(a.max()) < model.num_codes
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_greedy_samples_are_self_consistent(num_classes: int) -> None:
    model = make_model(code_shape=(4, 6), num_classes=num_classes)
    labels = torch.tensor([0, 1, 2, 2]) if num_classes else None
    samples = sample(model, 4, labels=labels, top_k=1)
    with torch.no_grad():
        assert torch.equal(model(samples, labels).argmax(1), samples)


@pytest.mark.parametrize("guidance", [0.0, 2.5])
def test_greedy_guided_samples_follow_guided_logits(guidance: float) -> None:
    model = make_model(code_shape=(3, 5), num_classes=3)
    labels = torch.tensor([0, 1, 2])
    samples = sample(model, 3, labels=labels, top_k=1, guidance=guidance)
    with torch.no_grad():
        cond, uncond = model(samples, labels), model(samples, None)
    assert torch.equal((uncond + guidance * (cond - uncond)).argmax(1), samples)


@pytest.mark.parametrize("shape", [(1, 6), (6, 1)])
def test_sampling_thin_grids(shape: tuple[int, int]) -> None:
    model = make_model(code_shape=shape)
    samples = sample(model, 3, top_k=1)
    assert samples.shape == (3, *shape)
    with torch.no_grad():
        assert torch.equal(model(samples).argmax(1), samples)


def test_completion_keeps_prefix() -> None:
    model = make_model(code_shape=(4, 5))
    torch.manual_seed(5)
    prefix = torch.randint(0, model.num_codes, (3, 4, 5))
    mask = torch.rand(4, 5) < 0.5
    out = sample(model, 3, prefix=prefix, known=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, mask], prefix[:, mask])
    # greedy completion: every drawn position is the argmax given the kept codes
    greedy = sample(model, 3, prefix=prefix, known=mask, top_k=1)
    assert torch.equal(greedy[:, mask], prefix[:, mask])
    with torch.no_grad():
        best = model(greedy).argmax(1)
    assert torch.equal(best[:, ~mask], greedy[:, ~mask])
    # per-row mask; out-of-range codes where nothing is kept are ignored
    row_mask = torch.rand(3, 4, 5) < 0.5
    junk = torch.where(row_mask, prefix, torch.full_like(prefix, 999))
    out = sample(model, 3, prefix=junk, known=row_mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[row_mask], prefix[row_mask])
    assert int(out.max()) < model.num_codes
    # everything kept: the prefix comes back untouched
    full = torch.ones(4, 5, dtype=torch.bool)
    assert torch.equal(sample(model, 3, prefix=prefix, known=full), prefix)


def test_completion_errors() -> None:
    model = make_model(code_shape=(4, 5))
    prefix = torch.zeros(2, 4, 5, dtype=torch.long)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="prefix and known"):
        sample(model, 2, prefix=prefix)
    with pytest.raises(ValueError, match="prefix must have shape"):
        sample(model, 2, prefix=prefix[:, :3], known=mask)
    with pytest.raises(ValueError, match="known must be bool"):
        sample(model, 2, prefix=prefix, known=mask.long())
    with pytest.raises(ValueError, match=r"prefix \(where known is True\) must be in"):
        sample(model, 2, prefix=prefix + 50, known=~mask)


# -------------------------------------------------------------------- class conditioning
def test_class_conditioning_changes_logits() -> None:
    model = make_model(code_shape=(3, 4), num_classes=3)
    codes = torch.randint(0, model.num_codes, (2, 3, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        l0 = model(codes, torch.tensor([0, 0]))
        l1 = model(codes, torch.tensor([1, 1]))
        none = model(codes, None)
        null = model(codes, torch.full((2,), model.null_label))
    assert (l0 - l1).abs().max() > 1e-3
    assert (none - l0).abs().max() > 1e-3
    assert torch.equal(none, null)


def test_fresh_class_embeddings_are_zero() -> None:
    model = GatedPixelCNN(8, (3, 3), num_classes=4, hidden=8, num_layers=2, head_hidden=8)
    assert all(int(torch.count_nonzero(emb.weight)) == 0 for emb in model.class_embed)


def test_drop_labels() -> None:
    model = make_model(code_shape=(3, 4), num_classes=3)
    labels = torch.arange(300) % 3
    assert torch.equal(model.drop_labels(labels, 0.0), labels)
    assert bool((model.drop_labels(labels, 1.0) == model.null_label).all())
    a = model.drop_labels(labels, 0.5, generator=torch.Generator().manual_seed(0))
    b = model.drop_labels(labels, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    dropped = a == model.null_label
    assert 0.3 < dropped.float().mean() < 0.7
    assert torch.equal(a[~dropped], labels[~dropped])


def test_label_errors() -> None:
    uncond = make_model(code_shape=(3, 4))
    cond = make_model(code_shape=(3, 4), num_classes=3)
    codes = torch.zeros(2, 3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(codes, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        sample(uncond, 2, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        cond(codes, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        cond(codes, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        sample(cond, 2, labels=torch.tensor([0, 3]))  # the null class is not a user class
    with pytest.raises(ValueError, match="shape"):
        cond(codes, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="guidance=2.0 needs labels"):
        sample(cond, 2, guidance=2.0)


def test_code_errors() -> None:
    model = make_model(code_shape=(3, 4))
    with pytest.raises(ValueError, match=r"codes must be in \[0, 11\]"):
        model(torch.full((1, 3, 4), 12))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="kernel_size=4"):
        GatedPixelCNN(8, (3, 3), kernel_size=4)
    with pytest.raises(ValueError, match="code_shape"):
        GatedPixelCNN(8, (3, 0))


# ------------------------------------------------------------------------ filter_logits
def test_filter_top_k_keeps_exactly_k_largest() -> None:
    logits = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    logits[0, :6] = 3.0  # ties must not let more than k through
    for k in (1, 4, 20):
        out = filter_logits(logits, top_k=k)
        finite = torch.isfinite(out)
        assert bool((finite.sum(1) == k).all())
        kth = logits.topk(k, dim=1).values[:, -1:]
        assert bool((logits[finite.logical_not()].view(5, -1) <= kth).all())
        assert torch.equal(out[finite], logits[finite])


def test_filter_top_p_known_values() -> None:
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    kept = {p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()
            for p in (0.1, 0.45, 0.7, 0.85, 0.99, 1.0)}
    assert kept[0.1] == kept[0.45] == [False, True, False, False]
    assert kept[0.7] == [False, True, False, True]
    assert kept[0.85] == [False, True, True, True]
    assert kept[0.99] == kept[1.0] == [True, True, True, True]


def test_filter_top_p_is_smallest_prefix() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 30, generator=gen) * 2
    for p in (0.2, 0.5, 0.9):
        out = filter_logits(logits, top_p=p)
        probs = logits.softmax(1)
        keep = torch.isfinite(out)
        for row in range(50):
            kept = probs[row][keep[row]]
            # the kept codes are the most likely ones, their mass reaches p, and without the
            # least likely of them it does not
            dropped = probs[row][~keep[row]]
            assert dropped.numel() == 0 or dropped.max() <= kept.min()
            assert kept.sum() >= p - 1e-6
            assert kept.sum() - kept.min() < p


def test_filter_temperature_divides_and_combines() -> None:
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(filter_logits(logits, temperature=0.5), logits / 0.5)
    out = filter_logits(logits, temperature=2.0, top_k=3)
    keep = torch.isfinite(out)
    assert torch.allclose(out[keep], logits[keep] / 2.0)
    assert bool((keep.sum(1) == 3).all())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"top_k": 0}, r"top_k=0 .*\[1, 10\]"),
        ({"top_k": 11}, r"top_k=11 .*\[1, 10\]"),
        ({"top_k": 2.0}, "top_k=2.0"),
        ({"top_p": 0.0}, r"top_p=0.0 .*\(0, 1\]"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"top_p": float("nan")}, "top_p=nan"),
    ],
)
def test_sampling_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_sampling_args(10, **kwargs)
    model = make_model(code_shape=(2, 2), num_codes=10)
    with pytest.raises(ValueError, match=match):  # checked once per call, before any draw
        sample(model, 2, **kwargs)


@pytest.mark.parametrize("guidance", [-0.5, float("nan"), float("inf")])
def test_bad_guidance(guidance: float) -> None:
    with pytest.raises(ValueError, match="guidance="):
        validate_sampling_args(10, guidance=guidance)
    model = make_model(code_shape=(2, 2), num_classes=2)
    with pytest.raises(ValueError, match="guidance="):
        sample(model, 2, labels=torch.tensor([0, 1]), guidance=guidance)


def test_validate_accepts_good_values() -> None:
    validate_sampling_args(10, temperature=0.7, top_k=10, top_p=1.0, guidance=0.0)
    validate_sampling_args(10, temperature=2, top_k=1, top_p=0.01, guidance=3)


def test_dropout_acts_in_training_only_and_the_cached_sampler_matches_in_eval():
    from vqgen.stage2_prior.cached import incremental_logits

    torch.manual_seed(0)
    plain = GatedPixelCNN(16, (4, 4), num_classes=3, hidden=8, num_layers=3, head_hidden=8)
    nn.init.normal_(plain.head[-1].weight)  # non-zero logits, so dropout shows in them
    dropped = GatedPixelCNN(16, (4, 4), num_classes=3, hidden=8, num_layers=3, head_hidden=8,
                            dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    codes, labels = torch.randint(16, (2, 4, 4)), torch.tensor([0, 2])
    dropped.train()
    assert not torch.allclose(dropped(codes, labels), dropped(codes, labels))
    dropped.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(codes, labels), plain.eval()(codes, labels))
        torch.testing.assert_close(incremental_logits(dropped, codes, labels), dropped(codes, labels),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="dropout"):
        GatedPixelCNN(16, (4, 4), dropout=1.0)
