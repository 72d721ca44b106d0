"""The variance study's k-hot problems: the exact gradient of E_{KSubset(θ, k)}[f] by
enumeration, the cost, which estimators run on them, and a run from the command line
whose bias matches SIMPLE's exactly computed bias."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import discograd.cli as cli
from discograd.distributions import subset_marginals
from discograd.errors import ConfigError
from discograd.estimators import registry
from discograd.experiments.common import is_k_hot, supports
from discograd.experiments.config import build
from discograd.experiments.variance import (
    PROBLEMS,
    Problem,
    VarianceConfig,
    VarianceTask,
    k_hot_enumeration,
    k_hot_exact_gradient,
    k_hot_problem,
    k_hot_weights,
    make_problem,
    problem_spec,
)

DT = torch.float64


# ----------------------------------------------- a deliberately simple reference
def reference_expectation(f, theta: torch.Tensor, k: int) -> torch.Tensor:
    """``E_{KSubset(θ_b, k)}[f]`` per data point ``b``, differentiable in ``theta``
    ``[B, D, C]``: a Python loop over every joint choice of subsets (itertools), the
    normaliser as a sum over the subsets of each variable."""
    B, D, C = theta.shape
    subsets = list(itertools.combinations(range(C), k))

    def khot(items: tuple[int, ...]) -> torch.Tensor:
        z = torch.zeros(C, dtype=DT)
        z[list(items)] = 1.0
        return z

    def score(d: int, items: tuple[int, ...]) -> torch.Tensor:
        return theta[:, d, list(items)].sum(-1)  # [B]; -inf when an item is masked

    log_norm = [torch.logsumexp(torch.stack([score(d, s) for s in subsets]), 0) for d in range(D)]
    total = torch.zeros(B, dtype=DT)
    for joint in itertools.product(subsets, repeat=D):
        log_p = sum(score(d, s) - log_norm[d] for d, s in enumerate(joint))
        z = torch.stack([khot(s) for s in joint]).expand(B, D, C)
        p = torch.exp(log_p)
        total = total + torch.where(p > 0, p * f(z), 0.0)
    return total


def _masked_theta() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(3, 2, 5, generator=gen, dtype=DT) * 2
    theta[0, 1, 2] = -math.inf
    theta[2, 0, [0, 4]] = -math.inf  # 3 items left for k = 2
    return theta


def _problem(name: str):
    """A default k-hot problem by name, or ``"masked"``: C = 5, k = 2, D = 2 with -inf logits."""
    if name != "masked":
        return make_problem(name)
    p = k_hot_problem(5, 2, 2)
    p.logits = _masked_theta()
    return p


@pytest.mark.parametrize("name", ["subset-C10-k3", "subset-C6-k2-D3", "masked"])
def test_exact_gradient_equals_autograd_of_the_enumerated_expectation(name):
    p = _problem(name)
    assert p.kind == "k_hot" and p.k is not None
    leaf = p.logits.clone().requires_grad_()
    (g,) = p.exact(leaf)
    (ref,) = torch.autograd.grad(reference_expectation(p.f, leaf, p.k).sum(), leaf)
    assert float(g.abs().max()) > 1e-2  # a gradient worth comparing
    torch.testing.assert_close(g, ref, rtol=0, atol=1e-12)
    if name == "masked":
        assert (g[~torch.isfinite(p.logits)] == 0).all()
    # The enumeration's marginals are the dynamic program's.
    z, log_p = k_hot_enumeration(p.build(p.logits), p.k)
    assert z.shape[0] == p.support and log_p.shape == (p.support, p.logits.shape[0])
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(p.logits.shape[0], dtype=DT))
    mu = (log_p.exp()[:, :, None, None] * z).sum(0)
    torch.testing.assert_close(mu, subset_marginals(p.logits, p.k), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["subset-C10-k3", "subset-C6-k2-D3", "masked"])
def test_exact_gradient_equals_finite_differences(name):
    p = _problem(name)
    leaf = p.logits.clone().requires_grad_()
    (g,) = p.exact(leaf)
    finite = torch.isfinite(p.logits)
    gen = torch.Generator().manual_seed(0)
    h = 1e-5

    def expected(theta: torch.Tensor) -> float:
        z, log_p = k_hot_enumeration(p.build(theta), p.k)
        return float((log_p.exp() * p.f(z)).sum())

    for _ in range(3):  # directional derivatives along random directions
        v = torch.randn(p.logits.shape, generator=gen, dtype=DT) * finite
        fd = (expected(p.logits + h * v) - expected(p.logits - h * v)) / (2 * h)
        assert abs(fd - float((g * v).sum())) < 1e-8, (fd, float((g * v).sum()))


def test_exact_gradient_follows_the_logits_through_a_map():
    # The gradient is carried to whatever the logits are computed from (a vjp).
    p = make_problem("subset-C10-k3")
    a = torch.tensor(0.7, dtype=DT, requires_grad=True)
    g_a = k_hot_exact_gradient(p.f, p.build(a * p.logits), 3, a)
    leaf = (0.7 * p.logits).requires_grad_()
    (g,) = torch.autograd.grad(reference_expectation(p.f, leaf, 3).sum(), leaf)
    torch.testing.assert_close(g_a, (g * p.logits).sum(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------- the cost
def test_cost_on_hand_made_k_hot_vectors():
    p = make_problem("subset-C10-k3")
    w = k_hot_weights(10, 3)  # [1, 10]
    picks = [(0, 1, 2), (3, 5, 9), (2, 4, 7), (0, 8, 9)]
    z = torch.zeros(2, 4, 1, 10, dtype=DT)  # 2 samples × 4 data points
    for b, items in enumerate(picks):
        z[0, b, 0, list(items)] = 1.0
        z[1, b, 0, list(picks[(b + 1) % 4])] = 1.0
    out = p.f(z)
    assert out.shape == (2, 4)
    for b, items in enumerate(picks):
        s = float(w[0, list(items)].sum())
        assert float(out[0, b]) == pytest.approx((s - 0.5) ** 2 + math.sin(2 * s), abs=1e-12)
    # Not linear in z: swapping one item between two subsets changes the sum of costs.
    a, b2 = torch.zeros(10, dtype=DT), torch.zeros(10, dtype=DT)
    a[[0, 1, 2]], b2[[3, 4, 5]] = 1.0, 1.0
    c, d = a.clone(), b2.clone()
    c[[2, 3]], d[[3, 2]] = torch.tensor([0.0, 1.0], dtype=DT), torch.tensor([0.0, 1.0], dtype=DT)
    both = p.f(torch.stack([a, b2, c, d]).view(4, 1, 10))
    assert abs(float(both[0] + both[1] - both[2] - both[3])) > 1e-3
    # D > 1: one cost of all the variables together.
    p3, w3 = make_problem("subset-C6-k2-D3"), k_hot_weights(6, 2, 3)
    z3 = torch.zeros(1, 3, 6, dtype=DT)
    z3[0, 0, [0, 1]] = z3[0, 1, [2, 5]] = z3[0, 2, [1, 4]] = 1.0
    s3 = float(w3[0, [0, 1]].sum() + w3[1, [2, 5]].sum() + w3[2, [1, 4]].sum())
    assert float(p3.f(z3)[0]) == pytest.approx((s3 - 0.5) ** 2 + math.sin(2 * s3), abs=1e-12)


# -------------------------------------------------------- who runs on k-hot problems
def test_only_k_hot_estimators_run_on_k_hot_problems_and_at_the_problems_k():
    k_hot_names = {n for n in registry.names() if is_k_hot(registry.info(n).cls)}
    assert k_hot_names == {"simple", "imle"}
    for n in registry.names():
        est = registry.make(n)
        assert supports(est, "k_hot") == (n in k_hot_names)
        if n in k_hot_names:  # the subset size is a hyper-parameter the study sets
            assert "k" in registry.info(n).defaults
    task = VarianceTask()
    p = make_problem("subset-C10-k3")
    specs = (
        "exact", "reinforce", "rloo:n_samples=4", "straight_through", "st_gumbel_softmax",
        "arsm", "unordered_set", "simple", "imle:lam=10", "simple:k=2", "imle:k=3,lam=1",
    )  # fmt: skip
    cfg = VarianceConfig(problems=(p.name,), estimators=specs, temperatures=(1.0,))
    assert task.specs(cfg, p) == ["simple:k=3", "imle:k=3,lam=10", "imle:k=3,lam=1"]
    # On a categorical problem the k-hot estimators run at k = 1 only (the same law).
    cat = make_problem("categorical")
    assert problem_spec("simple", cat) == "simple"
    assert problem_spec("simple:k=2", cat) is None
    assert problem_spec("imle:k=1", cat) == "imle:k=1"
    assert problem_spec("reinforce", cat) == "reinforce"
    assert [u.key for u in task.units(cfg)] == [
        "subset-C10-k3/simple:k=3",
        "subset-C10-k3/imle:k=3,lam=10",
        "subset-C10-k3/imle:k=3,lam=1",
    ]


def test_k_hot_problem_names_and_metadata_are_checked():
    assert PROBLEMS["subset-C10-k3"] == PROBLEMS["subset-C6-k2-D3"] == "k_hot"
    assert make_problem("subset-C10-k3").support == math.comb(10, 3)
    assert make_problem("subset-C6-k2-D3").support == math.comb(6, 2) ** 3
    assert make_problem("subset-C5-k2-D1").name == "subset-C5-k2-D1"
    for bad in ("subset-C5-k5", "subset-C5-k0", "subset-C5-k2-D0"):
        with pytest.raises(ConfigError, match="1 <= k < C"):
            build(VarianceConfig, {}, {"problems": (bad,)}, {}).validate()
    p = make_problem("categorical")
    with pytest.raises(ConfigError, match="needs k"):
        Problem("x", "k_hot", p.logits, p.build, p.f, "no k")
    with pytest.raises(ConfigError, match="needs k"):
        Problem("x", "categorical", p.logits, p.build, p.f, "a k", k=2)
    big = make_problem("subset-C20-k10")  # 184756 subsets: no exact gradient, still runs
    assert big.exact(big.logits.clone().requires_grad_()) is None


# --------------------------------------------------------- a run from the command line
def simple_expected_gradient(p: Problem) -> torch.Tensor:
    """SIMPLE's mean exactly: ``(∂μ/∂θ)ᵀ E_z[∇_z f(z)]``, the expectation by enumeration."""
    z, log_p = k_hot_enumeration(p.build(p.logits), p.k)
    zz = z.clone().requires_grad_()
    (grad_f,) = torch.autograd.grad(p.f(zz).sum(), zz)
    mean_grad_f = (log_p.exp()[:, :, None, None] * grad_f).sum(0)
    theta = p.logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(subset_marginals(theta, p.k), theta, grad_outputs=mean_grad_f)
    return g


def test_variance_run_on_a_k_hot_problem_from_the_command_line(tmp_path):
    out = tmp_path / "khot"
    rc = cli.main(
        [
            "variance", "--problems", "subset-C6-k2", "--estimators", "simple", "imle",
            "reinforce", "straight_through", "--draws", "3000", "--seeds", "2",
            "--timing-repeats", "1", "--out", str(out), "--quiet", "--threads", "1",
        ]
    )  # fmt: skip
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["variance"]["subset-C6-k2"]
    assert res["k"] == 2 and res["support"] == 15
    assert set(res["estimators"]) == {"simple:k=2", "imle:k=2"}
    p = make_problem("subset-C6-k2")
    (exact,) = p.exact(p.logits.clone().requires_grad_())
    assert res["exact_norm"] == pytest.approx(float(exact.norm()), rel=1e-12)
    for spec, v in res["estimators"].items():
        for key in ("bias", "variance", "snr", "cosine", "mse", "bias_noise"):
            assert math.isfinite(v[key]), (spec, key)
        assert v["n_evals"] == 1
        for seed in ("0", "1"):  # biased: far above the Monte-Carlo floor in every seed
            s = v["per_seed"][seed]
            assert s["unbiased"] is False
            assert s["bias"] > 5 * s["bias_noise"], (spec, s["bias"], s["bias_noise"])
    # SIMPLE's bias is known exactly: the measured one is within its standard error.
    true_bias = float((simple_expected_gradient(p) - exact).norm())
    for seed in ("0", "1"):
        s = res["estimators"]["simple:k=2"]["per_seed"][seed]
        expect = math.sqrt(true_bias**2 + s["bias_noise"] ** 2)
        print(f"SIMPLE bias, seed {seed}: {s['bias']:.5f}; exact {true_bias:.5f}")
        print(f"  ± {s['bias_noise']:.5f}")
        assert abs(s["bias"] - expect) < 4 * s["bias_noise"]
    report = (out / "report.md").read_text()
    assert "### Problem `subset-C6-k2`" in report
    assert "| estimator | MSE | bias | variance | f-evals | SNR | cosine | µs / draw |" in report
    assert "| simple:k=2 |" in report and "| imle:k=2 |" in report


def test_simple_is_exact_in_expectation_for_a_linear_cost():
    # The check above has teeth: for a cost linear in z SIMPLE's mean is the exact
    # gradient (the straight-through Jacobian is the covariance), so its bias is 0.
    p = k_hot_problem(6, 2)
    w = torch.randn(6, dtype=DT, generator=torch.Generator().manual_seed(5))
    p.f = lambda z: (z.to(DT) * w).sum((-1, -2))
    (exact,) = p.exact(p.logits.clone().requires_grad_())
    torch.testing.assert_close(simple_expected_gradient(p), exact, rtol=0, atol=1e-12)
