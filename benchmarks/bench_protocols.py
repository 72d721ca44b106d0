"""A discograd step of the published protocols against a minimal hand-written PyTorch loop.

Run by hand (a few minutes on one CPU thread; ``--quick``: about one)::

    PYTHONPATH=src python benchmarks/bench_protocols.py [--quick] [--estimator disarm]
    PYTHONPATH=src python benchmarks/bench_protocols.py --protocols coupled --per-estimator

Three protocols (``discograd vae --protocol NAME``, see
``src/discograd/experiments/protocols.py``), each run both ways in one process,
interleaved as in ``bench_engine.py`` (whose paired measurement this reuses:
every Trainer iteration first runs one hand-written step, timed alone, then its
own):

* ``disarm``: the linear 200-latent Bernoulli VAE, encoder input centred on the
  training mean, decoder output bias at its logit, learned prior trained by SGD
  1e-2 apart from Adam 1e-4, batch 50, dynamic binarisation, the whole negative
  ELBO as the cost;
* ``rodeo``: the nonlinear one (200-200 hidden, LeakyReLU(0.3)), fixed uniform
  prior, Adam 3e-4, batch 100, otherwise the same;
* ``coupled``: the 20x10 categorical VAE (784-512-256, LeakyReLU(0.2)), centred
  input, output bias at its logit, learned prior by SGD 1e-2 apart from Adam
  1e-4, batch 200, the whole negative ELBO as the cost. Its hand-written side
  is RLOO with C = 10 samples whatever ``--estimator`` says (the protocol's
  baseline; categorical DisARM is not written out twice).

``--per-estimator`` (``coupled``): no hand-written side; discograd's training
step (Trainer, gradient-variance EMAs and all) alone for each estimator of the
protocol, as ms/step and steps/s, to plan a sweep (``--steps`` to shorten it:
IndeCateR takes seconds a step on one thread).

Both sides update the encoder gradient's variance EMAs every step, as the
protocols do (``--no-grad-var``: neither). The estimator is DisARM, or RLOO with
two samples (``--estimator rloo``); the hand-written side writes either out in
a few lines. Data: Fashion-MNIST's 50,000 training images when Debian's
``dataset-fashion-mnist`` is installed, else what ``bench_engine`` finds.

The bar (issue 13): discograd / hand-written <= 1.15.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import bench_engine
import torch
import torch.nn.functional as F
from _machine import cpu_name
from bench_engine import image_data, images, paired_steps
from torch import nn

from discograd.data.datasets import ImageData
from discograd.experiments.config import build
from discograd.experiments.vae import VAEConfig

PROTOCOLS = ("disarm", "rodeo", "coupled")


def fashion() -> tuple[ImageData, str]:
    from discograd.data import load

    try:
        data = load("fashion-mnist", validation=10000, download_ok=False)
        return data, data.source
    except (OSError, ValueError):
        x, source = images()
        return image_data(x), source


# ------------------------------------------------------ hand-written side
def optimiser_update(
    opts: list[torch.optim.Optimizer], enc_params: list[nn.Parameter], grad_var: bool
) -> Callable[[torch.Tensor], None]:
    """``update(loss)``: the backward pass, the encoder gradient's variance EMAs (as the
    protocols keep them; not with ``grad_var=False``) and the optimiser steps."""
    m = [torch.zeros_like(p) for p in enc_params]
    s = [torch.zeros_like(p) for p in enc_params]

    def update(loss: torch.Tensor) -> None:
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        if grad_var:
            grads = [q.grad for q in enc_params]
            torch._foreach_mul_(m, 0.999)
            torch._foreach_add_(m, grads, alpha=0.001)
            torch._foreach_mul_(s, 0.999)
            torch._foreach_addcmul_(s, grads, grads, value=0.001)
        for o in opts:
            o.step()

    return update


def hand_step(protocol: str, estimator: str, data: ImageData, grad_var: bool) -> Callable[[], None]:
    """One training step of ``protocol`` with ``estimator``, written directly in PyTorch."""
    if protocol == "coupled":
        return hand_coupled(data, grad_var)
    torch.manual_seed(0)
    cfg = build(VAEConfig, {"protocol": protocol})
    V, B, D = cfg.n_latent, cfg.batch_size, data.dim
    sizes = [D, *cfg.hidden, V]

    def mlp(sizes: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            if i:
                layers.append(nn.LeakyReLU(0.3))
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        return nn.Sequential(*layers)

    enc, dec = mlp(sizes), mlp(sizes[::-1])
    x_all = data.train
    mean = x_all.mean(0)
    if cfg.init_output_bias:
        with torch.no_grad():
            p = mean.clamp(0.001, 0.999)
            dec[-1].bias.copy_(torch.log(p) - torch.log1p(-p))
    shift = mean if cfg.center_input else torch.zeros(D)
    prior = nn.Parameter(torch.zeros(V), requires_grad=cfg.prior == "learned")
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam([*enc.parameters(), *dec.parameters()], cfg.lr)
    ]
    if prior.requires_grad:
        opts.append(torch.optim.SGD([prior], cfg.prior_lr))
    update = optimiser_update(opts, list(enc.parameters()), grad_var)

    def cost(z: torch.Tensor, a: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """log q(z|x) - log p(z) - log p(x|z), with q's logits detached."""
        target = xb.expand(*z.shape[:-1], D)
        rec = F.binary_cross_entropy_with_logits(dec(z), target, reduction="none")
        lq = F.binary_cross_entropy_with_logits(a.detach().expand_as(z), z, reduction="none")
        lp = F.binary_cross_entropy_with_logits(prior.expand_as(z), z, reduction="none")
        return rec.sum(-1) + lp.sum(-1) - lq.sum(-1)

    def step() -> None:
        xb = (torch.rand(B, D) < x_all[torch.randint(len(x_all), (B,))]).float()
        a = enc(xb - shift)
        p = torch.sigmoid(a.detach())
        if estimator == "disarm":
            u = torch.rand(a.shape)
            b1, b2 = u < p, (1 - u) < p
            f = cost(torch.stack([b1, b2]).float(), a, xb)  # [2, B]
            df = (f[0] - f[1]).detach().unsqueeze(-1)
            sign = torch.where(b2, -1.0, 1.0)
            g = 0.5 * df * sign * (b1 != b2) * torch.sigmoid(a.detach().abs())
            loss = (f.mean(0) + (g * (a - a.detach())).sum(-1)).mean()
        else:  # RLOO with two samples
            z = (torch.rand(2, *a.shape) < p).float()
            f = cost(z, a, xb)
            w = (f - f.mean(0)).detach()  # / (K - 1) = 1
            log_q = -F.binary_cross_entropy_with_logits(a.expand_as(z), z, reduction="none")
            loss = (f.mean(0) + (w * log_q.sum(-1)).sum(0)).mean()
        update(loss)

    return step


def hand_coupled(data: ImageData, grad_var: bool) -> Callable[[], None]:
    """One step of the ``coupled`` protocol with RLOO(C), written directly in PyTorch."""
    torch.manual_seed(0)
    cfg = build(VAEConfig, {"protocol": "coupled"})
    V, C, B, D = cfg.n_latent, cfg.n_categories, cfg.batch_size, data.dim
    S = C
    act = nn.LeakyReLU(0.2)
    h1, h2 = cfg.hidden
    enc = nn.Sequential(nn.Linear(D, h1), act, nn.Linear(h1, h2), act, nn.Linear(h2, V * C))
    dec = nn.Sequential(nn.Linear(V * C, h2), act, nn.Linear(h2, h1), act, nn.Linear(h1, D))
    x_all = data.train
    mean = x_all.mean(0)
    with torch.no_grad():
        p = mean.clamp(0.001, 0.999)
        dec[-1].bias.copy_(torch.log(p) - torch.log1p(-p))
    prior = nn.Parameter(torch.zeros(V, C))
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam([*enc.parameters(), *dec.parameters()], cfg.lr),
        torch.optim.SGD([prior], cfg.prior_lr),
    ]
    update = optimiser_update(opts, list(enc.parameters()), grad_var)

    def step() -> None:
        xb = (torch.rand(B, D) < x_all[torch.randint(len(x_all), (B,))]).float()
        log_q = torch.log_softmax(enc(xb - mean).view(B, V, C), -1)
        idx = torch.distributions.Categorical(logits=log_q.detach()).sample((S,))  # [S, B, V]
        z = F.one_hot(idx, C).to(log_q.dtype)
        rec = F.binary_cross_entropy_with_logits(
            dec(z.flatten(-2)), xb.expand(S, B, D), reduction="none"
        ).sum(-1)
        log_ratio = (log_q.detach() - torch.log_softmax(prior, -1)).expand(S, B, V, C)
        f = rec + (z * log_ratio).sum((-1, -2))  # [S, B]: log q - log p(z) - log p(x|z)
        lq = log_q.expand(S, B, V, C).gather(-1, idx.unsqueeze(-1)).sum((-1, -2))
        w = (f - f.mean(0)).detach() * (S / (S - 1))
        loss = (f.mean(0) + (w * lq).mean(0)).mean()
        update(loss)

    return step


# ----------------------------------------------------------------- main
def discograd_config(protocol: str, estimator: str, steps: int, grad_var: bool) -> VAEConfig:
    if protocol == "coupled":
        # RLOO with C samples: the hand-written side's estimator (see the docstring).
        spec = "rloo:n_samples=10" if estimator in ("disarm", "rloo") else estimator
    else:
        spec = "disarm" if estimator == "disarm" else "rloo:n_samples=2"
    return build(
        VAEConfig,
        {"protocol": protocol},
        {
            "estimators": [spec],
            "steps": steps,
            # Training steps only: no evaluation inside the timed stretch (first and last
            # step aside, which the warm-up and the paired timing leave out).
            "eval_every": 10**9,
            "train_eval_every": 0,
            "test_every": 0,
            "grad_var_every": 10**9 if grad_var else 0,
            "log_every": 1000,
            "checkpoint_every": 10**9,
            "eval_samples": 1,
            "iw_examples": 1,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run")
    parser.add_argument("--estimator", choices=("disarm", "rloo"), default="disarm")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--no-grad-var", action="store_true", help="no variance EMAs")
    parser.add_argument(
        "--per-estimator",
        action="store_true",
        help="coupled: discograd's step alone for every estimator of the protocol",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this thread's CPU time (steadier on a busy machine; 1 thread)",
    )
    args = parser.parse_args()
    if args.clock == "cpu":
        if args.threads != 1:
            parser.error("--clock cpu measures one thread: use --threads 1")
        bench_engine.CLOCK = time.thread_time
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    steps = args.steps or (150 if args.quick else 400)
    warmup = 20
    if args.per_estimator:
        # Seconds a step for the slow ones: fewer, unrepeated steps unless asked.
        repeats, steps, warmup = args.repeats or 1, args.steps or 30, 5
    grad_var = not args.no_grad_var
    data, source = fashion()
    print(f"# bench_protocols: {cpu_name()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"# data: {source} ({len(data.train)} training images); {steps} steps per run")
    which = "every estimator of the protocol" if args.per_estimator else args.estimator
    print(f"# ({warmup} warm-up), {repeats} repeats; estimator {which}; {args.clock} clock")
    if args.per_estimator:
        per_estimator(data, steps, warmup, repeats, grad_var)
        return
    print("| protocol | discograd ms/step | hand-written ms/step | ratio | discograd steps/s |")
    print("|---|--:|--:|--:|--:|")
    for name in args.protocols:
        config = discograd_config(name, args.estimator, steps, grad_var)
        ours, theirs = [], []
        for _ in range(repeats):
            hand: Any = hand_step(name, args.estimator, data, grad_var)
            a, b = paired_steps(config, data, hand, "", warmup)
            ours.append(a)
            theirs.append(b)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"| {name} | {1e3 * a:.3f} | {1e3 * b:.3f} | **{a / b:.2f}** | {1 / a:.0f} |")


def per_estimator(data: ImageData, steps: int, warmup: int, repeats: int, grad_var: bool) -> None:
    """discograd's step of the ``coupled`` protocol for each of its estimators."""
    specs = build(VAEConfig, {"protocol": "coupled"}).estimators
    print("| estimator | f-evals/step | ms/step | steps/s |")
    print("|---|--:|--:|--:|")

    def idle() -> None:
        pass

    for spec in specs:
        config = discograd_config("coupled", spec, steps, grad_var)
        times = [paired_steps(config, data, idle, "", warmup)[0] for _ in range(repeats)]
        t = statistics.median(times)
        evals = _evals(spec, data)
        print(f"| {spec} | {evals:.1f} | {1e3 * t:.1f} | {1 / t:.2f} |")


def _evals(spec: str, data: ImageData) -> float:
    """f-evaluations per image of one step of ``spec`` at the initial weights."""
    from discograd.estimators.registry import make
    from discograd.experiments.vae import build_model

    cfg = build(VAEConfig, {"protocol": "coupled"})
    torch.manual_seed(0)
    model = build_model(cfg, data.dim, data.train.mean(0))
    x = (data.train[: cfg.batch_size] > 0.5).float()
    with torch.no_grad():
        out = model.objective(x, make(spec), kl="estimated", generator=torch.Generator())
    return out.n_evals


if __name__ == "__main__":
    main()
