"""UnorderedSet, REINFORCEWOR and SumAndSample: unbiasedness against Exact, and loop references.

The references are deliberately plain: one data point, the joint domain of
its variables enumerated as a Python list, samples drawn with ``random``
(sequentially without replacement, or by Gumbel-top-k for the priority-sampling
threshold), set probabilities by summing over every order with
``itertools.permutations``, and gradients written out by hand for the cost of
``estimator_helpers`` (``f = sin 2a + a^2 + log q(z)``, ``a = Σ z w``). They
share nothing with the library but the problem; mean and total variance of
their draws must match the library's.
"""

from __future__ import annotations

import functools
import itertools
import math
import random

import pytest
import torch

from discograd.estimators import REINFORCE, REINFORCEWOR, Exact, SumAndSample, UnorderedSet
from discograd.estimators.baselines import EMA
from discograd.estimators.without_replacement import _log_ratios
from estimator_helpers import draws, exact, problem, trace_var

NEG = -math.inf
Z_TOL = 4.5


def masked_problem(D: int = 3):
    """B = 3 data points, D variables of C = 4, masked categories (one variable of
    data point 1 has a single possible category)."""
    theta, w = problem("categorical", B=3, D=D, C=4, seed=0)
    with torch.no_grad():
        theta[0, 1, 2] = NEG
        theta[1, 0, :3] = NEG
        theta[2, D - 1, 0] = NEG
    return theta, w


def max_z(g: torch.Tensor, target: torch.Tensor) -> float:
    se = g.std(0) / math.sqrt(g.shape[0])
    diff = (g.mean(0) - target).abs()
    spread = se > 1e-12
    assert torch.allclose(g.mean(0)[~spread], target[~spread], atol=1e-9)
    return float((diff[spread] / se[spread]).max())


ESTIMATORS = {
    "unordered_set": lambda: UnorderedSet(3),
    # k = 4: its weights' tail (see the reference test) leaves finite fourth
    # moments, so the standard errors of the z-test are themselves reliable.
    "reinforce_wor": lambda: REINFORCEWOR(4),
    "sum_and_sample": lambda: SumAndSample(3),
    "sum_and_sample_rloo": lambda: SumAndSample(2, "rloo"),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_unbiased_against_exact(name):
    """z-test of 20,000 vectorised draws (θ and the decoder weights) against Exact:
    D = 3 variables of C = 4, masked categories, log q inside f, 3 data points."""
    theta, w = masked_problem()
    target = exact("categorical", theta, w)
    g, out = draws(ESTIMATORS[name](), "categorical", theta, w, 20_000, seed=11)
    z = max_z(g, target)
    print(f"{name}: max |z| = {z:.2f} over {g.shape[1]} coordinates, n_evals = {out.n_evals}")
    assert z < Z_TOL


def test_value_is_unbiased_and_n_evals():
    theta, w = masked_problem(D=2)
    from estimator_helpers import cost, dist

    q = dist("categorical", theta.detach())
    f = cost("categorical", q, w.detach())
    truth = Exact()(f, q).value
    n = 10_000
    big = theta.detach().expand(n, -1, -1, -1)
    qn = dist("categorical", big)
    fn = cost("categorical", qn, w.detach())
    for est, evals in [(UnorderedSet(3), 3), (REINFORCEWOR(3), 3), (SumAndSample(2, "rloo"), 4)]:
        out = est(fn, qn, generator=torch.Generator().manual_seed(4))
        assert out.n_evals == evals
        v = out.value.double()
        z = float(((v.mean(0) - truth) / (v.std(0) / math.sqrt(n))).abs().max())
        print(f"{type(est).__name__}: value max |z| = {z:.2f}")
        assert z < Z_TOL


def test_all_possible_configurations_drawn_gives_the_exact_gradient():
    """A data point with at most k possible configurations: every draw is Exact's."""
    theta, w = problem("categorical", B=2, D=2, C=4, seed=3)
    with torch.no_grad():
        theta[:, 0, 1:] = NEG  # variable 0 certain: 3 or 4 configurations left
        theta[0, 1, 3] = NEG
    target = exact("categorical", theta, w)
    for est in (UnorderedSet(4), REINFORCEWOR(4), REINFORCEWOR(4, True), SumAndSample(4)):
        g, _ = draws(est, "categorical", theta, w, 50, seed=1)
        torch.testing.assert_close(g, target.expand_as(g), atol=1e-9, rtol=1e-7)


def test_sum_and_sample_never_worse_than_its_base():
    """Rao-Blackwellising the single-sample REINFORCE (b = 0) lowers its variance."""
    theta, w = masked_problem(D=2)
    rb, _ = draws(SumAndSample(2, center=False), "categorical", theta, w, 20_000, seed=5)
    plain, _ = draws(REINFORCE(), "categorical", theta, w, 20_000, seed=6)
    v_rb, se_rb = trace_var(rb)
    v_plain, se_plain = trace_var(plain)
    print(
        f"trace var: sum-and-sample {v_rb:.3f} ± {se_rb:.3f}, "
        f"REINFORCE {v_plain:.3f} ± {se_plain:.3f}"
    )
    assert v_rb + 4 * math.hypot(se_rb, se_plain) < v_plain


def test_bad_hyper_parameters():
    for bad in (1, 0, 11, 2.0, True):
        with pytest.raises(ValueError, match=f"n_samples={bad!r}"):
            UnorderedSet(bad)  # type: ignore[arg-type]
    for bad in (1, 0, "3"):
        with pytest.raises(ValueError, match="n_samples="):
            REINFORCEWOR(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalize=None"):
        REINFORCEWOR(3, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k=0"):
        SumAndSample(0)
    with pytest.raises(ValueError, match="base='vargrad'"):
        SumAndSample(2, "vargrad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="center=1"):
        SumAndSample(2, center=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="categorical"):
        UnorderedSet(2)(lambda z: z.sum(-1), torch.distributions.Bernoulli(logits=torch.zeros(3)))


def test_sum_and_sample_with_a_baseline_instance_trains_it():
    theta, w = masked_problem(D=2)
    est = SumAndSample(2, REINFORCE(EMA(0.5), n_samples=2))
    g, out = draws(est, "categorical", theta, w, 5_000, seed=2)
    assert out.n_evals == 4
    g, out = draws(est, "categorical", theta, w, 20_000, seed=3)  # baseline now non-zero
    assert float(est.base.baseline.count) == 2  # type: ignore[union-attr]
    z = max_z(g, exact("categorical", theta, w))
    print(f"sum-and-sample with an EMA baseline: max |z| = {z:.2f}")
    assert z < Z_TOL


def test_log_ratios_match_enumeration():
    p = [0.3, 0.1, 0.05, 0.2, 0.15]
    S = list(range(5))

    def prob_set(items, removed):
        total = 0.0
        for order in itertools.permutations(items):
            pr, left = 1.0, 1.0 - sum(p[i] for i in removed)
            for i in order:
                pr *= p[i] / left
                left -= p[i]
            total += pr
        return total

    r1, r2 = _log_ratios(torch.tensor(p, dtype=torch.float64).log()[None])
    for s in S:
        rest = [t for t in S if t != s]
        want = prob_set(rest, [s]) / prob_set(S, [])
        assert math.isclose(float(r1[0, s].exp()), want, rel_tol=1e-12)
        for t in rest:
            want2 = prob_set([u for u in rest if u != t], [s, t]) / prob_set(rest, [s])
            assert math.isclose(float(r2[0, s, t].exp()), want2, rel_tol=1e-12)
        assert float(r2[0, s, s]) == 0.0


# ------------------------------------------------------------------ references


class Reference:
    """One data point: the joint domain, hand-written gradients, and the three algorithms."""

    def __init__(self, theta: torch.Tensor, w: torch.Tensor):
        self.theta = theta.detach().double().tolist()
        self.w = w.detach().double().tolist()
        self.D, self.C = len(self.theta), len(self.theta[0])
        self.probs = []
        for row in self.theta:
            m = max(row)
            e = [math.exp(x - m) if x > NEG else 0.0 for x in row]
            self.probs.append([x / sum(e) for x in e])
        self.domain = [
            z
            for z in itertools.product(range(self.C), repeat=self.D)
            if all(self.probs[d][z[d]] > 0 for d in range(self.D))
        ]
        self.p = {z: math.prod(self.probs[d][z[d]] for d in range(self.D)) for z in self.domain}
        # Plain per-configuration tables, so that 20,000 draws take seconds.
        self.f = functools.cache(self.f)  # type: ignore[method-assign]
        self.grads = functools.cache(self.grads)  # type: ignore[method-assign]

    def f(self, z) -> float:
        a = sum(self.w[d][z[d]] for d in range(self.D))
        return math.sin(2 * a) + a * a + math.log(self.p[z])

    def grads(self, z):
        """∇_θ log q(z) and ∇_w f(z), flattened D*C each."""
        a = sum(self.w[d][z[d]] for d in range(self.D))
        dfa = 2 * math.cos(2 * a) + 2 * a
        score, gw = [], []
        for d in range(self.D):
            for c in range(self.C):
                hit = 1.0 if z[d] == c else 0.0
                score.append(hit - self.probs[d][c])
                gw.append(dfa * hit)
        return score, gw

    def combine(self, terms):
        """Σ over (value weight v, score weight s, z): θ gets (s + v) ∇log q (f holds
        log q), w gets v ∇f."""
        g = [0.0] * (2 * self.D * self.C)
        n = self.D * self.C
        for v, s, z in terms:
            score, gw = self.grads(z)
            for i in range(n):
                g[i] += (s + v) * score[i]
                g[n + i] += v * gw[i]
        return g

    def draw_without_replacement(self, rng: random.Random, k: int):
        left = list(self.domain)
        out = []
        for _ in range(min(k, len(left))):
            z = rng.choices(left, weights=[self.p[x] for x in left])[0]
            out.append(z)
            left.remove(z)
        return out

    def set_prob(self, items, removed) -> float:
        total = 0.0
        for order in itertools.permutations(items):
            pr, left = 1.0, 1.0 - sum(self.p[r] for r in removed)
            for z in order:
                pr *= self.p[z] / left
                left -= self.p[z]
            total += pr
        return total

    def unordered_set(self, rng: random.Random, k: int):
        S = self.draw_without_replacement(rng, k)
        if len(S) < k:  # the whole domain: an exact sum
            mean = sum(self.p[z] * self.f(z) for z in S)
            return self.combine([(self.p[z], self.p[z] * (self.f(z) - mean), z) for z in S])
        PS = self.set_prob(S, [])
        terms = []
        for s in S:
            rest = [t for t in S if t != s]
            P1 = self.set_prob(rest, [s])
            R = P1 / PS
            b = self.p[s] * self.f(s)
            for t in rest:
                R2 = self.set_prob([u for u in rest if u != t], [s, t]) / P1
                b += self.p[t] * R2 * self.f(t)
            terms.append((self.p[s] * R, self.p[s] * R * (self.f(s) - b), s))
        return self.combine(terms)

    def reinforce_wor(self, rng: random.Random, k: int, normalize: bool = False):
        keys = []
        for z in self.domain:
            u = min(max(rng.random(), 1e-300), 1 - 1e-16)
            keys.append((math.log(self.p[z]) - math.log(-math.log(u)), z))
        keys.sort(reverse=True)
        S = [z for _, z in keys[:k]]
        kappa = keys[k][0] if len(keys) > k else NEG
        wt = {}
        for z in S:
            q = 1.0 if kappa == NEG else -math.expm1(-math.exp(math.log(self.p[z]) - kappa))
            wt[z] = self.p[z] / q
        terms = []
        if normalize:
            W = sum(wt.values())
            B = sum(wt[t] * self.f(t) for t in S) / W
            return self.combine([(wt[s] / W, wt[s] / W * (self.f(s) - B), s) for s in S])
        for s in S:
            b = self.p[s] * self.f(s) + sum(wt[t] * self.f(t) for t in S if t != s)
            terms.append((wt[s], wt[s] * (self.f(s) - b), s))
        return self.combine(terms)

    def reinforce_wor_normalized(self, rng: random.Random, k: int):
        return self.reinforce_wor(rng, k, normalize=True)

    def sum_and_sample(self, rng: random.Random, k: int):
        """Plain REINFORCE base (b = 0), one sample from outside the top k."""
        ranked = sorted(self.domain, key=lambda z: -self.p[z])
        top, others = ranked[:k], ranked[k:]
        terms = [(self.p[c], self.p[c] * self.f(c), c) for c in top]
        if others:
            rest = 1.0 - sum(self.p[c] for c in top)
            z = rng.choices(others, weights=[self.p[x] for x in others])[0]
            terms.append((rest, rest * self.f(z), z))
        return self.combine(terms)


def one_point():
    gen = torch.Generator().manual_seed(21)
    theta = 1.2 * torch.randn(2, 4, dtype=torch.float64, generator=gen)
    theta[1, 2] = NEG
    w = torch.randn(2, 4, dtype=torch.float64, generator=gen)
    return theta, w


@pytest.mark.parametrize(
    "name, library, method, k",
    [
        ("unordered_set", UnorderedSet, "unordered_set", 3),
        # The weights p/q grow like exp(kappa), whose tail falls as t^-(k+1): with
        # k = 5 the draws have the finite fourth moments a variance comparison needs.
        ("reinforce_wor", REINFORCEWOR, "reinforce_wor", 5),
        ("sum_and_sample", lambda k: SumAndSample(k, center=False), "sum_and_sample", 3),
        (
            "reinforce_wor_normalized",
            lambda k: REINFORCEWOR(k, normalize=True),
            "reinforce_wor_normalized",
            3,
        ),
    ],
)
def test_matches_the_loop_reference_in_mean_and_variance(name, library, method, k):
    theta, w = one_point()
    n = 20_000
    ref = Reference(theta, w)
    rng = random.Random(7)
    algo = getattr(ref, method)
    r = torch.tensor([algo(rng, k) for _ in range(n)], dtype=torch.float64)
    g, _ = draws(library(k), "categorical", theta[None], w, n, seed=8)
    se = torch.sqrt(g.var(0) / n + r.var(0) / n)
    spread = se > 1e-12
    z = float(((g.mean(0) - r.mean(0)).abs()[spread] / se[spread]).max())
    v_lib, se_lib = trace_var(g)
    v_ref, se_ref = trace_var(r)
    ratio = v_lib / v_ref
    se_ratio = ratio * math.hypot(se_lib / v_lib, se_ref / v_ref)
    print(
        f"{name}: mean max |z| = {z:.2f}; trace var library {v_lib:.4f} ± {se_lib:.4f}, "
        f"reference {v_ref:.4f} ± {se_ref:.4f}, ratio {ratio:.3f} ± {se_ratio:.3f}"
    )
    assert z < Z_TOL
    assert abs(ratio - 1) < Z_TOL * se_ratio


def test_reference_is_exact_in_expectation():
    """The references' expectation, by enumerating every ordered draw, is Exact's gradient
    (UnorderedSet): the loop algorithm itself is unbiased, not only matched."""
    theta, w = one_point()
    ref = Reference(theta, w)
    target = exact("categorical", theta[None], w)
    k = 3
    total = [0.0] * len(target)
    for order in itertools.permutations(ref.domain, k):
        pr, left = 1.0, 1.0
        for z in order:
            pr *= ref.p[z] / left
            left -= ref.p[z]

        class Fixed(random.Random):
            seq = list(order)

            def choices(self, population, weights=None, k=1):
                return [self.seq.pop(0)]

        g = ref.unordered_set(Fixed(), k)
        total = [t + pr * x for t, x in zip(total, g, strict=True)]
    torch.testing.assert_close(
        torch.tensor(total, dtype=torch.float64), target, rtol=1e-9, atol=1e-9
    )
