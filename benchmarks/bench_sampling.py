"""Sampling speed: discograd's Gumbel ops against torch's, same tensors, same run.

Run (CPU; a CUDA section is added when a GPU is visible):

    python benchmarks/bench_sampling.py                  # both sizes, forward and fwd+bwd
    python benchmarks/bench_sampling.py --quick          # fewer repeats
    python benchmarks/bench_sampling.py --threads 1      # pin intra-op threads

What is timed, for float32 logits of 4096 x 1024 and 256 x 50257:

* ``dg.gumbel_softmax`` soft and hard, ``dg.gumbel_max`` and
  ``discograd.distributions.Concrete(...).rsample()`` (in "forward" the
  distribution is built once outside the timer; in "fwd+bwd" it is built inside,
  as a model builds it every step),
* ``dg.gumbel_top_k`` for k = 2 and 8 (forward only) against ``torch.topk`` of
  torch-generated Gumbel-perturbed logits, ``-log(-log(rand)) + logits``,
* ``RelaxedSubset(logits, k=8, temperature=1).rsample()`` (Xie & Ermon's relaxed
  top-k: one Gumbel draw, k masked softmaxes) against k calls of
  ``dg.gumbel_softmax`` / ``F.gumbel_softmax`` (the outputs summed, the backward
  through all k), and relaxit's ``GumbelSoftmaxTopK`` when relaxit is importable;
  the target is a ratio above 1/1.5 = 0.67 against the k calls,
* against ``torch.nn.functional.gumbel_softmax`` with the same ``hard`` flag
  (``gumbel_max`` and ``Concrete.rsample`` against F.gumbel_softmax hard / soft,
  plus the ``torch.distributions`` sampler that does the same job),
* ``HardConcrete(2/3, logits).rsample()`` (4096 x 1024 only) against
  ``BinaryConcrete(2/3, logits).rsample()`` (target: within 1.5x, printed as
  "HardConcrete / BinaryConcrete" under each table) and against relaxit's
  ``HardConcrete`` when ``import relaxit`` works (it is not a dependency).

"forward" times the sample alone on logits without gradient; "fwd+bwd" gives
the logits ``requires_grad`` and times the sample plus a backward pass of
``(y * w).sum()``. Each call is timed separately, the contenders interleaved
round-robin so machine noise hits all of them alike, and the median reported.
ratio = torch / discograd: above 1 means discograd is faster. On CUDA the
table adds a device-to-device copy of the same tensor (the memory-bound floor)
and times with CUDA events.

Where discograd's speed comes from on CPU: torch's ``F.gumbel_softmax`` draws
with ``exponential_()``, several times slower than ``uniform_()``; discograd draws
uniforms, in parallel chunks for large tensors (``discograd._rng``), and turns
them into perturbed scores in place (no temporaries of the full size).
``gumbel_top_k`` draws far fewer Gumbels than there are logits: one per block
of about sqrt(C/k) categories, then only the k best blocks' entries,
conditioned on their block's maximum (see its docstring).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _machine import cpu_name

import discograd as dg
from discograd.distributions import BinaryConcrete, Concrete, HardConcrete, RelaxedSubset

try:  # an optional peer, never installed by this project
    from relaxit.distributions import GumbelSoftmaxTopK
except Exception:  # ImportError, or relaxit's own import-time errors
    GumbelSoftmaxTopK = None

K_SUBSET = 8

SHAPES = [(4096, 1024), (256, 50257)]
GATE_SHAPE = (4096, 1024)


def relaxit_hard_concrete() -> tuple[type | None, str]:
    """relaxit's HardConcrete class, or None and the reason it is unavailable."""
    try:
        from relaxit.distributions.HardConcrete import HardConcrete as RelaxitHardConcrete
    except Exception as exc:  # not installed, or its package __init__ is broken
        return None, f"{type(exc).__name__}: {exc}"
    return RelaxitHardConcrete, ""


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def race(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict:
    """Median milliseconds per contender, timed round-robin after one warm-up each."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn, device))
    return {k: 1e3 * statistics.median(v) for k, v in samples.items()}


def contenders(logits: torch.Tensor, backward: bool) -> list[tuple[str, dict]]:
    """(row label, {name: fn}) with discograd first and its peers after."""
    w = torch.randn_like(logits)
    one = torch.tensor(1.0, device=logits.device)
    onehot = torch.distributions.OneHotCategorical(logits=logits)

    def conc() -> Concrete:
        return Concrete(1.0, logits=logits)

    def ref() -> torch.distributions.RelaxedOneHotCategorical:
        return torch.distributions.RelaxedOneHotCategorical(one, logits=logits)

    if not backward:  # built once, outside the timer; with gradients, once per step
        built, built_ref = conc(), ref()
        conc, ref = (lambda: built), (lambda: built_ref)

    def run(sample: Callable[[], torch.Tensor]) -> Callable[[], object]:
        if not backward:
            return sample
        return lambda: torch.autograd.grad((sample() * w).sum(), logits)

    rows = [
        (
            "gumbel_softmax soft",
            {
                "discograd": run(lambda: dg.gumbel_softmax(logits)),
                "F.gumbel_softmax": run(lambda: F.gumbel_softmax(logits)),
            },
        ),
        (
            "gumbel_softmax hard",
            {
                "discograd": run(lambda: dg.gumbel_softmax(logits, hard=True)),
                "F.gumbel_softmax": run(lambda: F.gumbel_softmax(logits, hard=True)),
            },
        ),
        (
            "Concrete.rsample",
            {
                "discograd": run(lambda: conc().rsample()),
                "F.gumbel_softmax": run(lambda: F.gumbel_softmax(logits)),
                "RelaxedOneHotCategorical.rsample": run(lambda: ref().rsample()),
            },
        ),
    ]
    if tuple(logits.shape) == GATE_SHAPE:
        tau = 2.0 / 3.0
        gates = {
            "discograd": run(lambda: HardConcrete(tau, logits=logits).rsample()),
            "BinaryConcrete.rsample": run(lambda: BinaryConcrete(tau, logits=logits).rsample()),
        }
        peer, _ = relaxit_hard_concrete()
        if peer is not None:
            # relaxit draws its uniforms with shape sample_shape + [1] and
            # broadcasts them over alpha's batch, so different logits in one
            # batch would share their noise. It is timed with one logit and
            # sample_shape 4096 x 1024: the same number of independent draws.
            one = logits[:1, :1].reshape(1)
            limits = (torch.tensor(-0.1), torch.tensor(1.1))
            beta = torch.tensor(tau)

            def relaxit_sample() -> torch.Tensor:
                d = peer(one.exp(), beta, limits[1], limits[0])
                return d.rsample(torch.Size(GATE_SHAPE)).reshape(GATE_SHAPE)

            gates["relaxit HardConcrete.rsample"] = run(relaxit_sample)
        rows.append(("HardConcrete.rsample", gates))

    def subset() -> RelaxedSubset:
        return RelaxedSubset(logits, K_SUBSET, 1.0)

    if not backward:
        built_subset = subset()
        subset = lambda: built_subset  # noqa: E731

    def k_calls(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def calls() -> torch.Tensor:
            out = fn()
            for _ in range(K_SUBSET - 1):
                out = out + fn()
            return out

        return calls

    subset_row = {
        "discograd": run(lambda: subset().rsample()),
        f"{K_SUBSET} x dg.gumbel_softmax": run(k_calls(lambda: dg.gumbel_softmax(logits))),
        f"{K_SUBSET} x F.gumbel_softmax": run(k_calls(lambda: F.gumbel_softmax(logits))),
    }
    if GumbelSoftmaxTopK is not None:
        k_t = torch.tensor(K_SUBSET)
        subset_row["relaxit GumbelSoftmaxTopK"] = run(
            lambda: GumbelSoftmaxTopK(logits, k_t, one, hard=False).rsample()
        )
    rows.append((f"RelaxedSubset k={K_SUBSET}", subset_row))
    if not backward:
        rows.insert(
            2,
            (
                "gumbel_max",
                {
                    "discograd": lambda: dg.gumbel_max(logits),
                    "F.gumbel_softmax": lambda: F.gumbel_softmax(logits, hard=True),
                    "OneHotCategorical.sample": lambda: onehot.sample(),
                },
            ),
        )
        for k in (2, 8):
            rows.append(
                (
                    f"gumbel_top_k k={k}",
                    {
                        "discograd": lambda k=k: dg.gumbel_top_k(logits, k),
                        "torch rand + topk": lambda k=k: torch.topk(
                            -torch.log(-torch.log(torch.rand_like(logits))) + logits, k
                        ),
                    },
                )
            )
    return rows


def copier(src: torch.Tensor) -> Callable[[], object]:
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7 repeats instead of 21")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--only", default="", help="time only the ops whose label contains this")
    parser.add_argument("--device", default=None, help="cpu, cuda, or both when omitted")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = 7 if args.quick else 21
    devices = [torch.device(args.device)] if args.device else [torch.device("cpu")]
    if args.device is None and torch.cuda.is_available():
        devices.append(torch.device("cuda"))

    print(
        f"torch {torch.__version__}, discograd {dg.__version__}, CPU: {cpu_name()}, "
        f"{torch.get_num_threads()} intra-op threads"
        + (f", GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    print(
        f"median of {repeats} interleaved calls; ratio = peer / discograd (> 1: discograd faster)"
    )
    for device in devices:
        for backward in (False, True):
            print(f"\n### {device.type}, float32, {'fwd+bwd' if backward else 'forward'}\n")
            notes: list[str] = []
            print("| shape | op | discograd ms | peer | peer ms | ratio |")
            print("| --- | --- | ---: | --- | ---: | ---: |")
            for shape in SHAPES:
                gen = torch.Generator().manual_seed(0)
                logits = torch.randn(shape, generator=gen).to(device)
                if backward:
                    logits.requires_grad_()
                rows = contenders(logits, backward)
                if device.type == "cuda" and not backward:
                    rows.append(("copy (floor)", {"discograd": copier(logits)}))
                for label, fns in rows:
                    if args.only not in label:
                        continue
                    ms = race(fns, repeats, device)
                    ours = ms["discograd"]
                    if label == "HardConcrete.rsample":
                        notes.append(
                            f"{shape[0]}x{shape[1]}: HardConcrete / BinaryConcrete = "
                            f"{ours / ms['BinaryConcrete.rsample']:.2f} (target <= 1.5)"
                        )
                    peers = [k for k in fns if k != "discograd"] or ["-"]
                    for i, peer in enumerate(peers):
                        head = (
                            f"| {shape[0]}x{shape[1]} | {label} | {ours:.2f}" if i == 0 else "| | |"
                        )
                        if peer == "-":
                            print(f"{head} | - | - | - |")
                        else:
                            print(f"{head} | {peer} | {ms[peer]:.2f} | {ms[peer] / ours:.2f} |")
            if notes:
                print()
                for note in notes:
                    print(note)
                if relaxit_hard_concrete()[0] is None:
                    print(f"relaxit not importable ({relaxit_hard_concrete()[1]}): no relaxit row")


if __name__ == "__main__":
    main()
