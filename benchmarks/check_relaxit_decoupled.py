"""discograd's DecoupledSTGumbelSoftmax against relaxit's DecoupledStraightThroughGumbelSoftmax.

Run (needs relaxit, never a dependency of this project; install it into a
separate environment: ``pip install --no-deps relaxit pyro-ppl pyro-api opt_einsum``):

    python benchmarks/check_relaxit_decoupled.py

Per-draw gradients of a nonlinear f with respect to the logits of 3
categorical variables x 4 categories, N draws a side, at three
(tau_forward, tau_backward) settings. Printed: the largest and median |z| of
the per-coordinate mean differences, the ratio of the gradients' trace
variances (discograd / relaxit, with its z), and both sides' forward
frequencies for the first variable next to softmax(theta / tau_f) and
softmax(theta). The two agree only at tau_f = tau_b = 1: relaxit divides the
perturbed logits by each temperature, so its forward arg max ignores tau_f.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, OneHotCategorical

from discograd.estimators import DecoupledSTGumbelSoftmax

N = 40_000
THETA = torch.tensor([[0.5, -0.3, 1.2, 0.0], [-1.0, 0.8, 0.1, 0.4], [0.2, 0.2, -0.7, 1.5]])
W = torch.tensor([[1.0, -2.0, 0.5, 1.5], [0.3, 1.0, -1.0, 2.0], [-1.5, 0.5, 1.0, 0.2]])
SETTINGS = [(1.0, 1.0), (1.0, 0.5), (0.5, 2.0)]


def f(z: Tensor) -> Tensor:
    """(..., 3, 4) -> (...,): couples the variables, not linear in z."""
    s = (z * W).sum(-1)
    return torch.sin(2 * s).sum(-1) + s[..., 0] * s[..., 2] + s[..., 1] ** 2


def trace_variance(g: Tensor) -> tuple[float, float]:
    """Mean squared distance from the mean, and its standard error."""
    per = ((g - g.mean(0)) ** 2).sum(1)
    return float(per.mean()), float(per.std() / math.sqrt(len(per)))


def compare(rx_cls: type, tf: float, tb: float) -> None:
    leaf = THETA.expand(N, 3, 4).clone().requires_grad_()
    seen: list[Tensor] = []

    def f_seen(z: Tensor) -> Tensor:
        seen.append(z.detach())
        return f(z)

    q = Independent(OneHotCategorical(logits=leaf), 1)
    out = DecoupledSTGumbelSoftmax(tf, tb)(f_seen, q, generator=torch.Generator().manual_seed(1))
    (g_dg,) = torch.autograd.grad(out.loss.sum(), leaf)
    leaf2 = THETA.expand(N, 3, 4).clone().requires_grad_()
    z_rx = rx_cls(tf, tb, logits=leaf2).rsample()
    (g_rx,) = torch.autograd.grad(f(z_rx).sum(), leaf2)
    a, b = g_dg.double().flatten(1), g_rx.double().flatten(1)
    z = (a.mean(0) - b.mean(0)) / (a.var(0) / N + b.var(0) / N).sqrt()
    va, sa = trace_variance(a)
    vb, sb = trace_variance(b)
    zv = (va - vb) / math.sqrt(sa**2 + sb**2)
    print(
        f"tau_f={tf}, tau_b={tb}: gradient means max |z| {float(z.abs().max()):.2f} "
        f"(median {float(z.abs().median()):.2f}); trace variance discograd / relaxit "
        f"{va / vb:.3f} (z {zv:.1f})"
    )

    def fmt(p: Tensor) -> str:
        return "[" + ", ".join(f"{x:.3f}" for x in p.tolist()) + "]"

    print(
        f"  forward frequencies, variable 0: discograd {fmt(seen[0].mean(0)[0])}, relaxit "
        f"{fmt(z_rx.detach().mean(0)[0])}; softmax(theta/tau_f) "
        f"{fmt(torch.softmax(THETA[0] / tf, -1))}, "
        f"softmax(theta) {fmt(torch.softmax(THETA[0], -1))}"
    )


def main() -> None:
    try:
        from relaxit.distributions import DecoupledStraightThroughGumbelSoftmax
    except ImportError as exc:
        print(
            f"relaxit is not installed ({exc}); nothing to compare: "
            "`pip install --no-deps relaxit pyro-ppl pyro-api opt_einsum`"
        )
        return
    torch.manual_seed(0)  # relaxit draws from torch's global generator
    print(f"{N} draws a side, 3 variables x 4 categories")
    for tf, tb in SETTINGS:
        compare(DecoupledStraightThroughGumbelSoftmax, tf, tb)


if __name__ == "__main__":
    main()
