"""gradient_stats of every estimator on the ARSM toy problem (Yin, Yue & Zhou 2019).

Run by hand (CPU, float64, a minute or two):

    PYTHONPATH=src python benchmarks/gradient_stats_arsm_toy.py [n_draws] [C]

One categorical variable with C categories (default 10), f(z) = 0.5 + (z + 1)/(C R),
R = 30, z in {0..C-1}; logits θ = 0 (uniform) and a skewed θ = linspace(-2, 2, C).
Prints one markdown table per θ: bias (norm of mean - exact), its Monte-Carlo
noise floor, variance (trace), SNR, cosine with the exact gradient, f-evaluations
per draw, variance x evaluations (the variance of an average of draws at a
fixed budget of evaluations, times that budget: lower wins at equal cost),
and milliseconds per draw (vectorised over draws, this machine).
REBAR / RELAX appear untrained and after 300 Adam steps on cv_loss.
"""

from __future__ import annotations

import sys

import torch
from torch.distributions import Categorical

from discograd.diagnostics import exact_gradient, gradient_stats
from discograd.estimators import (
    AR,
    ARS,
    ARSM,
    REBAR,
    REINFORCE,
    RELAX,
    RLOO,
    ARSMPlus,
    ARSPlus,
    Exact,
    GumbelRao,
    GumbelSoftmax,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
)

D64 = torch.float64


def toy(C: int, R: int = 30, skew: bool = False):
    theta = torch.linspace(-2.0, 2.0, C, dtype=D64) if skew else torch.zeros(C, dtype=D64)
    theta.requires_grad_()
    values = torch.arange(C, dtype=D64)
    return theta, lambda z: 0.5 + ((z * values).sum(-1) + 1) / (C * R)


def trained(est, f, theta, steps: int = 300):
    est = est.double()
    q = Categorical(logits=theta.detach().expand(64, -1))
    gen = torch.Generator().manual_seed(3)
    est(f, q, generator=gen)  # sizes lazy layers
    opt = torch.optim.Adam(est.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        est(f, q, generator=gen).cv_loss.backward()
        opt.step()
    return est.eval()


def estimators(C: int, f, theta, arsm_evals: int):
    return {
        "Exact": Exact(),
        "REINFORCE": REINFORCE(),
        f"REINFORCE(S={C})": REINFORCE(n_samples=C),
        "RLOO(S=2)": RLOO(2),
        f"RLOO(S={C})": RLOO(C),
        f"RLOO(S={arsm_evals}) [≈ ARSM evals]": RLOO(arsm_evals),
        "AR": AR(),
        "ARS": ARS(),
        "ARSPlus": ARSPlus(),
        "ARSM": ARSM(),
        "ARSMPlus": ARSMPlus(),
        "REBAR (η=1, λ=0.5)": REBAR().double().eval(),
        "REBAR (trained)": trained(REBAR(), f, theta),
        "RELAX (untrained)": RELAX().double().eval(),
        "RELAX (trained)": trained(RELAX(), f, theta),
        "GumbelSoftmax(0.5) [biased]": GumbelSoftmax(0.5),
        "STGumbelSoftmax(0.5) [biased]": STGumbelSoftmax(0.5),
        "StraightThrough [biased]": StraightThrough(),
        "GumbelRao(0.5, K=10) [biased]": GumbelRao(0.5, 10),
        "ReinMax(1.0) [biased]": ReinMax(1.0),
    }


def main(n_draws: int = 20000, C: int = 10) -> None:
    torch.set_num_threads(1)
    for skew in (False, True):
        theta, f = toy(C, skew=skew)
        q = Categorical(logits=theta)
        exact = exact_gradient(f, q, theta)
        probe = gradient_stats(ARSM(), f, q, theta, 2000, exact, generator=torch.Generator())
        arsm_evals = round(probe.n_evals)
        label = "linspace(-2, 2)" if skew else "0"
        print(f"\nARSM toy, C = {C}, R = 30, θ = {label}, n_draws = {n_draws}")
        print(f"exact gradient norm {float(exact[0].norm()):.3e}\n")
        print(
            "| estimator | bias | bias_noise | variance | SNR | cosine | n_evals "
            "| variance × n_evals | ms/draw |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, est in estimators(C, f, theta, arsm_evals).items():
            s = gradient_stats(
                est, f, q, theta, n_draws, exact, generator=torch.Generator().manual_seed(2)
            )
            print(
                f"| {name} | {s.bias:.2e} | {s.bias_noise:.2e} | {s.variance:.3e} | {s.snr:.3g} "
                f"| {s.cosine:.3f} | {s.n_evals:.2f} | {s.variance * s.n_evals:.3e} "
                f"| {1e3 * s.seconds_per_draw:.4f} |"
            )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*args)
