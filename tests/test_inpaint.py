"""``pipeline.edit.inpaint`` / ``pipeline.edit.masks`` and the ``inpaint`` / ``repair`` verbs (issue 13).

Properties on enumerable priors (2x2 grids, K=3, every grid listed): importance weights are
joint / proposal with the proposal's temperature, top-k and guidance; resampling moves a
masked code towards its exact conditional given known codes after it; surprisal is the
forward pass's per-position NLL. On the tiny trained pair: known codes never change, an
all-known mask returns the encoded codes, --paste keeps every pixel outside the mask,
same seed same bytes, and the bad inputs of the issue (exit 2, one line, nothing written).
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.test_cli_stage1 import assert_usage_error, run, tree
from vqgen.pipeline.defaults import EXAMPLES
from vqgen.pipeline.edit.candidates import draw_candidates, effective_sample_size, select_candidates
from vqgen.pipeline.edit.inpaint import inpaint, repair_mask, surprisal
from vqgen.pipeline.edit.masks import (
    box_mask,
    code_to_pixel_mask,
    feather_weights,
    load_mask,
    pixel_to_code_mask,
)
from vqgen.pipeline.generate import load_pair
from vqgen.stage1_vqvae.data import build_dataset
from vqgen.stage1_vqvae.runtime.grid import to_uint8
from vqgen.stage2_prior.lit import LitPrior
from vqgen.stage2_prior.sampling import filter_logits

K = 3
ALL_GRIDS = torch.tensor(list(itertools.product(range(K), repeat=4))).reshape(-1, 2, 2)  # (81, 2, 2)


def enumerable_prior(num_classes: int = 2, seed: int = 0) -> LitPrior:
    """A 2x2, K=3 prior with random (not uniform) conditionals."""
    torch.manual_seed(seed)
    lit = LitPrior(num_codes=K, code_shape=(2, 2), num_classes=num_classes, hidden=8,
                   num_layers=2, head_hidden=16)
    with torch.no_grad():
        for p in lit.parameters():
            p.normal_(0, 0.6)
    return lit.eval()


def naive_log_p(model, grids: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """log p(grid) (B,) float64 from one full forward per grid, position by position."""
    logp = model(grids, labels).double().log_softmax(1)  # (B, K, 2, 2)
    return logp.gather(1, grids[:, None]).squeeze(1).sum((1, 2))


def naive_log_q(model, grids, drawn, labels, temperature, top_k, guidance) -> torch.Tensor:
    """log q(masked codes) (B,): at every drawn position, in raster order, the full forward's
    guided logits, filtered, log-softmaxed at the code in the grid."""
    out = torch.zeros(grids.shape[0], dtype=torch.float64)
    null = torch.full_like(labels, 2)
    for i, j in itertools.product(range(2), range(2)):
        cond = model(grids, labels)[:, :, i, j]
        uncond = model(grids, null)[:, :, i, j]
        logits = filter_logits(uncond + guidance * (cond - uncond), temperature, top_k)
        lq = logits.double().log_softmax(1).gather(1, grids[:, i, j, None]).squeeze(1)
        out += torch.where(drawn[:, i, j], lq, torch.zeros_like(lq))
    return out


# ----------------------------------------------------------------- importance weights


@torch.no_grad()
def test_weights_are_joint_over_proposal_by_enumeration():
    lit = enumerable_prior()
    model = lit.model
    labels = torch.tensor([1])
    # the enumeration is a distribution: p sums to 1 over all 81 grids
    assert naive_log_p(model, ALL_GRIDS, labels.expand(81)).exp().sum().item() == \
        pytest.approx(1, abs=1e-6)
    # two inputs in one sampler call with different masks: (0, 1) and (1, 1) are known
    # after masked codes in the first, (0, 1) is the only masked code of the second
    known = torch.tensor([[[2, 1], [0, 2]], [[1, 0], [2, 2]]])
    mask = torch.tensor([[[True, False], [True, False]], [[False, True], [False, False]]])
    knobs = dict(temperature=0.7, top_k=2, guidance=2.0)
    gen = torch.Generator().manual_seed(0)
    cands = draw_candidates(lit, known, mask, 40, labels=labels.expand(2), generator=gen,
                            **knobs)
    for b in range(2):
        grids = cands.codes[b]
        assert (grids[:, ~mask[b]] == known[b][~mask[b]]).all()
        assert len({tuple(g.flatten().tolist()) for g in grids}) > 1
        lab = labels.expand(40)
        want_p = naive_log_p(model, grids, lab)
        want_q = naive_log_q(model, grids, mask[b].expand(40, 2, 2), lab, **knobs)
        torch.testing.assert_close(cands.log_p[b], want_p, atol=1e-5, rtol=0)
        torch.testing.assert_close(cands.log_q[b], want_q, atol=1e-5, rtol=0)
        torch.testing.assert_close(cands.log_weight[b], want_p - want_q, atol=1e-5, rtol=0)
    known, mask = known[:1], mask[:1]
    # q is the proposal's distribution over the 9 completions (top-k removes some): sums to 1
    comps = known.expand(9, 2, 2).clone()
    comps[:, 0, 0], comps[:, 1, 0] = torch.arange(9) // 3, torch.arange(9) % 3
    q_all = naive_log_q(model, comps, mask.expand(9, 2, 2), labels.expand(9), **knobs).exp()
    assert q_all.sum().item() == pytest.approx(1, abs=1e-6)


def mixture_log_p(model, grids: torch.Tensor, classes: int = 2) -> torch.Tensor:
    """log of the uniform class mixture (1/C) sum_y p(grid | y), (B,) float64."""
    per_class = torch.stack([naive_log_p(model, grids, torch.full((len(grids),), y))
                             for y in range(classes)])
    return torch.logsumexp(per_class, 0) - math.log(classes)


@torch.no_grad()
def test_class_mixture_weights_by_enumeration():
    """No class given to a class-conditional prior: each candidate is drawn under a class
    of its own, p is the mixture of the classes' p(z | y) and q the mixture of their
    (guided, tempered, top-k) proposals; the class posterior is p(y | z)."""
    lit = enumerable_prior()
    model = lit.model
    known = torch.tensor([[[2, 1], [0, 2]]])
    mask = torch.tensor([[[True, False], [True, False]]])
    knobs = dict(temperature=0.7, top_k=2, guidance=2.0)
    cands = draw_candidates(lit, known, mask, 40, generator=torch.Generator().manual_seed(0),
                            mixture=True, **knobs)
    grids = cands.codes[0]
    assert (grids[:, ~mask[0]] == known[0][~mask[0]]).all()
    assert len({tuple(g.flatten().tolist()) for g in grids}) > 2
    drawn = mask[0].expand(40, 2, 2)
    per_class_q = torch.stack([naive_log_q(model, grids, drawn, torch.full((40,), y), **knobs)
                               for y in range(2)])
    want_p = mixture_log_p(model, grids)
    torch.testing.assert_close(cands.log_p[0], want_p, atol=1e-5, rtol=0)
    # the first 20 candidates (uniform over classes) estimate p(known | y) by importance
    # sampling; the other 20 draw their classes from 0.1 uniform + 0.9 that posterior
    pilot_q = torch.logsumexp(per_class_q[:, :20], 0) - math.log(2)
    evidence = torch.stack([torch.logsumexp(naive_log_p(model, grids[:20], torch.full((20,), y))
                                            - pilot_q, 0) for y in range(2)])
    posterior = 0.1 / 2 + 0.9 * evidence.softmax(0)
    alpha = (20 / 2 + 20 * posterior) / 40
    torch.testing.assert_close(cands.class_share[0], alpha, atol=1e-6, rtol=0)
    torch.testing.assert_close(cands.log_q[0],
                               torch.logsumexp(per_class_q + alpha.log()[:, None], 0),
                               atol=1e-5, rtol=0)
    post = torch.stack([naive_log_p(model, grids, torch.full((40,), y)) for y in range(2)])
    torch.testing.assert_close(cands.class_log_post[0], (post - math.log(2) - want_p).T,
                               atol=1e-5, rtol=0)


def train_class_prior(steps: int = 300) -> LitPrior:
    """A 2x2, K=3 prior with 2 classes: class 0 draws every code iid from (0.8, 0.1, 0.1),
    class 1 from (0.1, 0.1, 0.8). A known code of 2 says "class 1", so it moves the masked
    codes before it towards 2."""
    torch.manual_seed(0)
    lit = LitPrior(num_codes=K, code_shape=(2, 2), num_classes=2, hidden=16, num_layers=2,
                   head_hidden=32)
    opt = torch.optim.Adam(lit.parameters(), lr=1e-2)
    table = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    for _ in range(steps):
        y = torch.randint(0, 2, (256,))
        z = torch.multinomial(table[y], 4, replacement=True).reshape(256, 2, 2)
        loss = F.cross_entropy(lit.model(z, y), z)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lit.eval()


def test_class_mixture_resampling_reaches_the_mixture_conditional():
    lit = train_class_prior()
    known = torch.tensor([[0, 2], [2, 2]])  # mask z00; three 2s say "class 1"
    grids = known.expand(K, 2, 2).clone()
    grids[:, 0, 0] = torch.arange(K)
    with torch.no_grad():
        exact = mixture_log_p(lit.model, grids).softmax(0).numpy()  # p_mix(z00 | known)
    n = 400
    codes = known.expand(n, 2, 2).clone()
    mask = torch.zeros(n, 2, 2, dtype=torch.bool)
    mask[:, 0, 0] = True
    gen = torch.Generator().manual_seed(0)
    cands = draw_candidates(lit, codes, mask, 16, generator=gen, mixture=True)
    kept = select_candidates(cands, 1, "importance", gen)[:, 0]
    z00 = cands.codes[torch.arange(n), kept, 0, 0]
    resampled = np.bincount(z00.numpy(), minlength=K)
    proposal = np.bincount(cands.codes[:, :, 0, 0].flatten().numpy(), minlength=K) / 16
    pilot = np.bincount(cands.codes[:, :8, 0, 0].flatten().numpy(), minlength=K) / 8
    # a real shift: the uniform pilot half is far off; the posterior-led half moves closer
    assert exact[2] > 0.6 and pilot[2] / n < 0.5 < proposal[2] / n < 0.7, (exact, proposal)
    _, p_res = chi_square_df2(resampled, exact)
    _, p_prop = chi_square_df2(proposal, exact)
    assert p_prop < 1e-6, f"the proposal alone already matches? {proposal} vs {exact}"
    assert p_res > 1e-3, f"resampled {resampled} is not the exact conditional {exact * n}"


def test_effective_sample_size():
    lw = torch.log(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0, 0]]))
    torch.testing.assert_close(effective_sample_size(lw),
                               torch.tensor([4.0, 1.0, 1.6], dtype=torch.float64))


def train_copy_prior(steps: int = 250) -> LitPrior:
    """A 2x2, K=3 unconditional prior trained on grids whose last code copies the first
    (with prob 0.94), z00 ~ (0.5, 0.3, 0.2), the middle two uniform."""
    torch.manual_seed(0)
    lit = LitPrior(num_codes=K, code_shape=(2, 2), num_classes=0, hidden=16, num_layers=2,
                   head_hidden=32)
    opt = torch.optim.Adam(lit.parameters(), lr=1e-2)
    for _ in range(steps):
        z = torch.randint(0, K, (256, 2, 2))
        z[:, 0, 0] = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), 256, replacement=True)
        copy = torch.rand(256) < 0.94
        z[:, 1, 1] = torch.where(copy, z[:, 0, 0], z[:, 1, 1])
        loss = F.cross_entropy(lit.model(z), z)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lit.eval()


def chi_square_df2(counts: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of a goodness-of-fit test with 3 cells (df 2: sf = exp(-x/2))."""
    expected = probs * counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    return stat, math.exp(-stat / 2)


def test_resampling_moves_a_masked_code_to_its_exact_conditional():
    lit = train_copy_prior()
    known = torch.tensor([[0, 1], [1, 2]])  # mask z00; z11 = 2 says z00 is most likely 2
    grids = known.expand(K, 2, 2).clone()
    grids[:, 0, 0] = torch.arange(K)
    with torch.no_grad():
        exact = naive_log_p(lit.model, grids, None).softmax(0).numpy()  # p(z00 | known codes)
    n = 400
    codes = known.expand(n, 2, 2).clone()
    mask = torch.zeros(n, 2, 2, dtype=torch.bool)
    mask[:, 0, 0] = True
    gen = torch.Generator().manual_seed(0)
    cands = draw_candidates(lit, codes, mask, 64, generator=gen)
    kept = select_candidates(cands, 1, "importance", gen)[:, 0]
    z00 = cands.codes[torch.arange(n), kept, 0, 0]
    importance = np.bincount(z00.numpy(), minlength=K)
    proposal = np.bincount(cands.codes[:, 0, 0, 0].numpy(), minlength=K)
    assert exact[2] > 0.6 and proposal[2] / n < 0.35, (exact, proposal)  # a real shift
    _, p_imp = chi_square_df2(importance, exact)
    _, p_prop = chi_square_df2(proposal, exact)
    assert p_prop < 1e-6, f"the proposal alone already matches? {proposal} vs {exact}"
    assert p_imp > 1e-3, f"resampled {importance} is not the exact conditional {exact * n}"


@torch.no_grad()
def test_best_keeps_the_highest_whole_grid_probability():
    lit = enumerable_prior(num_classes=0)
    codes = torch.tensor([[[1, 0], [2, 1]]])
    mask = torch.tensor([[[False, True], [True, True]]])
    cands = draw_candidates(lit, codes, mask, 30, generator=torch.Generator().manual_seed(1))
    best = select_candidates(cands, 3, "best")
    order = cands.log_p[0].sort(descending=True).values
    torch.testing.assert_close(cands.log_p[0, best[0]], order[:3])
    assert (select_candidates(cands, 3, "proposal") == torch.arange(3)).all()
    # importance: completion k is drawn from the k-th group of 10 candidates (independent)
    gen = torch.Generator().manual_seed(0)
    picks = torch.cat([select_candidates(cands, 3, "importance", gen) for _ in range(50)])
    assert ((picks // 10) == torch.arange(3)).all()
    assert len(set(picks[:, 0].tolist())) > 1  # a draw, not an argmax


# ------------------------------------------------------------------------- surprisal


@torch.no_grad()
def test_surprisal_is_the_forward_nll_per_position_and_a_code_length():
    lit = enumerable_prior()
    labels = torch.ones(81, dtype=torch.long)
    bits = surprisal(lit, ALL_GRIDS, labels)
    assert bits.shape == (81, 2, 2)
    logp = lit.model(ALL_GRIDS, labels).double().log_softmax(1)
    want = -logp.gather(1, ALL_GRIDS[:, None]).squeeze(1) / math.log(2)
    torch.testing.assert_close(bits, want, atol=1e-5, rtol=0)
    # whole-grid code lengths of a distribution: sum over every grid of 2^-bits is 1
    assert (2.0 ** -bits.sum((1, 2))).sum().item() == pytest.approx(1, abs=1e-6)


@torch.no_grad()
def test_class_mixture_surprisal_is_the_mixtures_conditionals():
    """Without a class, surprisal under the class mixture: every position's conditional
    p_mix(z_i | z_<i) (prefix marginals by enumeration) and the grid's code length."""
    lit = enumerable_prior()
    bits = surprisal(lit, ALL_GRIDS, class_mixture=True)
    log_p = mixture_log_p(lit.model, ALL_GRIDS)  # (81,)
    torch.testing.assert_close(bits.sum((1, 2)), -log_p / math.log(2), atol=1e-5, rtol=0)
    flat = ALL_GRIDS.reshape(81, 4)
    for t in range(4):
        def prefix_log_p(length: int) -> torch.Tensor:
            """log p_mix(z_<length) of each grid: sum over grids sharing that prefix."""
            same = (flat[:, None, :length] == flat[None, :, :length]).all(2)  # (81, 81)
            return torch.logsumexp(log_p[None].expand(81, 81).masked_fill(~same, -math.inf), 1)
        want = -(prefix_log_p(t + 1) - prefix_log_p(t)) / math.log(2)
        torch.testing.assert_close(bits.reshape(81, 4)[:, t], want, atol=1e-5, rtol=0)
    # the null class is another distribution: the mixture is not what it computes
    assert not torch.allclose(bits, surprisal(lit, ALL_GRIDS), atol=1e-3)


def test_repair_mask_threshold_and_fraction():
    bits = torch.tensor([[[1.0, 9.0], [3.0, 12.0]], [[0.5, 0.1, ], [0.2, 0.3]]])
    assert repair_mask(bits, threshold=8).tolist() == [[[False, True], [False, True]],
                                                       [[False, False], [False, False]]]
    m = repair_mask(bits, fraction=0.25)
    assert m.tolist() == [[[False, False], [False, True]], [[True, False], [False, False]]]


# ---------------------------------------------------------------------------- masks


def test_pixel_to_code_mask_any_pixel_of_a_cell_and_grow():
    pm = torch.zeros(28, 28, dtype=torch.bool)
    pm[13, 27] = True  # one pixel: cell (3, 6) of a 7x7 grid (4x4 cells)
    cm = pixel_to_code_mask(pm, (7, 7))
    assert cm.nonzero().tolist() == [[3, 6]]
    grown = pixel_to_code_mask(pm, (7, 7), grow=1)
    assert sorted(map(tuple, grown.nonzero().tolist())) == [
        (a, b) for a in (2, 3, 4) for b in (5, 6)]
    assert (code_to_pixel_mask(cm, (28, 28)) == box_mask((24, 12, 28, 16), (28, 28))).all()


def test_feather_is_zero_outside_and_ramps_inside():
    pm = box_mask((4, 4, 14, 14), (20, 20))
    wt = feather_weights(pm, 2)
    assert (wt[~pm] == 0).all()
    assert wt[4, 9].item() == pytest.approx(1 / 3) and wt[5, 9].item() == pytest.approx(2 / 3)
    assert wt[6, 9].item() == 1 and (feather_weights(pm, 0) == pm.float()).all()


def test_mask_image_any_size_nearest(tmp_path: Path):
    arr = np.zeros((56, 56), np.uint8)
    arr[28:, :] = 200  # bottom half, at twice the size
    Image.fromarray(arr).save(tmp_path / "m.png")
    assert (load_mask(tmp_path / "m.png", (28, 28)) == box_mask((0, 14, 28, 28), (28, 28))).all()


# ---------------------------------------------------------- the tiny trained pair


@pytest.fixture(scope="module")
def pair(tiny_prior_run: Path):
    return load_pair(tiny_prior_run / "last.ckpt")


@pytest.fixture(scope="module")
def val_images() -> tuple[torch.Tensor, torch.Tensor]:
    ds = build_dataset("mnist5k", "val")
    items = [ds[i] for i in range(3)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def test_known_codes_never_change_and_all_known_returns_the_encoding(pair, val_images):
    prior, vqvae = pair
    images, _ = val_images
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(3, 7, 7, generator=gen) < 0.4
    res = inpaint(prior, vqvae, images, mask, num=4, num_candidates=16, seed=1)
    torch.testing.assert_close(res.input_codes, vqvae.model.encode(images))
    keep = ~mask[:, None].expand_as(res.codes)
    assert (res.codes[keep] == res.input_codes[:, None].expand_as(res.codes)[keep]).all()
    assert (res.codes[~keep] != res.input_codes[:, None].expand_as(res.codes)[~keep]).any()
    assert res.codes.shape == (3, 4, 7, 7) and res.images.shape == (3, 4, 1, 28, 28)
    none = inpaint(prior, vqvae, images, torch.zeros(7, 7, dtype=torch.bool), num=2,
                   num_candidates=4)
    assert (none.codes == none.input_codes[:, None]).all()
    torch.testing.assert_close(none.ess, torch.full((3,), 4.0, dtype=torch.float64))
    torch.testing.assert_close(none.log_prob, none.input_log_prob[:, None].expand(3, 2))


# ------------------------------------------------------------------------------ CLI


def inpaint_argv(prior: Path, out: Path, *extra) -> list[str]:
    return ["inpaint", "--prior", str(prior), "--device", "cpu", "--out", str(out), *extra]


def data_args(index: str = "0:3") -> list[str]:
    return ["--data", "mnist5k", "--split", "val", "--index", index]


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_inpaint_writes_the_issue_layout(tiny_prior_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "fixes"
    rc, _, err = run(capsys, *inpaint_argv(tiny_prior_run / "last.ckpt", out, *data_args(),
                                           "--box", "0,14,28,28", "--num", "2"))
    assert rc == 0, err
    names = {"grid.png", "codes.npy", "labels.npy", "inpaint.json"}
    names |= {f"{i:06d}_{k}.png" for i in range(3) for k in range(2)}
    assert set(tree(out)) == names
    codes = np.load(out / "codes.npy")
    assert codes.dtype == np.uint16 and codes.shape == (3, 2, 7, 7)
    assert np.load(out / "labels.npy").tolist() == [int(build_dataset("mnist5k", "val")[i][1])
                                                    for i in range(3)]
    doc = json.loads((out / "inpaint.json").read_text())
    assert doc["candidates"] == 16 and doc["box"] == [0, 14, 28, 28]
    rows = [[i, j] for i in range(3, 7) for j in range(7)]  # pixel row 14 is code row 3
    assert [e["mask_codes"] for e in doc["inputs"]] == [rows] * 3
    lp = [c["log_prob"] for c in doc["inputs"][0]["completions"]]
    prior, _ = load_pair(tiny_prior_run / "last.ckpt")
    # no --class: the class is inferred (mixture), and each completion names its class
    assert doc["class_mixture"] is True
    z = torch.from_numpy(codes[0].astype(np.int64))
    want = -surprisal(prior, z, class_mixture=True).sum((1, 2)) * math.log(2)
    np.testing.assert_allclose(lp, want.numpy(), atol=1e-3)
    assert 1 <= doc["inputs"][0]["ess"] <= 16
    for c in doc["inputs"][0]["completions"]:
        assert 0 <= c["inferred_class"] < 10 and 0.1 <= c["class_prob"] <= 1
    out2 = tmp_path / "null"
    rc, _, err = run(capsys, *inpaint_argv(tiny_prior_run / "last.ckpt", out2, *data_args(),
                                           "--box", "0,14,28,28", "--num", "2", "--null-class"))
    assert rc == 0, err
    doc = json.loads((out2 / "inpaint.json").read_text())
    assert doc["class_mixture"] is False
    assert "inferred_class" not in doc["inputs"][0]["completions"][0]
    z = torch.from_numpy(np.load(out2 / "codes.npy")[0].astype(np.int64))
    want = -surprisal(prior, z).sum((1, 2)) * math.log(2)
    np.testing.assert_allclose([c["log_prob"] for c in doc["inputs"][0]["completions"]],
                               want.numpy(), atol=1e-3)


def test_paste_keeps_pixels_outside_the_mask(tiny_prior_run: Path, tmp_path: Path, capsys):
    digit = build_dataset("mnist5k", "val")[0][0]
    Image.fromarray(to_uint8(digit)[..., 0]).save(tmp_path / "digit.png")
    mask = np.zeros((28, 28), np.uint8)
    mask[5:17, 9:22] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    src = np.asarray(Image.open(tmp_path / "digit.png"))
    outside = mask == 0
    for paste in ("--paste", "--no-paste"):
        out = tmp_path / paste
        rc, _, err = run(capsys, *inpaint_argv(tiny_prior_run / "last.ckpt", out, "--image",
                                               tmp_path / "digit.png", "--mask",
                                               tmp_path / "mask.png", "--num", "3", paste))
        assert rc == 0, err
        for k in range(3):
            got = np.asarray(Image.open(out / f"000000_{k}.png"))
            same = (got[outside] == src[outside]).all()
            assert same if paste == "--paste" else not same
            if paste == "--paste":
                assert (got[~outside] != src[~outside]).any()


def test_same_seed_same_bytes(tiny_prior_run: Path, tmp_path: Path, capsys):
    argv = [*data_args("0:2"), "--box", "7,7,21,21", "--num", "2", "--class", "3",
            "--guidance", "2", "--top-k", "10", "--temperature", "0.8"]
    got = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        rc, _, err = run(capsys, *inpaint_argv(tiny_prior_run / "last.ckpt", tmp_path / name,
                                               *argv, "--seed", seed))
        assert rc == 0, err
        got.append(files(tmp_path / name))
    assert got[0] == got[1]
    assert got[0]["codes.npy"] != got[2]["codes.npy"]


def test_best_and_full_mask_note(tiny_prior_run: Path, tmp_path: Path, capsys):
    rc, _, err = run(capsys, *inpaint_argv(tiny_prior_run / "last.ckpt", tmp_path / "o",
                                           *data_args("1"), "--box", "0,0,28,28", "--best",
                                           "--num", "3"))
    assert rc == 0, err
    assert "note: the mask covers every code" in err
    doc = json.loads((tmp_path / "o" / "inpaint.json").read_text())
    lps = [c["log_prob"] for c in doc["inputs"][0]["completions"]]
    assert doc["select"] == "best" and lps == sorted(lps, reverse=True)


def test_repair_writes_surprisal_and_keeps_the_rest(tiny_prior_run: Path, tmp_path: Path,
                                                    capsys):
    out = tmp_path / "rep"
    rc, _, err = run(capsys, "repair", "--prior", tiny_prior_run / "last.ckpt", "--device",
                     "cpu", *data_args("0:4"), "--fraction", "0.2", "--out", out)
    assert rc == 0, err
    assert {"surprisal.png", "surprisal.npy", "grid.png", "codes.npy", "inpaint.json",
            "000003_0.png"} <= set(tree(out))
    prior, vqvae = load_pair(tiny_prior_run / "last.ckpt")
    images = torch.stack([build_dataset("mnist5k", "val")[i][0] for i in range(4)])
    enc = vqvae.model.encode(images)
    bits = np.load(out / "surprisal.npy")
    assert bits.shape == (4, 7, 7) and bits.dtype == np.float32
    np.testing.assert_allclose(bits, surprisal(prior, enc, class_mixture=True).numpy(), atol=1e-4)
    doc = json.loads((out / "inpaint.json").read_text())
    codes = np.load(out / "codes.npy").astype(np.int64)
    for i, entry in enumerate(doc["inputs"]):
        flagged = np.zeros((7, 7), bool)
        flagged[tuple(np.array(entry["mask_codes"]).T)] = True
        assert flagged.sum() == round(0.2 * 49)
        # the flagged positions are the most surprising ones, the rest is kept
        assert bits[i][flagged].min() >= bits[i][~flagged].max()
        assert (codes[i, 0][~flagged] == enc[i].numpy()[~flagged]).all()
        assert entry["bits_before"] == pytest.approx(float(bits[i].sum()), abs=1e-2)


@pytest.mark.parametrize("verb", ["inpaint", "repair"])
def test_readme_example_runs_on_tiny_fixtures(verb, tiny_prior_run: Path, tmp_path: Path,
                                              capsys, monkeypatch):
    argv = shlex.split(EXAMPLES[verb])[1:]
    argv[argv.index("--prior") + 1] = str(tiny_prior_run / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    out = tmp_path / argv[argv.index("--out") + 1]
    assert (out / "grid.png").is_file() and (out / "inpaint.json").is_file()


# ------------------------------------------------------------------------ bad input




def _not_an_image(tmp_path: Path) -> Path:
    (tmp_path / "mask.png").write_text("not a png")
    return tmp_path / "mask.png"


BAD = {
    "empty mask": (lambda t: ["--mask", _blank(t)], ["masks nothing"]),
    "mask not an image": (lambda t: ["--mask", _not_an_image(t)], ["is not an image"]),
    "box outside": (lambda t: ["--box", "0,14,29,28"], ["outside the 28x28"]),
    "box x0 >= x1": (lambda t: ["--box", "14,0,14,28"], ["x0 < x1"]),
    "box malformed": (lambda t: ["--box", "1,2,3"], ["four integers"]),
    "no mask": (lambda t: [], ["no mask"]),
    "index out of range": (lambda t: ["--index", "498:502"], ["out of range", "500 items"]),
    "candidates < num": (lambda t: ["--box", "0,0,9,9", "--candidates", "2", "--num", "4"],
                         [">= --num"]),
    # without --class, guidance sharpens each class's proposal of the class mixture; with
    # the null class there is no class to guide towards
    "guidance with the null class": (lambda t: ["--box", "0,0,9,9", "--guidance", "2",
                                                "--null-class"], ["needs a class"]),
    # sample's seed check: a negative seed was accepted, 2**63 overflowed in a traceback
    "seed -1": (lambda t: ["--box", "0,0,9,9", "--seed", "-1"], ["--seed", "must be in [0,"]),
    "seed 2**63": (lambda t: ["--box", "0,0,9,9", "--seed", str(2**63)], ["--seed", "2**32 - 1"]),
}


def _blank(tmp_path: Path) -> Path:
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "blank.png")
    return tmp_path / "blank.png"


@pytest.mark.parametrize("case", sorted(BAD))
def test_inpaint_bad_input(case, tiny_prior_run: Path, tmp_path: Path, capsys):
    extra, needles = BAD[case]
    argv = inpaint_argv(tiny_prior_run / "last.ckpt", tmp_path / "out", *data_args("0:2"),
                        *extra(tmp_path))
    if case == "index out of range":
        argv += ["--box", "0,0,9,9"]
    rc, _, err = run(capsys, *argv)
    assert_usage_error(rc, err, "inpaint", *needles)
    assert not (tmp_path / "out").exists()


def test_image_that_cannot_be_read(tiny_prior_run: Path, tmp_path: Path, capsys):
    (tmp_path / "x.png").write_bytes(b"\x89PNG broken")
    rc, _, err = run(capsys, *inpaint_argv(tiny_prior_run / "last.ckpt", tmp_path / "out",
                                           "--image", tmp_path / "x.png", "--box", "0,0,9,9"))
    assert_usage_error(rc, err, "inpaint", "cannot read image")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", ["inpaint", "repair"])
def test_class_on_an_unconditional_prior(verb, tiny_uncond_prior: Path, tmp_path: Path, capsys):
    rc, _, err = run(capsys, verb, "--prior", tiny_uncond_prior, "--device", "cpu",
                     *data_args("0:2"), "--box", "0,0,9,9", "--class", "3", "--out",
                     tmp_path / "out") if verb == "inpaint" else \
        run(capsys, verb, "--prior", tiny_uncond_prior, "--device", "cpu", *data_args("0:2"),
            "--class", "3", "--out", tmp_path / "out")
    assert_usage_error(rc, err, verb, "unconditional")
    assert not (tmp_path / "out").exists()


def test_mismatched_pair(tiny_prior_run: Path, tmp_path: Path, capsys):
    from tests.test_cli_stage2 import save_vqvae_checkpoint

    other = save_vqvae_checkpoint(tmp_path / "k16.ckpt", num_codes=16)
    rc, _, err = run(capsys, *inpaint_argv(tiny_prior_run / "last.ckpt", tmp_path / "out",
                                           "--vqvae", other, *data_args("0:2"),
                                           "--box", "0,0,9,9"))
    assert_usage_error(rc, err, "inpaint", "num_codes=32", "num_codes=16")
    assert not (tmp_path / "out").exists()


def test_repair_bad_fraction_and_existing_out(tiny_prior_run: Path, tmp_path: Path, capsys):
    base = ["repair", "--prior", tiny_prior_run / "last.ckpt", "--device", "cpu",
            *data_args("0:2")]
    rc, _, err = run(capsys, *base, "--fraction", "1.5", "--out", tmp_path / "out")
    assert_usage_error(rc, err, "repair", "--fraction 1.5")
    assert not (tmp_path / "out").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    rc, _, err = run(capsys, *base, "--out", tmp_path / "busy")
    assert_usage_error(rc, err, "repair", "--overwrite")
    # the one output policy: --overwrite writes beside files the verb did not write
    rc, _, err = run(capsys, *base, "--out", tmp_path / "busy", "--overwrite")
    assert rc == 0, err
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"
    assert "mine.txt" not in json.loads((tmp_path / "busy" / "inpaint.json").read_text())["files"]
    (tmp_path / "busy2").mkdir()
    (tmp_path / "busy2" / "grid.png").write_text("the user's own")  # a name repair writes
    rc, _, err = run(capsys, *base, "--out", tmp_path / "busy2", "--overwrite")
    assert_usage_error(rc, err, "repair", "grid.png", "did not write")
    assert (tmp_path / "busy2" / "grid.png").read_text() == "the user's own"
    # an earlier result is replaced with --overwrite
    rc, _, err = run(capsys, *base, "--out", tmp_path / "res")
    assert rc == 0, err
    rc, _, err = run(capsys, *base, "--out", tmp_path / "res", "--threshold", "0", "--overwrite")
    assert rc == 0, err
    assert json.loads((tmp_path / "res" / "inpaint.json").read_text())["threshold"] == 0
