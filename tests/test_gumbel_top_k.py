"""gumbel_top_k: exact sampling without replacement, flat and by blocks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import discograd as dg
from discograd.functional import _block_logsumexp, _top_k_rows

from conftest import chi_square_pvalue

NEG = -math.inf


def sequential_law(logits: torch.Tensor, k: int) -> dict[tuple[int, ...], float]:
    """P(ordered k-tuple) for k draws without replacement, each ∝ p among the rest."""
    p = torch.softmax(logits.double(), -1).numpy()
    support = [i for i in range(len(p)) if p[i] > 0]
    law = {}
    for tup in itertools.permutations(support, k):
        prob, left = 1.0, 1.0
        for i in tup:
            prob *= p[i] / left
            left -= p[i]
        law[tup] = prob
    return law


def tuple_counts(indices: torch.Tensor, law: dict) -> tuple[np.ndarray, np.ndarray]:
    keys = list(law)
    where = {key: n for n, key in enumerate(keys)}
    counts = np.zeros(len(keys))
    for row, c in zip(*np.unique(indices.numpy(), axis=0, return_counts=True), strict=True):
        counts[where[tuple(int(v) for v in row)]] += c  # KeyError: an impossible tuple
    return counts, np.array([law[key] for key in keys])


@pytest.mark.parametrize(
    "logits, k, block",
    [
        # flat path, a masked category
        ([0.3, -1.0, NEG, 1.2, 0.0, -0.4], 3, 0),
        # blocks {0,3} {1,4} {2,5} + tail {6}; block {1,4} entirely masked
        ([0.5, NEG, -0.7, 1.0, NEG, 0.2, -1.5], 3, 2),
        # strided blocks of 3 and a tail of 1, skewed logits
        ([2.0, -1.0, 0.0, 0.7, -2.5, 1.1, -0.3], 2, 3),
    ],
)
def test_ordered_tuples_chi_square_against_the_sequential_law(logits, k, block):
    x = torch.tensor(logits)
    n = 60_000
    values, indices = _top_k_rows(x.expand(n, -1), k, torch.Generator().manual_seed(3), block)
    law = sequential_law(x, k)
    counts, probs = tuple_counts(indices, law)
    p = chi_square_pvalue(counts, probs)
    print(f"block={block} k={k}: {len(law)} ordered tuples, chi-square p={p:.3f}")
    assert p > 1e-3
    assert (values[:, 1:] <= values[:, :-1]).all() and torch.isfinite(values).all()


def test_public_block_path_marginals_and_the_top_value():
    """C = 300 takes the block path: first and second draws, and max = Gumbel(logsumexp)."""
    gen = torch.Generator().manual_seed(5)
    C = 300
    x = torch.randn(C, generator=gen) * 1.5
    x[::7] = NEG
    n = 40_000
    values, indices = dg.gumbel_top_k(x.expand(n, -1), 2, generator=gen)
    p = torch.softmax(x.double(), -1)
    first = np.bincount(indices[:, 0].numpy(), minlength=C)
    second = np.bincount(indices[:, 1].numpy(), minlength=C)
    # P(second = j) = sum_{i != j} p_i p_j / (1 - p_i)
    w = (p / (1 - p)).sum()
    p2 = p * (w - p / (1 - p))
    p_first, p_second = chi_square_pvalue(first, p.numpy()), chi_square_pvalue(second, p2.numpy())
    top = values[:, 0].double().numpy() - float(torch.logsumexp(x.double(), -1))
    p_ks = stats.kstest(top, stats.gumbel_r.cdf).pvalue
    print(f"C=300: first-draw p={p_first:.3f}, second-draw p={p_second:.3f}, max KS p={p_ks:.3f}")
    assert min(p_first, p_second, p_ks) > 1e-3


def test_all_unmasked_drawn_across_a_huge_range_flat_and_blocked():
    for C in (20, 300):
        x = torch.full((4, C), NEG)
        live = torch.arange(10) * (C // 10) + 1
        x[:, live] = -torch.linspace(0, 500, 10)  # 500 nats apart: a row-wide shift underflows
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            for gen_seed in range(3):
                _, idx = dg.gumbel_top_k(
                    x.to(dtype), 10, generator=torch.Generator().manual_seed(gen_seed)
                )
                assert (idx.sort(-1).values == live).all(), (C, dtype)


def test_shapes_dims_dtypes_and_generator():
    x = torch.randn(3, 7, 5, dtype=torch.float16)
    v, i = dg.gumbel_top_k(x, 4, dim=1, generator=torch.Generator().manual_seed(0))
    assert v.shape == i.shape == (3, 4, 5) and v.dtype == torch.float32 and i.dtype == torch.int64
    assert (i.sort(1).values.diff(dim=1) > 0).all()  # distinct categories
    big = torch.randn(5, 400, dtype=torch.bfloat16)
    for xx in (x.movedim(1, -1), big):
        a = dg.gumbel_top_k(xx, 3, generator=torch.Generator().manual_seed(9))
        b = dg.gumbel_top_k(xx, 3, generator=torch.Generator().manual_seed(9))
        assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert not dg.gumbel_top_k(torch.randn(4, requires_grad=True), 2).values.requires_grad
    # the block path along a strided dimension
    tall = torch.randn(400, 3)
    tall[::3, 1] = NEG
    v, i = dg.gumbel_top_k(tall, 6, dim=0, generator=torch.Generator().manual_seed(1))
    assert i.shape == (6, 3) and (i[:, 1] % 3 != 0).all()
    assert (i.sort(0).values.diff(dim=0) > 0).all() and (v.diff(dim=0) <= 0).all()


def test_bad_k():
    x = torch.tensor([[0.0, 1.0, NEG, 2.0]])
    with pytest.raises(ValueError, match="k=0"):
        dg.gumbel_top_k(x, 0)
    with pytest.raises(ValueError, match="k=5"):
        dg.gumbel_top_k(x, 5)
    with pytest.raises(ValueError, match=r"unmasked.*k=4"):
        dg.gumbel_top_k(x, 4)
    with pytest.raises(TypeError, match="k must be an int"):
        dg.gumbel_top_k(x, 2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="logits"):
        dg.gumbel_top_k([0.0, 1.0], 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_logsumexp_is_exact_where_exp_overflows_or_underflows(dtype):
    """The fast path (no shift) hands over to the shifted one on an infinite or tiny block sum."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, 5, generator=gen, dtype=torch.float64)
    cases = {
        "ordinary": base,
        "overflow": base + 1000.0,  # exp overflows: the block sums are inf
        "one huge block": torch.where(torch.arange(5) == 2, base + 800.0, base),
        "underflow": base - 1000.0,  # exp underflows to 0
        "masked block": torch.where(torch.arange(5) == 1, -math.inf, base),
    }
    for name, grid in cases.items():
        got = _block_logsumexp(grid.to(dtype))
        want = torch.logsumexp(grid, -2).to(dtype)
        torch.testing.assert_close(got, want, msg=name)
