"""gradient_stats of the score-function and relaxed estimators on two small problems.

Run by hand (CPU, float64, about a minute):

    PYTHONPATH=src python benchmarks/gradient_stats_score_relaxed.py [n_draws]

Problems: (a) 2 data points x 3 categorical variables with 4 categories,
(b) 2 data points x 4 Bernoulli variables; cost f(z) = (w.z - 0.5)^2 + sin(2 w.z)
with fixed random w. The Exact gradient is the reference; relaxed estimators
are biased by design (GumbelSoftmax's bias is against E_q[f], not its relaxed
objective). Prints one markdown table per problem.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent

from discograd.baselines import EMA, Learned
from discograd.diagnostics import gradient_stats
from discograd.estimators import (
    REINFORCE,
    RLOO,
    Exact,
    GumbelRao,
    GumbelSoftmax,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
    VarGrad,
)

D64 = torch.float64


def problem(kind: str):
    gen = torch.Generator().manual_seed(0)
    if kind == "categorical":
        theta = torch.randn(2, 3, 4, dtype=D64, generator=gen).requires_grad_()
        w = torch.randn(3, 4, dtype=D64, generator=gen)
        q = Independent(Categorical(logits=theta), 1)

        def lin(z):
            return (z * w).sum((-1, -2))
    else:
        theta = torch.randn(2, 4, dtype=D64, generator=gen).requires_grad_()
        w = torch.randn(4, dtype=D64, generator=gen)
        q = Independent(Bernoulli(logits=theta), 1)

        def lin(z):
            return (z * w).sum(-1)

    return theta, q, lambda z: (lin(z) - 0.5) ** 2 + torch.sin(2 * lin(z))


def estimators(width: int, f, q):
    torch.manual_seed(0)
    learned = REINFORCE(
        Learned(nn.Sequential(nn.Linear(width, 16), nn.Tanh(), nn.Linear(16, 1)).double())
    )
    opt = torch.optim.Adam(learned.parameters(), lr=0.05)
    ema = REINFORCE(EMA(0.9))
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):  # warm-up: EMA average, Learned regression
        opt.zero_grad()
        learned(f, q, generator=gen).cv_loss.backward()
        opt.step()
        ema(f, q, generator=gen)
    return {
        "Exact": Exact(),
        "REINFORCE": REINFORCE(),
        "REINFORCE+EMA(0.9)": ema,
        "REINFORCE+Learned": learned,
        "REINFORCE(S=4)": REINFORCE(n_samples=4),
        "RLOO(S=4)": RLOO(4),
        "VarGrad(S=4)": VarGrad(4),
        "GumbelSoftmax(0.5)": GumbelSoftmax(0.5),
        "STGumbelSoftmax(0.5)": STGumbelSoftmax(0.5),
        "StraightThrough": StraightThrough(),
        "GumbelRao(0.5, K=10)": GumbelRao(0.5, 10),
        "ReinMax(1.0)": ReinMax(1.0),
        "ReinMax(2.0)": ReinMax(2.0),
    }


def main(n_draws: int = 5000) -> None:
    torch.set_num_threads(1)
    for kind, width in (("categorical", 12), ("bernoulli", 4)):
        theta, q, f = problem(kind)
        print(
            f"\n{kind}: batch 2, {'3 variables x 4 categories' if width == 12 else '4 variables'}"
            f", n_draws={n_draws}\n"
        )
        print("| estimator | bias | bias_noise | variance | SNR | cosine | n_evals | ms/draw |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, est in estimators(width, f, q).items():
            s = gradient_stats(
                est, f, q, theta, n_draws, generator=torch.Generator().manual_seed(2)
            )
            print(
                f"| {name} | {s.bias:.4f} | {s.bias_noise:.4f} | {s.variance:.4f} | {s.snr:.3f} "
                f"| {s.cosine:.3f} | {s.n_evals:g} | {1e3 * s.seconds_per_draw:.4f} |"
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
