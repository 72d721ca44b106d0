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
  through all k); the target is a ratio above 1/1.5 = 0.67 against the k calls,
* ``RelaxedSubset(logits, k=8, 1).rsample(hard=True)`` against relaxit's
  ``GumbelSoftmaxTopK(probs=logits, K=8, tau=1, hard=True)`` when relaxit is
  importable (see "relaxit" below),
* against ``torch.nn.functional.gumbel_softmax`` with the same ``hard`` flag
  (``gumbel_max`` and ``Concrete.rsample`` against F.gumbel_softmax hard / soft,
  plus the ``torch.distributions`` sampler that does the same job),
* ``HardConcrete(2/3, logits).rsample()`` (4096 x 1024 only) against
  ``BinaryConcrete(2/3, logits).rsample()`` (target: within 1.5x, printed as
  "HardConcrete / BinaryConcrete" under each table) and against relaxit's
  ``HardConcrete`` when relaxit is importable.

relaxit (never a dependency of this project: ``pip install --no-deps relaxit
pyro-ppl pyro-api opt_einsum`` into a separate environment) is compared only on
the same distribution, checked in the same run before the tables (z-scores of
P(z=0), P(z=1), E[z] per logit for the gates; k-hot inclusion frequencies for
top-k). Mapping its parameters onto discograd's:

* ``HardConcrete(alpha, beta, xi, gamma)`` is Louizos et al.'s gate with
  ``alpha = exp(logits)``, ``beta = temperature``, ``(gamma, xi) = limits``.
  Its uniforms have shape ``sample_shape + [1]`` and broadcast against
  ``alpha``, so it is given ``alpha`` of shape ``4096 x 1024 x 1`` and
  ``sample_shape = 4096 x 1024``: one independent uniform per logit, the same
  law as discograd's ``HardConcrete(2/3, logits)`` entry by entry.
* ``GumbelSoftmaxTopK`` perturbs ``self.probs`` (not the logits) in its
  ``rsample``, so with ``logits=theta`` it draws from ``softmax(softmax(theta))``.
  It is given ``probs=theta`` with ``validate_args=False``, which makes it draw
  k items without replacement from ``softmax(theta)`` (k rounds of
  ``F.gumbel_softmax(hard=True)``, fresh noise each round, the pick masked by
  subtracting 1e10): the law of ``RelaxedSubset.rsample(hard=True)``'s k-hot
  forward value. The soft samples differ (relaxit masks by subtracting
  ``1e10 * a`` from the keys, Xie & Ermon add ``log(1 - a)``), so the soft row
  has no relaxit entry; the check prints how far the soft means are apart.

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
from importlib.metadata import version
from types import ModuleType

import torch
import torch.nn.functional as F
from _machine import cpu_name
from torch import Tensor

import discograd as dg
from discograd.distributions import BinaryConcrete, Concrete, HardConcrete, RelaxedSubset

K_SUBSET = 8

SHAPES = [(4096, 1024), (256, 50257)]
GATE_SHAPE = (4096, 1024)


TAU_GATE = 2.0 / 3.0
LIMITS = (-0.1, 1.1)


def import_relaxit() -> ModuleType | None:
    """``relaxit.distributions``, or None after one printed line (an optional peer)."""
    try:
        import relaxit.distributions as rx
    except ImportError as exc:
        print(
            f"relaxit is not installed ({exc}): no relaxit rows; to compare with it: "
            "`pip install --no-deps relaxit pyro-ppl pyro-api opt_einsum`"
        )
        return None
    return rx


def relaxit_gate(rx: ModuleType, logits: Tensor) -> Tensor:
    """relaxit's HardConcrete with discograd's ``HardConcrete(TAU_GATE, logits)`` law."""
    # One uniform per logit: relaxit's uniforms are sample_shape + [1] and
    # broadcast against alpha, so alpha gets a trailing 1 and the sample shape
    # is the logits' shape.
    d = rx.HardConcrete(
        logits.exp().unsqueeze(-1),
        torch.tensor(TAU_GATE),
        torch.tensor(LIMITS[1]),
        torch.tensor(LIMITS[0]),
    )
    return d.rsample(logits.shape).squeeze(-1)


def relaxit_top_k(rx: ModuleType, logits: Tensor, k: int, hard: bool) -> Tensor:
    """relaxit's GumbelSoftmaxTopK drawing k items without replacement from softmax(logits)."""
    # Its rsample perturbs self.probs: handing the logits in as probs (past the
    # unit-interval check) is what makes it sample softmax(logits).
    d = rx.GumbelSoftmaxTopK(
        probs=logits, K=torch.tensor(k), tau=torch.tensor(1.0), hard=hard, validate_args=False
    )
    return d.rsample()


def _z(a: Tensor, b: Tensor, var_a: Tensor, var_b: Tensor, n: int) -> float:
    return float(((a - b).abs() / ((var_a + var_b) / n).sqrt().clamp_min(1e-12)).max())


def check_same_law(rx: ModuleType) -> None:
    """Print z-scores showing that the timed relaxit calls sample discograd's laws."""
    torch.manual_seed(0)
    n = 100_000
    theta = torch.linspace(-3.0, 3.0, 7)
    with torch.no_grad():
        ours = HardConcrete(TAU_GATE, logits=theta.expand(n, 7), limits=LIMITS).rsample()
        theirs = relaxit_gate(rx, theta.expand(n, 7))
    parts = []
    for name, fn in (
        ("P(z=0)", lambda z: (z == 0).double()),
        ("P(z=1)", lambda z: (z == 1).double()),
        ("E[z]", lambda z: z.double()),
    ):
        a, b = fn(ours), fn(theirs)
        z = _z(a.mean(0), b.mean(0), a.var(0), b.var(0), n)
        parts.append(f"{name} max |z| {z:.2f}")
    print(
        f"same law, HardConcrete(2/3, limits=(-0.1, 1.1)) vs relaxit HardConcrete, logits "
        f"-3..3 (7 values), {n} draws each: " + ", ".join(parts)
    )
    n, c, k = 40_000, 16, K_SUBSET
    theta = torch.randn(c, generator=torch.Generator().manual_seed(1))
    rows = theta.expand(n, c)
    with torch.no_grad():
        ours = RelaxedSubset(rows, k, 1.0).rsample(hard=True).double()
        theirs = relaxit_top_k(rx, rows, k, hard=True).double()
        as_logits = rx.GumbelSoftmaxTopK(
            logits=rows, K=torch.tensor(k), tau=torch.tensor(1.0), hard=True
        ).rsample()
        soft_ours = RelaxedSubset(rows, k, 1.0).rsample().double()
        soft_theirs = relaxit_top_k(rx, rows, k, hard=False).double()

    def z(a: Tensor, b: Tensor) -> float:
        return _z(a.mean(0), b.mean(0), a.var(0), b.var(0), n)

    print(
        f"same law, RelaxedSubset(k={k}).rsample(hard=True) vs relaxit GumbelSoftmaxTopK("
        f"probs=logits, hard=True), {c} items, {n} draws: k-hot inclusion frequencies max |z| "
        f"{z(ours, theirs):.2f}; relaxit with logits=logits (its documented argument) "
        f"samples softmax(softmax(logits)): max |z| {z(ours, as_logits.double()):.1f}; "
        f"soft samples (hard=False, not timed): E[y] max |z| {z(soft_ours, soft_theirs):.1f}"
    )


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


def contenders(
    logits: torch.Tensor, backward: bool, rx: ModuleType | None
) -> list[tuple[str, dict]]:
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
        tau = TAU_GATE
        gates = {
            "discograd": run(lambda: HardConcrete(tau, logits=logits).rsample()),
            "BinaryConcrete.rsample": run(lambda: BinaryConcrete(tau, logits=logits).rsample()),
        }
        if rx is not None:
            gates["relaxit HardConcrete.rsample"] = run(lambda: relaxit_gate(rx, logits))
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
    rows.append((f"RelaxedSubset k={K_SUBSET}", subset_row))
    if rx is not None:
        rows.append(
            (
                f"RelaxedSubset k={K_SUBSET} hard",
                {
                    "discograd": run(lambda: subset().rsample(hard=True)),
                    "relaxit GumbelSoftmaxTopK hard": run(
                        lambda: relaxit_top_k(rx, logits, K_SUBSET, hard=True)
                    ),
                },
            )
        )
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
    parser.add_argument(
        "--only",
        default="",
        help="time only the ops whose label contains this (comma-separated: any of these)",
    )
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
    rx = import_relaxit()
    if rx is not None:
        print(f"relaxit {version('relaxit')} (an optional peer, not a dependency)")
        check_same_law(rx)
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
                rows = contenders(logits, backward, rx)
                if device.type == "cuda" and not backward:
                    rows.append(("copy (floor)", {"discograd": copier(logits)}))
                for label, fns in rows:
                    if not any(part in label for part in args.only.split(",")):
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


if __name__ == "__main__":
    main()
