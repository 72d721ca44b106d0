"""The chunk-parallel uniform generator behind every large CPU draw (discograd._rng)."""

from __future__ import annotations

import math
import multiprocessing

import pytest
import torch

import discograd as dg
from discograd import _rng

from conftest import Z_TOL, chi_square_pvalue

BIG = 2 * _rng.MIN_NUMEL + 12_345  # several chunks and a ragged last one


def _big(generator=None, dtype=torch.float32):
    return _rng.uniform_(torch.empty(BIG, dtype=dtype), generator)


def test_layout_check_accepts_this_torch():
    # If this fails the fast path is off (every draw serial): torch changed
    # CPUGeneratorImplState and _rng needs a look.
    assert _rng._state_template() is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_are_uniform(dtype):
    u = _big(torch.Generator().manual_seed(0), dtype)
    assert u.dtype == dtype and bool(((u >= 0) & (u < 1)).all())
    counts = torch.histc(u.double(), bins=1000, min=0.0, max=1.0)
    assert chi_square_pvalue(counts, torch.full((1000,), BIG / 1000.0)) > 1e-4
    # mean and variance of U(0,1): 1/2 and 1/12, z-tested.
    z_mean = (u.double().mean() - 0.5) / math.sqrt(1 / 12 / BIG)
    assert abs(float(z_mean)) < Z_TOL
    # Each chunk on its own: none left unfilled or drawn from a degenerate state.
    chunks = u[: (BIG // _rng.CHUNK) * _rng.CHUNK].double().view(-1, _rng.CHUNK)
    z = (chunks.mean(1) - 0.5) / math.sqrt(1 / 12 / _rng.CHUNK)
    assert float(z.abs().max()) < Z_TOL


def test_chunks_are_uncorrelated_and_distinct():
    u = _big(torch.Generator().manual_seed(1)).double()
    chunks = u[: (BIG // _rng.CHUNK) * _rng.CHUNK].view(-1, _rng.CHUNK)
    c = chunks - 0.5
    corr = (c[1:] * c[:-1]).mean(1) / (1 / 12)  # lag-one-chunk correlation
    assert float(corr.abs().max()) * math.sqrt(_rng.CHUNK) < Z_TOL
    # Within a chunk, successive draws are uncorrelated too.
    lag1 = (c[:, 1:] * c[:, :-1]).mean() / (1 / 12)
    assert abs(float(lag1)) * math.sqrt(c.numel()) < Z_TOL


def test_reproducible_and_independent_of_the_thread_count():
    a = _big(torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        b = _big(torch.Generator().manual_seed(5))
    finally:
        torch.set_num_threads(before)
    c = _big(torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(9)
    d = _big()
    e = _big()
    torch.manual_seed(9)
    assert torch.equal(_big(), d) and not torch.equal(d, e)  # default generator advances


def test_small_tensors_get_torch_rand_exactly():
    n = _rng.MIN_NUMEL - 1
    a = _rng.uniform_(torch.empty(n), torch.Generator().manual_seed(2))
    assert torch.equal(a, torch.rand(n, generator=torch.Generator().manual_seed(2)))
    # Also every other case the chunked path leaves alone: non-contiguous output.
    out = torch.empty(BIG, 2)[:, 0]
    b = _rng.uniform_(out, torch.Generator().manual_seed(2))
    assert torch.equal(b, torch.empty(BIG).uniform_(generator=torch.Generator().manual_seed(2)))


def test_falls_back_to_serial_when_the_state_layout_is_unknown(monkeypatch):
    monkeypatch.setattr(_rng, "_state_template", lambda: None)
    a = _big(torch.Generator().manual_seed(4))
    assert torch.equal(a, torch.rand(BIG, generator=torch.Generator().manual_seed(4)))


def test_chunk_states_are_full_random_states():
    # Two parent seeds whose low 32 bits agree must still give different
    # streams: seeds are whole Mersenne Twister states, not 32-bit seeds.
    gens = _rng._chunk_generators(3, torch.Generator().manual_seed(11))
    head = gens[0].get_state()[:24].clone().view(torch.int32).tolist()
    assert head[2:4] == [1, 1]  # left = 1: the first draw regenerates the state
    draws = [torch.rand(8, generator=g) for g in gens]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_inference_mode_and_gumbel_softmax_on_big_tensors():
    logits = torch.randn(BIG // 1000, 1000)
    logits[:, 0] = -math.inf
    with torch.inference_mode():
        y = dg.gumbel_softmax(logits, tau=0.1)
    assert torch.isfinite(y).all() and bool((y[:, 0] == 0).all())
    h = dg.gumbel_softmax(logits.requires_grad_(), hard=True)
    assert bool((h.sum(-1) == 1).all()) and bool((h[:, 0] == 0).all())
    h.mul(torch.randn_like(h)).sum().backward()
    assert torch.isfinite(logits.grad).all()


def _draw_in_child(queue) -> None:
    # As DataLoader workers do: torch's OpenMP pool does not survive a fork.
    torch.set_num_threads(1)
    pool_works = _rng._executor(2).submit(lambda: 7).result(timeout=10) == 7
    queue.put((pool_works, _big(torch.Generator().manual_seed(0))[-1000:].tolist()))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_a_forked_child_gets_a_fresh_thread_pool():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        expected = _big(torch.Generator().manual_seed(0))[-1000:].tolist()  # pool now running
        assert _rng._pool is not None
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_draw_in_child, args=(queue,))
        child.start()
        child.join(timeout=60)
        if child.exitcode is None:
            child.kill()
        assert child.exitcode == 0, "the child hung or crashed drawing after fork"
        assert queue.get(timeout=5) == (True, expected)
    finally:
        torch.set_num_threads(before)
