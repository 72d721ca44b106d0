"""Conformance of every registered estimator: the contract at the edges, tested automatically.

In the style of optax's test over all its optimisers: an estimator registered
with :func:`discograd.estimators.registry.register` is tested here without
further work, on the variable kinds its ``supports`` metadata names. The grid
is every estimator × dtype × mask, each case with one distribution family,
batch shape and cost chosen by a fixed rotation that covers every value of
those axes for every estimator (the full product would run for hours):

* dtypes: float16, bfloat16, float32, float64;
* masks: none, one masked category (Bernoulli: one variable in three
  deterministic, logit ±inf), all categories but one masked (all Bernoulli
  variables but the last deterministic), probabilities with exact zeros given
  through ``probs=`` (Bernoulli: probabilities 0 and 1);
* distributions: Bernoulli, Categorical, OneHotCategorical, Independent over
  one and over two variable dimensions, as each estimator supports;
* batch shapes (), (5,), (3, 4);
* costs: one using log q, one with a decoder parameter, an integer cost, a
  constant and one around 1e5 (1e4 in float16, so that the estimate itself is
  representable: REINFORCE's is about f ∇log q).

Checked in every case: finite ``loss``, ``value``, ``cv_loss`` and gradients;
``loss`` equal in value, shape and dtype to ``value``, shape ``q.batch_shape``;
masked and zero-probability categories (and the impossible value of a
deterministic Bernoulli variable) never reach ``f``; they get exactly zero
gradient. A second test checks every estimator whose metadata says ``unbiased``
(all but ``Exact`` itself) against ``Exact`` on the same edge cases, by a z-test
of the mean of many draws, with a cost differentiable in ``z`` (those with
``needs_grad_f`` are unbiased only for such costs).

k-hot estimators (a class attribute ``k_hot``: SIMPLE, IMLE) run above with
their default ``k = 1`` (one-hot, the plain categorical case) and again in a
k-hot section: ``k = 2`` of ``C = 4`` items over every dtype and the masks that
leave at least two items, on Categorical / OneHotCategorical / Independent
families and on a ``KSubset`` itself; ``f`` must see exactly two ones per
variable, none on a masked item, and the checks above apply.

Multi-sample-bound estimators (``multi_sample``, called as ``est(log_weight, q)``)
get their own cases over the same grid: each cost above serves as the log
weight (a large one is a log weight of 1e5, where ``exp`` overflows and only a
log-sum-exp stays finite), the same checks apply, and the unbiased ones are
compared with ``ExactMultiSample`` of their ``bound_samples`` instead of ``Exact``.
"""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    OneHotCategorical,
)

from discograd.estimators import Exact, ExactMultiSample, registry
from discograd.estimators.registry import make

from conftest import assert_mean_matches

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
MASKS = ["none", "one", "all_but_one", "probs_zeros"]
COSTS = ["log_q", "decoder", "integer", "constant", "large"]
BATCHES = [(), (5,), (3, 4)]
C = 4
#: family -> (base class, variable shape of the Independent or () for the plain one)
FAMILIES = {
    "bernoulli": (Bernoulli, ()),
    "bernoulli_ind1": (Bernoulli, (3,)),
    "bernoulli_ind2": (Bernoulli, (2, 2)),
    "categorical": (Categorical, ()),
    "onehot": (OneHotCategorical, ()),
    "categorical_ind1": (Categorical, (3,)),
    "onehot_ind2": (OneHotCategorical, (2, 2)),
}


def _kind(family: str) -> str:
    return "bernoulli" if family.startswith("bernoulli") else "categorical"


def _cases(multi_sample: bool):
    for e, name in enumerate(registry.names(multi_sample=multi_sample)):
        supports = registry.info(name).supports
        families = [fam for fam in FAMILIES if _kind(fam) in supports]
        for i, (dtype, mask) in enumerate(itertools.product(DTYPES, MASKS)):
            family = families[(7 * i + e) % len(families)]
            batch = BATCHES[(i + e) % len(BATCHES)]
            cost = COSTS[(i + e) % len(COSTS)]
            shape = "x".join(map(str, batch)) or "scalar"
            label = f"{name}-{str(dtype)[6:]}-{mask}-{family}-{shape}-{cost}"
            yield pytest.param(name, dtype, mask, family, batch, cost, id=label)


class Problem:
    """A distribution with masks in the requested pattern, its leaf and what f may see."""

    def __init__(
        self, family: str, batch: tuple[int, ...], mask: str, dtype: torch.dtype, copies: int = 0
    ):
        """``copies``: a batch of that many data points with identical parameters."""
        base, var = FAMILIES[family]
        self.kind = _kind(family)
        self.var = var
        shape = batch + var + ((C,) if self.kind == "categorical" else ())
        gen = torch.Generator().manual_seed(zlib.crc32(f"{family}{batch}{mask}".encode()))
        theta = torch.randn(shape, generator=gen, dtype=torch.float64)
        n = math.prod(batch + var)
        flat = torch.arange(n).view(batch + var)
        if self.kind == "categorical":
            keep = (flat % C).unsqueeze(-1) == torch.arange(C)  # one category per variable
            if mask in ("one", "probs_zeros"):
                masked = ((flat + 1) % C).unsqueeze(-1) == torch.arange(C)
            elif mask == "all_but_one":
                masked = ~keep
            else:
                masked = torch.zeros(shape, dtype=torch.bool)
            theta = theta.masked_fill(masked, -math.inf)
        else:
            if mask in ("one", "probs_zeros"):
                masked = flat % 3 == 0
            elif mask == "all_but_one":
                masked = flat != n - 1
            else:
                masked = torch.zeros(shape, dtype=torch.bool)
            sign = torch.where(flat % 2 == 0, -math.inf, math.inf).to(torch.float64)
            theta = torch.where(masked, sign, theta)
        if copies:
            theta = theta.expand((copies,) + theta.shape[1:])
            masked = masked.expand((copies,) + masked.shape[1:])
        self.masked = masked  # categorical: masked categories; Bernoulli: deterministic variables
        self.theta = theta.to(dtype).clone().requires_grad_()
        # torch's simplex check has a fixed 1e-6 tolerance that 16-bit probabilities
        # cannot meet, and OneHotCategorical checks its probs (computed from the
        # logits) by the default setting: 16-bit distributions are built without
        # validation. discograd checks parameters itself (no NaN, probs >= 0).
        low = dtype in (torch.float16, torch.bfloat16)
        default = Distribution._validate_args
        Distribution.set_default_validate_args(not low and default)
        try:
            if mask == "probs_zeros":
                fn = torch.softmax if self.kind == "categorical" else torch.sigmoid
                param = fn(self.theta, -1) if self.kind == "categorical" else fn(self.theta)
                d = base(probs=param)
            else:
                d = base(logits=self.theta)
        finally:
            Distribution.set_default_validate_args(default)
        self.q = Independent(d, len(var)) if var else d
        self.certain = (self.theta.detach() > 0).to(dtype)  # Bernoulli: the certain value

    def check_input(self, z: torch.Tensor) -> None:
        """Nothing impossible reaches f."""
        if self.kind == "categorical":
            at = z.detach()[..., self.masked.expand(z.shape)]
            assert (at == 0).all(), f"a masked category reached f: {at.unique()}"
        else:
            m = self.masked.expand(z.shape)
            seen = z.detach()[m]
            assert (seen == self.certain.expand(z.shape)[m]).all(), (
                "a deterministic Bernoulli variable reached f with its impossible value"
            )


def _cost(problem: Problem, cost: str, w: torch.Tensor, inputs: list):
    kind = problem.kind
    n_event = len(problem.var) + (kind == "categorical")
    big = 1e4 if problem.theta.dtype == torch.float16 else 1e5
    theta = problem.theta

    def reduce(x):
        return x.flatten(x.dim() - n_event).sum(-1) if n_event else x

    def log_q(z):
        # Smooth in z (relaxed estimators differentiate it), exact at hard samples;
        # impossible values never reach f, so masked terms are dropped, not NaN.
        finite = torch.isfinite(theta)
        safe = torch.where(finite, theta, 0.0)
        if kind == "categorical":
            lp = torch.log_softmax(torch.where(finite, safe, -1e4), -1)
            return reduce(torch.where(finite, z * lp, 0.0))
        terms = z * torch.nn.functional.logsigmoid(safe)
        terms = terms + (1 - z) * torch.nn.functional.logsigmoid(-safe)
        return reduce(torch.where(finite, terms, 0.0))

    def f(z):
        inputs.append(z.detach())
        problem.check_input(z)
        if cost == "log_q":
            return log_q(z) + reduce(z * w)
        if cost == "decoder":
            return torch.tanh(reduce(z * w)) * 3 + reduce(z * w) ** 2
        if cost == "integer":
            first = z[..., 0] if kind == "categorical" else z
            hits = first.round().to(torch.int64)
            return hits.flatten(hits.dim() - len(problem.var)).sum(-1) if problem.var else hits
        if cost == "constant":
            shape = z.shape[: z.dim() - n_event]
            return torch.full(shape, 2.5, dtype=z.dtype)
        return big + reduce(z * w)

    return f


@pytest.mark.parametrize(("name", "dtype", "mask", "family", "batch", "cost"), list(_cases(False)))
def test_conformance(name, dtype, mask, family, batch, cost):
    _check_conformance(name, dtype, mask, family, batch, cost)


@pytest.mark.parametrize(("name", "dtype", "mask", "family", "batch", "cost"), list(_cases(True)))
def test_multi_sample_conformance(name, dtype, mask, family, batch, cost):
    """``est(log_weight, q)``: the cost is the log weight; the same contract."""
    assert registry.info(name).multi_sample
    _check_conformance(name, dtype, mask, family, batch, cost)


def _check_conformance(name, dtype, mask, family, batch, cost):
    problem = Problem(family, batch, mask, dtype)
    w_shape = problem.var + ((C,) if problem.kind == "categorical" else ())
    w = torch.linspace(-1, 1, math.prod(w_shape)).view(w_shape).to(dtype).requires_grad_()
    inputs: list = []
    f = _cost(problem, cost, w, inputs)
    est = make(name)
    q = problem.q
    for step in range(2):  # a second call: baselines and control variates have learned
        out = est(f, q, generator=torch.Generator().manual_seed(step))
        assert inputs, "f was never called"
        assert out.loss.shape == q.batch_shape == out.value.shape
        assert out.loss.dtype == out.value.dtype
        assert not out.value.requires_grad
        assert torch.isfinite(out.value).all(), out.value
        assert torch.isfinite(out.loss).all(), out.loss
        torch.testing.assert_close(out.loss.detach(), out.value, rtol=0, atol=0)
        assert out.loss.requires_grad, "the loss is not connected to the logits"
        g_theta, g_w = torch.autograd.grad(
            out.loss.sum(), (problem.theta, w), allow_unused=True, retain_graph=True
        )
        assert g_theta is not None and torch.isfinite(g_theta).all(), g_theta
        assert g_w is None or torch.isfinite(g_w).all(), g_w
        assert (g_theta[problem.masked.expand(g_theta.shape)] == 0).all(), (
            "masked / deterministic entries got a gradient"
        )
        if out.cv_loss is not None:
            assert out.cv_loss.dim() == 0 and torch.isfinite(out.cv_loss), out.cv_loss
            params = [p for p in est.parameters() if p.requires_grad]
            if out.cv_loss.requires_grad and params:
                grads = torch.autograd.grad(out.cv_loss, params, allow_unused=True)
                for p, g in zip(params, grads, strict=True):
                    assert g is None or torch.isfinite(g).all(), (p.shape, g)
                    if g is not None:  # an Adam-sized first step: the scale of g is f²
                        with torch.no_grad():
                            p -= 0.01 * g.sign().to(p.dtype)
        inputs.clear()


# ------------------------------------------------------------------ unbiased
UNBIASED = registry.names(unbiased=True, exact=False, multi_sample=False)
UNBIASED_MULTI = registry.names(unbiased=True, exact=False, multi_sample=True)


@pytest.mark.parametrize("name", UNBIASED)
@pytest.mark.parametrize("mask", ["one", "all_but_one", "probs_zeros"])
def test_unbiased_at_the_edges(name, mask):
    """The mean of many draws matches Exact with masks, deterministic variables and zero probs."""
    _check_unbiased(name, mask)


@pytest.mark.parametrize("name", UNBIASED_MULTI)
@pytest.mark.parametrize("mask", ["one", "all_but_one", "probs_zeros"])
def test_multi_sample_unbiased_at_the_edges(name, mask):
    """The same for the multi-sample bounds, against ExactMultiSample."""
    _check_unbiased(name, mask)


def _check_unbiased(name, mask):
    entry = registry.info(name)
    family = "onehot_ind2" if "categorical" in entry.supports else "bernoulli_ind1"
    if entry.multi_sample and family == "onehot_ind2":
        family = "onehot"  # 4 configurations: ExactMultiSample sums over 4^K tuples
    n = 3000
    problem = Problem(family, (1,), mask, torch.float64, copies=n)
    w_shape = problem.var + ((C,) if problem.kind == "categorical" else ())
    w = torch.linspace(-1, 1, math.prod(w_shape)).view(w_shape).double()
    f = _cost(problem, "decoder", w, [])
    est = make(name)
    out = est(f, problem.q, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(out.loss.sum(), problem.theta)
    # Every data point has the same parameters: the n rows are n independent draws.
    one = Problem(family, (1,), mask, torch.float64)
    f1 = _cost(one, "decoder", w, [])
    if entry.multi_sample:
        exact = ExactMultiSample(est.bound_samples)(f1, one.q)
    else:
        exact = Exact()(f1, one.q)
    (g_exact,) = torch.autograd.grad(exact.loss.sum(), one.theta)
    assert_mean_matches(g, g_exact.expand_as(g)[0])
    assert_mean_matches(out.value.unsqueeze(-1), exact.value.reshape(1))


# -------------------------------------------------------------------- k-hot
KHOT = [n for n in registry.names() if getattr(registry.info(n).cls, "k_hot", False)]
KHOT_FAMILIES = ["categorical", "onehot", "categorical_ind1", "onehot_ind2", "ksubset"]


@pytest.mark.parametrize("name", KHOT)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask", ["none", "one", "probs_zeros"])
def test_k_hot_conformance(name, dtype, mask):
    from discograd.distributions import KSubset

    k = 2
    i = DTYPES.index(dtype) + 4 * ["none", "one", "probs_zeros"].index(mask)
    family = KHOT_FAMILIES[i % len(KHOT_FAMILIES)]
    batch = BATCHES[i % len(BATCHES)]
    problem = Problem("categorical" if family == "ksubset" else family, batch, mask, dtype)
    q = KSubset(problem.theta, k) if family == "ksubset" else problem.q
    n_var = len(problem.var)
    w = torch.linspace(-1, 1, C).to(dtype).requires_grad_()
    seen: list = []

    def f(z):
        seen.append(z.detach())
        problem.check_input(z)
        c = torch.tanh(z @ w) * 3 + (z @ w) ** 2
        return c.flatten(c.dim() - n_var).sum(-1) if n_var else c

    est = make(name, k=k)
    out = est(f, q, generator=torch.Generator().manual_seed(0))
    z = seen[0]
    assert ((z == 0) | (z == 1)).all() and (z.sum(-1) == k).all(), z
    assert out.loss.shape == out.value.shape == q.batch_shape
    assert out.loss.dtype == out.value.dtype
    assert torch.isfinite(out.value).all() and torch.isfinite(out.loss).all()
    g_theta, g_w = torch.autograd.grad(out.loss.sum(), (problem.theta, w))
    assert torch.isfinite(g_theta).all() and torch.isfinite(g_w).all(), g_theta
    assert (g_theta[problem.masked.expand(g_theta.shape)] == 0).all()
