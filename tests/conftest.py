"""Shared helpers for the statistical tests.

Every random test uses a fixed seed, and tolerances come from standard errors
(z-scores) or chi-square p-values, so a test fails only when the code is wrong
or a seed lands in a tail we chose to be astronomically unlikely.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

Z_TOL = 4.5  # two-sided p ~ 7e-6 per comparison


def assert_mean_matches(draws: torch.Tensor, expected: torch.Tensor, z_tol: float = Z_TOL) -> None:
    """z-test, coordinate by coordinate: the mean of ``draws`` [n, ...] equals ``expected``.

    The standard error of each coordinate's mean is estimated from the draws;
    coordinates with zero spread must match exactly (to float tolerance).
    """
    draws = draws.detach().double()
    expected = expected.detach().double().reshape(draws.shape[1:])
    n = draws.shape[0]
    mean = draws.mean(0)
    se = draws.std(0, unbiased=True) / math.sqrt(n)
    diff = (mean - expected).abs()
    spread = se > 1e-12
    z = torch.where(spread, diff / se.clamp_min(1e-300), torch.zeros_like(diff))
    worst = float(z.max())
    assert worst < z_tol, (
        f"max |z| = {worst:.2f} >= {z_tol} (mean {mean}, expected {expected}, se {se})"
    )
    assert torch.allclose(mean[~spread], expected[~spread], atol=1e-9, rtol=1e-6)


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square goodness-of-fit p-value over the categories with positive probability."""
    counts = np.asarray(counts, dtype=float)
    probs = np.asarray(probs, dtype=float)
    keep = probs > 0
    probs = probs / probs[keep].sum()
    assert counts[~keep].sum() == 0, "a zero-probability category was observed"
    expected = probs[keep] * counts.sum()
    return float(stats.chisquare(counts[keep], expected).pvalue)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test, then restore the setting.

    The tensors here are small: a second thread buys nothing, and on a
    machine whose other core is busy OpenMP's spinning threads made the suite
    up to 10x slower.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
