"""Both samplers draw from the right distribution, not merely the same one.

``cached == naive`` cannot catch a bug the two share (the guidance formula, the filters,
the draw). Here the model is small enough to enumerate every grid (K=4 codes on a 2x2 grid:
256 grids): the exact probability of each grid under classifier-free guidance, temperature,
top-k and top-p is computed from the spec in float64 numpy, independently of
``stage2_prior.sampling``, and 20,000 drawn grids are compared with it by a chi-square test.
A draw of a grid the spec gives probability 0 (a filter that keeps too much) fails outright.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.test_cached_sampler import make_model
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import sample

K, SHAPE, CLASSES = 4, (2, 2), 2
DRAWS = 20_000
MIN_P_VALUE = 1e-3  # fixed seeds: the verdict is deterministic, the threshold is not tight


def all_grids() -> torch.Tensor:
    """Every (2, 2) grid over K codes, int64 (K**4, 2, 2); row r is r written in base K."""
    cells = SHAPE[0] * SHAPE[1]
    rows = list(itertools.product(range(K), repeat=cells))
    return torch.tensor(rows, dtype=torch.long).view(-1, *SHAPE)


def spec_filter(logits: np.ndarray, temperature: float, top_k: int | None,
                top_p: float | None) -> np.ndarray:
    """The documented filter, written out plainly: logits (N, K) float64 -> probs (N, K).
    Divide by the temperature; keep the top_k largest; of those keep the fewest most likely
    codes whose probability (renormalised after top-k) sums to >= top_p."""
    z = logits / temperature
    keep = np.ones_like(z, dtype=bool)
    order = np.argsort(-z, axis=1)
    if top_k is not None:
        for row, idx in enumerate(order):
            keep[row, idx[top_k:]] = False
    if top_p is not None:
        for row, idx in enumerate(order):
            kept = [c for c in idx if keep[row, c]]
            p = np.exp(z[row, kept] - z[row, kept].max())
            p /= p.sum()
            mass_before = np.cumsum(p) - p
            for c, before in zip(kept, mass_before, strict=True):
                if before >= top_p:
                    keep[row, c] = False
    z = np.where(keep, z, -np.inf)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def exact_distribution(model: GatedPixelCNN, label: int | None, guidance: float,
                       temperature: float, top_k: int | None, top_p: float | None) -> np.ndarray:
    """p(grid) for every grid of :func:`all_grids` (float64, sums to 1).

    Position (i, j) of grid G is drawn from the guided, filtered logits the model gives G
    there (they depend only on G's earlier codes), so p(G) is the product over positions."""
    grids = all_grids()
    n = grids.shape[0]
    null = torch.full((n,), model.null_label)
    with torch.no_grad():
        uncond = model(grids, null).double().numpy()
        cond = uncond if label is None else model(grids, torch.full((n,), label)).double().numpy()
    guided = uncond + guidance * (cond - uncond)  # classifier-free guidance (Ho & Salimans)
    p = np.ones(n)
    for i, j in itertools.product(range(SHAPE[0]), range(SHAPE[1])):
        probs = spec_filter(guided[:, :, i, j], temperature, top_k, top_p)
        p *= probs[np.arange(n), grids[:, i, j].numpy()]
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    return p


def chi_square_p_value(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's test; bins expecting fewer than 5 draws are pooled into one."""
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = len(exp) - 1
    # upper tail of chi2(df) = Q(df / 2, stat / 2), the regularised upper incomplete gamma
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


KNOBS = {
    "plain": dict(label=1),
    "guided, tempered": dict(label=1, guidance=2.5, temperature=0.8),
    "guidance 0 (unconditional model)": dict(label=0, guidance=0.0),
    "top-k": dict(label=0, temperature=1.3, top_k=2),
    "guided, top-k and top-p": dict(label=1, guidance=2.0, temperature=0.9, top_k=3, top_p=0.8),
    "null class, top-p": dict(label=None, top_p=0.7),
}


@pytest.mark.parametrize("sampler", ["cached", "naive"])
@pytest.mark.parametrize("case", list(KNOBS))
def test_drawn_grids_follow_the_exact_distribution(case: str, sampler: str):
    knobs = {"guidance": 1.0, "temperature": 1.0, "top_k": None, "top_p": None, **KNOBS[case]}
    label = knobs.pop("label")
    model = make_model(SHAPE, num_classes=CLASSES, num_layers=2, num_codes=K, hidden=8)
    want = exact_distribution(model, label, **knobs)

    labels = None if label is None else torch.full((DRAWS,), label)
    g = torch.Generator().manual_seed(1234)
    codes = sample(model, DRAWS, labels=labels, generator=g, sampler=sampler, **knobs)
    index = (codes.view(DRAWS, -1) * K ** torch.arange(3, -1, -1)).sum(1)  # base-K, as all_grids
    observed = np.bincount(index.numpy(), minlength=K ** 4).astype(np.float64)

    impossible = observed[want == 0].sum()
    assert impossible == 0, f"{int(impossible)} draws of grids the filters exclude"
    assert (want > 0).sum() >= 16  # a real distribution, not a near-deterministic one
    p = chi_square_p_value(observed, DRAWS * want)
    assert p > MIN_P_VALUE, f"{case} ({sampler}): chi-square p = {p:.2e}"
