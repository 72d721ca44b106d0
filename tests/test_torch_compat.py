"""Drop-in compatibility with torch (issue 11, items 9, 11, 12, 13; item 10 is in test_functional).

First one regression test (or a few) per item, then checks ported from torch's
own suite (``test/distributions/test_distributions.py`` and
``test_constraints.py``: expand consistency, ``Independent`` wrappers, shapes,
constraints, ``biject_to`` / ``transform_to`` round trips, argument validation,
gradchecks), written anew for Concrete, ExpConcrete and BinaryConcrete.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.distributions import (
    Distribution,
    Independent,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
    biject_to,
    constraints,
    transform_to,
)
from torch.distributions.transforms import SoftmaxTransform, StickBreakingTransform

import discograd as dg
from discograd.distributions import BinaryConcrete, Concrete, ExpConcrete

# torch >= 2.9 deprecates torch.jit; these tests check that it still works.
JIT = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(*shape: int, seed: int = 0, scale: float = 3.0, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


# =============================================================================
# Item 13: the simplex support has biject_to / transform_to
# =============================================================================


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_concrete_support_has_torchs_simplex_transforms(dtype):
    d = Concrete(0.5, logits=_logits(4, 5, dtype=dtype))
    y = d.sample(generator=_gen(11))
    for registry, cls in ((biject_to, StickBreakingTransform), (transform_to, SoftmaxTransform)):
        t = registry(d.support)
        assert isinstance(t, cls)
        torch.testing.assert_close(t(t.inv(y)), y)  # samples round-trip
        free = torch.randn(4, 4 if cls is StickBreakingTransform else 5, dtype=dtype)
        assert d.support.check(t(free)).all()
    t = biject_to(d.support)
    free = torch.randn(4, 4, dtype=dtype, generator=_gen(12))
    torch.testing.assert_close(t.inv(t(free)), free)  # a bijection
    # Through Independent, as a model's parameter would be constrained.
    indep = Independent(d, 1)
    t = biject_to(indep.support)
    torch.testing.assert_close(t(t.inv(y)), y)
    assert t.log_abs_det_jacobian(t.inv(y), y).shape == ()
