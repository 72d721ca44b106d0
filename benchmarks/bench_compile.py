"""Eager vs ``torch.compile`` (default mode, inductor) on CPU: sampling ops and training steps.

Run by hand (about 2-3 minutes on 2 cores, most of it compilation):

    PYTHONPATH=src python benchmarks/bench_compile.py [--repeats 15] [--threads N]

What it measures, in one process, eager and compiled side by side:

* ``gumbel_softmax`` soft and hard (straight-through), forward only (logits
  without gradient), float32 at 4096x1024 and 256x50257 (a vocabulary-sized
  row). Compiled with inductor's defaults, i.e. ``fallback_random=False``: the
  uniforms come from inductor's Philox generator, generated inside the fused
  kernel. That is the fast path, and the compiled draws differ from eager's
  stream (with ``fallback_random=True`` they equal eager's, see
  tests/test_compile.py, at the cost of materialising ``torch.rand``).
* One training step of a small categorical VAE: batch 200, 20 categorical
  latents with 10 categories from a linear encoder of 784 binary pixels, an MLP
  decoder 200-256-784 whose Bernoulli negative log-likelihood is ``f``; the
  estimators REINFORCE with an EMA baseline, RLOO(4) and VarGrad(4). The
  compiled function returns the loss (estimator call, ``f``, surrogate);
  ``backward()`` (running the compiled backward graph) and an Adam step follow
  outside it. The timed step includes both.

"compile" is the wall time of the first compiled call (tracing and code
generation, on a warm or cold inductor cache: whatever this machine has);
"eager" and "compiled" are medians over ``--repeats`` calls after two warm-up
calls, eager and compiled calls alternating; "ratio" is eager / compiled (above
1: compiled is faster). On a shared machine, run it twice and compare.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch._dynamo
from _machine import cpu_name
from torch import Tensor, nn
from torch.distributions import Categorical, Independent

import discograd
from discograd.baselines import EMA
from discograd.estimators import REINFORCE, RLOO, Estimator, VarGrad


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


Row = tuple[str, float, float, float]  # name, eager s, compile s, compiled s


def compare(
    eager: Callable[[], object], compiled: Callable[[], object], repeats: int
) -> tuple[float, float, float]:
    """(eager s, compile s, compiled s): the first compiled call, then medians.

    Eager and compiled calls alternate, so load from other processes on a shared
    machine falls on both alike.
    """
    compile_s = timed(compiled)
    for _ in range(2):
        eager(), compiled()
    pairs = [(timed(eager), timed(compiled)) for _ in range(repeats)]
    return (
        statistics.median(e for e, _ in pairs),
        compile_s,
        statistics.median(c for _, c in pairs),
    )


def bench_gumbel_softmax(repeats: int) -> Iterator[Row]:
    for shape in ((4096, 1024), (256, 50257)):
        logits = torch.randn(shape)
        for hard in (False, True):
            sample = functools.partial(discograd.gumbel_softmax, logits, tau=0.5, hard=hard)
            torch._dynamo.reset()
            compiled = torch.compile(discograd.gumbel_softmax, dynamic=False)
            times = compare(
                sample, functools.partial(compiled, logits, tau=0.5, hard=hard), repeats
            )
            yield (f"gumbel_softmax {'hard' if hard else 'soft'} {shape[0]}x{shape[1]}", *times)


class VAE(nn.Module):
    """Categorical VAE pieces: linear encoder to ``D x C`` logits, MLP decoder."""

    def __init__(self, pixels: int = 784, D: int = 20, C: int = 10, hidden: int = 256) -> None:
        super().__init__()
        self.D, self.C = D, C
        self.encoder = nn.Linear(pixels, D * C)
        self.decoder = nn.Sequential(nn.Linear(D * C, hidden), nn.ReLU(), nn.Linear(hidden, pixels))

    def loss(self, est: Estimator, x: Tensor) -> Tensor:
        logits = self.encoder(x).view(x.shape[0], self.D, self.C)
        q = Independent(Categorical(logits=logits), 1)

        def f(z: Tensor) -> Tensor:  # negative log-likelihood of x, one per sample and row
            out = self.decoder(z.flatten(-2))
            nll = nn.functional.binary_cross_entropy_with_logits(
                out, x.expand_as(out), reduction="none"
            )
            return nll.sum(-1)

        out = est(f, q)
        loss = out.loss.mean()
        return loss if out.cv_loss is None else loss + out.cv_loss


def training_step(base: VAE, est: Estimator, x: Tensor, compile_it: bool) -> Callable[[], None]:
    """A step on a copy of ``base``: loss (compiled or not), backward, Adam."""
    model = copy.deepcopy(base)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn: Callable[[Estimator, Tensor], Tensor] = model.loss
    if compile_it:
        loss_fn = torch.compile(model.loss, dynamic=False)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(est, x).backward()
        opt.step()

    return step


def bench_training(repeats: int) -> Iterator[Row]:
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((200, 784), 0.3))
    makers: dict[str, Callable[[], Estimator]] = {
        "REINFORCE+EMA": lambda: REINFORCE(EMA(0.9)),
        "RLOO(4)": lambda: RLOO(4),
        "VarGrad(4)": lambda: VarGrad(4),
    }
    for name, make in makers.items():
        base = VAE()
        torch._dynamo.reset()
        eager = training_step(base, make(), x, compile_it=False)
        compiled = training_step(base, make(), x, compile_it=True)
        yield (f"train step {name}, B=200, 20x10", *compare(eager, compiled, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per case")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, CPU: {cpu_name()}, threads: {torch.get_num_threads()}, "
        f"repeats: {args.repeats}, compile: inductor, mode default, fallback_random False"
    )
    print()
    print("| case | eager ms | compile s (first call) | compiled ms | ratio eager/compiled |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for bench in (bench_gumbel_softmax, bench_training):
        for name, eager_s, compile_s, comp_s in bench(args.repeats):
            print(
                f"| {name} | {1e3 * eager_s:.2f} | {compile_s:.1f} | {1e3 * comp_s:.2f} "
                f"| {eager_s / comp_s:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
