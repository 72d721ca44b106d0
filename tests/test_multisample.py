"""Multi-sample-bound estimators, ``est(log_weight, q)``: ExactMultiSample, VIMCO,
LocalDisARM, LocalARMS, and the ``multi_sample`` metadata."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Categorical

from discograd.diagnostics import exact_gradient, gradient_stats
from discograd.errors import ConfigError
from discograd.estimators import (
    VIMCO,
    Exact,
    ExactMultiSample,
    LocalARMS,
    LocalDisARM,
    registry,
)
from discograd.experiments.common import check_estimators, every_estimator, support_limit
from multisample_helpers import (
    D64,
    dist,
    draws,
    exact,
    impossible,
    log_q,
    log_weight,
    problem,
    same_mean_and_variance,
)

from conftest import Z_TOL, assert_mean_matches


# --------------------------------------------------------------- ExactMultiSample
def _brute_force(kind: str, theta, w, K: int):
    """−E[log (1/K) Σ_k e^{ℓ(z_k)}] by a Python loop over every K-tuple, per data point."""
    theta = theta.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    B, D = theta.shape[:2]
    C = theta.shape[-1] if kind == "categorical" else 2
    lw = log_weight(kind, theta, w)
    values = []
    for i in range(B):
        total = torch.zeros((), dtype=D64)
        for tup in itertools.product(itertools.product(range(C), repeat=D), repeat=K):
            zs = []
            for config in tup:
                z = torch.tensor(config)
                if kind == "categorical":
                    z = torch.nn.functional.one_hot(z, C).double()
                else:
                    z = z.double()
                zs.append(z.expand((B,) + z.shape))  # ℓ of data point i needs theta[i]
            lq = sum(log_q(kind, theta, z)[i] for z in zs)
            if not torch.isfinite(lq):
                continue  # an impossible configuration: weight 0
            ells = torch.stack([lw(z)[i] for z in zs])
            total = total + lq.exp() * (torch.logsumexp(ells, 0) - math.log(K))
        values.append(-total)
    value = torch.stack(values)
    g_theta, g_w = torch.autograd.grad(value.sum(), (theta, w))
    return value.detach(), torch.cat([g_theta.reshape(-1), g_w.reshape(-1)])


@pytest.mark.parametrize(("kind", "K"), [("bernoulli", 2), ("bernoulli", 3), ("categorical", 2)])
def test_exact_multi_sample_is_the_sum_over_tuples(kind, K):
    theta, w = problem(kind, B=3, D=2, C=3, seed=50)
    g, value = exact(kind, theta, w, n_samples=K)
    v_ref, g_ref = _brute_force(kind, theta, w, K)
    torch.testing.assert_close(value, v_ref)
    torch.testing.assert_close(g, g_ref)
    assert (g[: theta.numel()].reshape(theta.shape)[impossible(theta, kind)] == 0).all()


def test_exact_multi_sample_with_one_sample_is_the_negative_elbo():
    theta, w = problem("bernoulli", seed=51)
    g1, v1 = exact("bernoulli", theta, w, n_samples=1)
    leaf = theta.clone().requires_grad_()
    w_leaf = w.clone().requires_grad_()
    lw = log_weight("bernoulli", leaf, w_leaf)
    out = Exact()(lambda z: -lw(z), dist("bernoulli", leaf))
    g_theta, g_w = torch.autograd.grad(out.loss.sum(), (leaf, w_leaf))
    torch.testing.assert_close(v1, out.value)
    torch.testing.assert_close(g1, torch.cat([g_theta.reshape(-1), g_w.reshape(-1)]))


def test_exact_multi_sample_refuses_large_supports_and_bad_arguments():
    theta = torch.zeros(2, 6, requires_grad=True)
    with pytest.raises(ValueError, match=r"64\^3 = 262144 tuples of n_samples=3"):
        ExactMultiSample(3)(lambda z: z.sum(-1), dist("bernoulli", theta))
    ExactMultiSample(2)(lambda z: z.sum(-1), dist("bernoulli", theta))  # 4096: fine
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_samples"):
            ExactMultiSample(bad)
    with pytest.raises(ValueError, match="max_support"):
        ExactMultiSample(2, max_support=0)
    assert support_limit(ExactMultiSample(3, max_support=1000)) == 10
    assert support_limit(ExactMultiSample(2, max_support=99)) == 9
    assert support_limit(Exact(max_support=99)) == 99


# --------------------------------------------------------------- unbiasedness
CASES = [
    (VIMCO(2), "bernoulli"),
    (VIMCO(4), "bernoulli"),
    (VIMCO(3), "categorical"),
    (LocalDisARM(1), "bernoulli"),
    (LocalDisARM(3), "bernoulli"),
    (LocalARMS(2), "bernoulli"),
    (LocalARMS(3), "bernoulli"),
]


@pytest.mark.parametrize(("est", "kind"), CASES, ids=lambda c: repr(c).replace("\n", ""))
def test_unbiased_against_exact_multi_sample(est, kind):
    """Mean of many draws = the exact gradient of the negative K-sample bound: logits
    (three data points, ±inf and masked entries) and a decoder parameter, with a
    log weight that uses log q."""
    theta, w = problem(kind, B=3, D=3, C=3, seed=52)
    n = 12000
    g, out = draws(est, kind, theta, w, n, seed=53)
    assert torch.isfinite(g).all()
    g_star, v_star = exact(kind, theta, w, n_samples=est.bound_samples)
    assert_mean_matches(g, g_star)
    assert_mean_matches(out.value, v_star)
    torch.testing.assert_close(out.loss.detach(), out.value)
    g_theta = g[:, : theta.numel()].reshape((n,) + theta.shape)
    assert (g_theta[:, impossible(theta, kind)] == 0).all()
    per_sample = 1 if isinstance(est, VIMCO) else 2
    assert out.n_evals == per_sample * est.bound_samples


# --------------------------------------------------------------- references
# Deliberately plain implementations of the papers' algorithms: Python loops over
# samples and variables (vectorised over independent draws only), explicit
# ∇θ log q(b) = b - p for the score parts, autograd only for the pathwise part
# ∇ log (1/K) Σ_k e^{ℓ_k}. Each returns [n_draws, P] draws of the gradient of the
# negative bound w.r.t. (θ, w), from its own random numbers.


def _leaves(theta, w, n):
    th = theta.detach().expand((n,) + theta.shape).clone().requires_grad_()
    ww = w.detach().expand((n, 1) + w.shape).clone().requires_grad_()
    return th, ww


def _finish(th, ww, bound, score, n):
    path_theta, path_w = torch.autograd.grad(bound.sum(), (th, ww))
    score = torch.where(torch.isfinite(th), score, 0.0)
    g_theta = -(score + path_theta)
    return torch.cat([g_theta.reshape(n, -1), -path_w.reshape(n, -1)], 1)


def _lme(values):
    return torch.log(sum(v.exp() for v in values) / len(values))


def _ref_vimco(theta, w, n, K, gen, given=None):
    th, ww = _leaves(theta, w, n)
    p = torch.sigmoid(th.detach())
    if given is None:
        z = [(torch.rand(p.shape, generator=gen, dtype=D64) < p).double() for _ in range(K)]
    else:
        z = [given[k] for k in range(K)]
    lw = log_weight("bernoulli", th, ww)
    ell = [lw(zk) for zk in z]
    bound = _lme(ell)
    score = torch.zeros_like(th)
    for k in range(K):
        others = [ell[j].detach() for j in range(K) if j != k]
        geometric = sum(others) / (K - 1)
        held_out = torch.log((sum(o.exp() for o in others) + geometric.exp()) / K)
        score = score + (bound.detach() - held_out).unsqueeze(-1) * (z[k] - p)
    return _finish(th, ww, bound, score, n)


def _ref_local_disarm(theta, w, n, K, gen, given=None):
    th, ww = _leaves(theta, w, n)
    p = torch.sigmoid(th.detach())
    if given is None:
        u = [torch.rand(p.shape, generator=gen, dtype=D64) for _ in range(K)]
        b = [(uk < p).double() for uk in u]
        bt = [(1 - uk < p).double() for uk in u]
    else:
        b, bt = [given[k] for k in range(K)], [given[K + k] for k in range(K)]
    lw = log_weight("bernoulli", th, ww)
    ell = [lw(bk) for bk in b]
    ell_t = [lw(bk).detach() for bk in bt]
    bound = _lme(ell)
    score = torch.zeros_like(th)
    D = theta.shape[-1]
    for k in range(K):
        swapped = [ell_t[k] if j == k else ell[j].detach() for j in range(K)]
        signal = bound.detach() - _lme(swapped)
        for d in range(D):
            differ = (b[k][..., d] != bt[k][..., d]).double()
            sign = 1 - 2 * bt[k][..., d]  # (-1)^b̃
            sig_abs = torch.sigmoid(th.detach()[..., d].abs())
            score[..., d] += 0.5 * signal * sign * differ * sig_abs
    return _finish(th, ww, bound, score, n)


def _ref_local_arms(theta, w, n, K, gen, given=None):
    th, ww = _leaves(theta, w, n)
    p = torch.sigmoid(th.detach())
    if given is None:
        b = [(torch.rand(p.shape, generator=gen, dtype=D64) < p).double() for _ in range(K)]
        e = -torch.rand((K,) + p.shape, generator=gen, dtype=D64).log()
        dirichlet = e / e.sum(0)
        bt = []
        for m in range(K):
            um = (1 - dirichlet[m]) ** (K - 1)
            bt.append(torch.where(p < 0.5, um < p, 1 - um < p).double())
    else:
        b, bt = [given[k] for k in range(K)], [given[K + m] for m in range(K)]
    lw = log_weight("bernoulli", th, ww)
    ell = [lw(bk) for bk in b]
    ell_t = [lw(bm).detach() for bm in bt]
    bound = _lme(ell)
    score = torch.zeros_like(th)
    D = theta.shape[-1]
    for k in range(K):
        F = [_lme([ell_t[m] if j == k else ell[j].detach() for j in range(K)]) for m in range(K)]
        F_mean = sum(F) / K
        for d in range(D):
            if not torch.isfinite(theta[..., d]).all():
                continue
            pd = p[..., d]
            low = torch.where(pd < 0.5, pd, 1 - pd)
            j_low = torch.clamp(2 * low ** (1 / (K - 1)) - 1, min=0) ** (K - 1)
            joint = torch.where(pd < 0.5, j_low, 2 * pd - 1 + j_low)
            debias = pd * (1 - pd) / (pd - joint)
            for m in range(K):
                score[..., d] += (F[m] - F_mean) * (bt[m][..., d] - pd) * debias / (K - 1)
    return _finish(th, ww, bound, score, n)


REFERENCES = [
    (VIMCO(3), _ref_vimco),
    (LocalDisARM(2), _ref_local_disarm),
    (LocalARMS(3), _ref_local_arms),
]


@pytest.mark.parametrize(("est", "ref"), REFERENCES, ids=lambda c: getattr(c, "__name__", ""))
def test_matches_the_reference_implementation(est, ref):
    """Same estimator, same variance: 20,000 independent draws of each."""
    theta, w = problem("bernoulli", B=3, D=3, seed=54, masked=False)
    theta[:, 1] = torch.tensor([math.inf, math.inf, -math.inf], dtype=D64)
    N = 20000
    K = est.bound_samples
    g_ref = ref(theta, w, N, K, torch.Generator().manual_seed(55))
    g_lib, _ = draws(est, "bernoulli", theta, w, N, seed=56)
    z, r_theta, r_w = same_mean_and_variance(g_lib, g_ref, Z_TOL, theta.numel())
    print(
        f"\n{type(est).__name__}(K={K}) vs reference: max |z| {z:.2f}, "
        f"variance ratio logits {r_theta:.4f}, decoder {r_w:.4f}"
    )
    assert_mean_matches(g_ref, exact("bernoulli", theta, w, n_samples=K)[0])


@pytest.mark.parametrize(("est", "ref"), REFERENCES, ids=lambda c: getattr(c, "__name__", ""))
def test_reference_reproduces_the_library_draw_by_draw(est, ref):
    """On the samples the library drew (what log_weight saw), the reference's
    gradient is the library's, draw for draw."""
    theta, w = problem("bernoulli", B=3, D=3, seed=60, masked=False)
    theta[:, 1] = torch.tensor([math.inf, -math.inf, math.inf], dtype=D64)
    n = 2000
    seen: list[torch.Tensor] = []
    g_lib, _ = draws(est, "bernoulli", theta, w, n, seed=61, seen=seen)
    assert len(seen) == 1
    g_ref = ref(theta, w, n, est.bound_samples, None, given=seen[0])
    torch.testing.assert_close(g_lib, g_ref, rtol=1e-9, atol=1e-10)
    assert g_lib[:, : theta.numel()].abs().sum() > 0


def test_vimco_signal_is_the_geometric_mean_leave_one_out():
    """One draw checked by hand: K = 3 log weights, the score part of the gradient."""
    theta = torch.tensor([0.4], dtype=D64, requires_grad=True)
    values = {0.0: torch.tensor(-1.0, dtype=D64), 1.0: torch.tensor(0.5, dtype=D64)}
    seen = []

    def lw(z):
        seen.append(z.detach().clone())
        return torch.where(z > 0.5, values[1.0], values[0.0])

    q = torch.distributions.Bernoulli(logits=theta)
    out = VIMCO(3)(lw, q, generator=torch.Generator().manual_seed(57))
    (g,) = torch.autograd.grad(out.loss.sum(), theta)
    z = seen[0].reshape(3)
    ell = torch.where(z > 0.5, 0.5, -1.0).double()
    bound = torch.logsumexp(ell, 0) - math.log(3)
    expected = 0.0
    for k in range(3):
        others = torch.cat([ell[:k], ell[k + 1 :]])
        held = torch.log((others.exp().sum() + others.mean().exp()) / 3)
        expected += float(bound - held) * float(z[k] - torch.sigmoid(theta.detach()))
    torch.testing.assert_close(out.value, -bound.reshape(1))
    torch.testing.assert_close(g, torch.tensor([-expected], dtype=D64))


# --------------------------------------------------------------- the contract
def test_metadata_and_registry():
    for cls in (VIMCO, LocalDisARM, LocalARMS, ExactMultiSample):
        assert cls.multi_sample and registry.info(cls.name).multi_sample
    multi = registry.names(multi_sample=True)
    assert set(multi) == {"exact_multi_sample", "vimco", "local_disarm", "local_arms"}
    assert not set(multi) & set(every_estimator(None))
    assert every_estimator("bernoulli", multi_sample=True) == tuple(multi)
    assert registry.names("categorical", multi_sample=True) == ["exact_multi_sample", "vimco"]
    assert registry.make("local_disarm:n_pairs=3").bound_samples == 3


def test_single_sample_studies_refuse_multi_sample_estimators():
    with pytest.raises(ConfigError, match="vimco is a multi-sample-bound estimator"):
        check_estimators(["rloo", "vimco"])
    with pytest.raises(ConfigError, match="rloo is not one"):
        check_estimators(["rloo", "vimco"], multi_sample=True)
    assert len(check_estimators(["rloo", "vimco"], multi_sample=None)) == 2
    with pytest.raises(ConfigError, match="would enumerate 16"):
        check_estimators(["exact_multi_sample:max_support=100"], support=16, multi_sample=True)


def test_hyper_parameters_and_supports():
    for make, arg in ((VIMCO, "n_samples"), (LocalARMS, "n_samples"), (LocalDisARM, "n_pairs")):
        low = 0 if make is LocalDisARM else 1
        for bad in (low, 2.0, True, "3"):
            with pytest.raises(ValueError, match=arg):
                make(bad)
    for est in (LocalDisARM(), LocalARMS()):
        with pytest.raises(TypeError, match="does not support Categorical"):
            est(lambda z: z.sum(-1), Categorical(logits=torch.zeros(2, 3)))


def test_diagnostics_use_the_multi_sample_ground_truth():
    theta, w = problem("bernoulli", B=2, D=3, seed=58)
    leaf = theta.clone().requires_grad_()
    lw = log_weight("bernoulli", leaf, w)
    q = dist("bernoulli", leaf)
    (g_star,) = exact_gradient(lw, q, leaf, n_samples=3)
    g_ref, _ = exact("bernoulli", theta, w, n_samples=3)
    torch.testing.assert_close(g_star, g_ref[: theta.numel()].reshape(theta.shape))
    gen = torch.Generator().manual_seed(59)
    stats = gradient_stats(VIMCO(3), lw, q, leaf, 4000, generator=gen)
    # unbiased: the bias is Monte-Carlo noise, a few times sqrt(tr Σ / n) at most
    assert stats.bias is not None and stats.bias < 4 * stats.bias_noise
    assert stats.n_evals == 3 and stats.cosine is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_and_extreme_log_weights(dtype):
    theta = torch.tensor([[-math.inf, 0.3, math.inf], [2.0, -40.0, 0.0]], dtype=dtype)
    theta.requires_grad_()
    for est in (VIMCO(3), LocalDisARM(2), LocalARMS(3), ExactMultiSample(2)):
        theta.grad = None
        # log weights around -1e4 (a real ELBO's scale): exp underflows, logsumexp does not
        out = est(lambda z: -1e4 + 50 * z.sum(-1), dist("bernoulli", theta))
        out.loss.sum().backward()
        assert out.value.dtype == dtype and torch.isfinite(out.value).all()
        assert torch.isfinite(theta.grad).all()
        assert theta.grad[0, 0] == 0 and theta.grad[0, 2] == 0
