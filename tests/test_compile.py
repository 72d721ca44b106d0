"""torch.compile: the sample-level ops and the score-function estimators trace into
one graph (``fullgraph=True``) and give the eager results under the same seed.

Inductor replaces random ops by its own Philox generator unless
``torch._inductor.config.fallback_random`` is set; with it, compiled code draws
from torch's global stream exactly as eager code does, so eager and compiled
results can be compared value by value. The real user path (the default
inductor backend, C++ code generated and built) runs for ``gumbel_softmax`` and
for REINFORCE with an EMA baseline (whose buffer updates once broke inductor's
backward); ``gumbel_max``, ``Concrete`` and the other estimators use
``backend="aot_eager"`` (the same Dynamo capture and AOTAutograd forward and
backward graphs, without code generation) to keep this file fast on a small CPU.

An explicit ``generator=`` is not covered: Dynamo cannot pass a
``torch.Generator`` into a graph, so every random op that takes one is a graph
break (it runs eagerly; results are still correct).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent

import discograd
from discograd.baselines import EMA, Learned
from discograd.distributions import Concrete
from discograd.estimators import NVIL, REINFORCE, RLOO, Estimator, VarGrad

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """A clean Dynamo cache, and compiled random ops on torch's own stream.

    Dynamo's first use in a process turns off ``torch.distributions`` argument
    validation for good (``Distribution.set_default_validate_args(False)``); the
    setting is restored afterwards, so tests that run later still validate.
    """
    validate = Distribution._validate_args
    torch._dynamo.reset()
    Distribution.set_default_validate_args(False)
    try:
        with torch._inductor.config.patch(fallback_random=True):
            yield
    finally:
        torch._dynamo.reset()
        Distribution.set_default_validate_args(validate)


def _assert_close(compiled: Tensor, eager: Tensor) -> None:
    torch.testing.assert_close(compiled, eager, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------- sample-level ops


def _gumbel_softmax_ops(logits: Tensor, w: Tensor) -> tuple[Tensor, ...]:
    soft = discograd.gumbel_softmax(logits, tau=0.5)
    hard = discograd.gumbel_softmax(logits, tau=0.5, hard=True)
    return (w * soft).sum() + (w * hard).sum(), soft, hard


def _other_sample_ops(logits: Tensor, w: Tensor) -> tuple[Tensor, ...]:
    onehot = discograd.gumbel_max(logits)
    relaxed = Concrete(0.7, logits=logits).rsample((2,))
    return (w * relaxed).sum(), onehot, relaxed


def _run_sample_ops(fn: Callable[..., tuple[Tensor, ...]], seed: int) -> list[Tensor]:
    """Outputs of ``fn`` and the gradient of its first output, on logits with a masked entry."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen)
    logits[0, 1] = -torch.inf
    logits.requires_grad_()
    w = torch.randn(6, 5, generator=gen)
    torch.manual_seed(seed)
    loss, *samples = fn(logits, w)
    loss.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    return [t.detach() for t in (loss, *samples, logits.grad)]


def _compare_sample_ops(fn: Callable[..., tuple[Tensor, ...]], backend: str) -> list[Tensor]:
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    for seed in (1, 2):  # the first call compiles, the second reuses the graph
        expected = _run_sample_ops(fn, seed)
        got = _run_sample_ops(compiled, seed)
        for g, e in zip(got, expected, strict=True):
            _assert_close(g, e)
    return got


def test_gumbel_softmax_soft_and_hard_match_eager_under_inductor():
    _, soft, hard, _ = _compare_sample_ops(_gumbel_softmax_ops, "inductor")
    assert torch.equal(hard.sum(-1), torch.ones(6)) and float(hard[0, 1]) == 0.0
    assert float(soft[0, 1]) == 0.0  # the masked category


def test_gumbel_max_and_concrete_match_eager():
    _, onehot, relaxed, _ = _compare_sample_ops(_other_sample_ops, "aot_eager")
    assert torch.equal(onehot.sum(-1), torch.ones(6)) and float(onehot[0, 1]) == 0.0
    assert float(relaxed[:, 0, 1].abs().max()) == 0.0


def test_compiled_sampling_draws_new_noise_each_call():
    # fallback_random=False (inductor's default, Philox): different from eager's
    # stream, but still fresh noise per call and valid samples.
    with torch._inductor.config.patch(fallback_random=False):
        compiled = torch.compile(discograd.gumbel_softmax, fullgraph=True)
        logits = torch.zeros(64, 8)
        a, b = compiled(logits, 0.5, True), compiled(logits, 0.5, True)
    assert torch.equal(a.sum(-1), torch.ones(64)) and not torch.equal(a, b)


# ----------------------------------------------------------------- estimators

B, D, C, H = 3, 4, 5, 8


class _Problem:
    """Categorical latents ``[B, D, C]`` and a small MLP decoder as the cost ``f``."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.theta = torch.randn(B, D, C, generator=gen).requires_grad_()
        self.decoder = nn.Sequential(nn.Linear(D * C, H), nn.Tanh(), nn.Linear(H, 1))
        with torch.no_grad():
            for p in self.decoder.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def f(self, z: Tensor) -> Tensor:
        return self.decoder(z.flatten(-2)).squeeze(-1) ** 2

    def params(self, est: Estimator) -> list[Tensor]:
        return [self.theta, *self.decoder.parameters(), *est.parameters()]


def _step(est: Estimator, problem: _Problem) -> tuple[Tensor, Tensor]:
    q = Independent(Categorical(logits=problem.theta), 1)
    out = est(problem.f, q)
    loss = out.loss.sum()
    if out.cv_loss is not None:
        loss = loss + out.cv_loss
    return loss, out.value


def _train(make: Callable[[], Estimator], backend: str | None, n_steps: int) -> list[Tensor]:
    """Losses, values, gradients and estimator state of ``n_steps`` seeded steps."""
    torch.manual_seed(0)
    est, problem = make(), _Problem()
    step: Callable[[Estimator, _Problem], tuple[Tensor, Tensor]] = _step
    if backend is not None:
        step = torch.compile(_step, backend=backend, fullgraph=True)
    record: list[Tensor] = []
    for i in range(n_steps):
        torch.manual_seed(100 + i)
        loss, value = step(est, problem)
        params = problem.params(est)
        grads = torch.autograd.grad(loss, params)
        record += [loss.detach(), value, *grads]
        with torch.no_grad():  # move, so the next step sees new logits and decoder
            for p, g in zip(params, grads, strict=True):
                p.sub_(0.01 * g)
    return record + [t.detach().clone() for t in est.state_dict().values()]


ESTIMATORS: dict[str, tuple[Callable[[], Estimator], str]] = {
    "REINFORCE+EMA": (lambda: REINFORCE(EMA(0.8), n_samples=2), "inductor"),
    "REINFORCE": (lambda: REINFORCE(), "aot_eager"),
    "REINFORCE+Learned": (
        lambda: REINFORCE(Learned(nn.Sequential(nn.Linear(D * C, 4), nn.Tanh(), nn.Linear(4, 1)))),
        "aot_eager",
    ),
    "NVIL": (
        lambda: NVIL(nn.Sequential(nn.Linear(D * C, 4), nn.Tanh(), nn.Linear(4, 1))),
        "aot_eager",
    ),
    "RLOO": (lambda: RLOO(4), "aot_eager"),
    "VarGrad": (lambda: VarGrad(4), "aot_eager"),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_step_matches_eager(name: str):
    make, backend = ESTIMATORS[name]
    expected = _train(make, None, 3)
    got = _train(make, backend, 3)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        _assert_close(g, e)


def test_ema_under_compile_freezes_in_eval_mode_and_rejects_non_finite_costs():
    est = REINFORCE(EMA(0.5))
    problem = _Problem()
    step = torch.compile(_step, backend="aot_eager", fullgraph=True)
    step(est, problem)
    assert int(est.baseline.count) == 1 and est.baseline.value != 0.0
    est.eval()  # a recompile: observe() is a no-op in eval mode
    before = est.baseline.value
    step(est, problem)
    assert est.baseline.value == before and int(est.baseline.count) == 1
    est.train()
    with torch.no_grad():
        problem.decoder[-1].bias.fill_(torch.inf)
    # Eager raises ValueError; compiled code asserts in the graph (RuntimeError).
    with pytest.raises(RuntimeError, match="not finite"):
        step(est, problem)
    assert est.baseline.value == before and int(est.baseline.count) == 1
