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
# Item 11: BinaryConcrete takes Python numbers, like RelaxedBernoulli
# =============================================================================


@pytest.mark.parametrize("kwargs", [{"probs": 0.3}, {"logits": -1.2}, {"logits": 2}])
def test_binary_concrete_accepts_python_numbers(kwargs):
    ours = BinaryConcrete(0.5, **kwargs)
    theirs = RelaxedBernoulli(torch.tensor(0.5), **kwargs)
    assert ours.batch_shape == theirs.batch_shape == torch.Size()
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x))
    assert ours.sample((5,)).shape == (5,) and ours.rsample().shape == ()


def test_binary_concrete_number_takes_a_tensor_temperatures_dtype():
    d = BinaryConcrete(torch.tensor([0.5, 2.0], dtype=torch.float64), probs=0.3)
    assert d.probs.dtype == torch.float64 and d.sample().dtype == torch.float64
    assert d.batch_shape == (2,)
    assert BinaryConcrete(0.5, logits=1.0).logits.dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="probs"):
        BinaryConcrete(0.5, probs=1.5, validate_args=True)
    with pytest.raises(TypeError, match="tensor or a number"):
        BinaryConcrete(0.5, probs="0.3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tensor or a number"):
        BinaryConcrete(0.5, probs=True)  # type: ignore[arg-type]


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
