"""The ``discograd`` command (also ``python -m discograd``).

Subcommands:

* ``demo`` — samples relaxed and exact categorical variables, computes an exact
  gradient by enumeration, and prints both: a thirty-second tour of the API.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

__all__ = ["main"]


def _fmt(values: torch.Tensor, digits: int = 3) -> str:
    return "[" + " ".join(f"{float(v):.{digits}f}" for v in values) + "]"


def _demo(args: argparse.Namespace) -> int:
    from torch.distributions import Independent, OneHotCategorical

    import discograd as dg
    from discograd.diagnostics import gradient_stats

    gen = torch.Generator().manual_seed(args.seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    logits = torch.tensor([2.0, 0.5, 0.0, -1.0])
    print(f"discograd {dg.__version__} (torch {torch.__version__})\n")
    print(f"logits {_fmt(logits)}  probabilities {_fmt(torch.softmax(logits, -1))}")
    print("\nGumbel-Softmax samples (three per temperature):")
    for tau in (5.0, 1.0, 0.1):
        y = dg.gumbel_softmax(logits.expand(3, -1), tau=tau, generator=gen)
        print(f"  tau={tau:<4}  " + "  ".join(_fmt(row) for row in y))
    y = dg.gumbel_softmax(logits.expand(3, -1), tau=0.5, hard=True, generator=gen)
    print("  hard      " + "  ".join(_fmt(row, 0) for row in y) + "  (straight-through)")

    # D = 3 categorical variables with C = 4 categories share one nonlinear cost.
    theta = torch.randn(3, 4, generator=gen).requires_grad_()
    weights = torch.tensor([1.0, -1.0, 2.0, 0.5])

    def f(z: torch.Tensor) -> torch.Tensor:
        return ((z * weights).sum((-1, -2)) - 1.5) ** 2

    q = Independent(OneHotCategorical(logits=theta), 1)
    out = dg.Exact()(f, q)
    out.loss.sum().backward()
    print("\nExact: E[f(z)], z ~ 3 independent Categorical(4), f(z) = (sum_d w.z_d - 1.5)^2")
    print(f"  E[f] = {out.value.item():.6f} from {out.n_evals} evaluations of f")
    print(f"  dE[f]/dtheta =\n{theta.grad}")
    stats = gradient_stats(
        dg.Exact(), f, Independent(OneHotCategorical(logits=theta), 1), theta, args.draws
    )
    print(
        f"\ngradient_stats(Exact, {args.draws} draws): bias={stats.bias:.2e} "
        f"variance={stats.variance:.2e} cosine={stats.cosine:.4f} n_evals={stats.n_evals:g}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discograd",
        description="Gradients through discrete random variables: estimators and diagnostics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = sub.add_parser(
        "demo",
        help="sample, compute an exact gradient, print both",
        description="A short tour: Gumbel-Softmax samples, an exact gradient by enumeration.",
        epilog="example: discograd demo --seed 1",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--draws", type=int, default=20, help="draws for gradient_stats (default: 20)"
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError) as err:
        print(f"discograd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
