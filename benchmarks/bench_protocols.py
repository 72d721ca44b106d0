"""A discograd step of the published protocols against a minimal hand-written PyTorch loop.

Run by hand (a few minutes on one CPU thread; ``--quick``: about one)::

    PYTHONPATH=src python benchmarks/bench_protocols.py [--quick] [--estimator disarm]

Two protocols (``discograd vae --protocol NAME``, see
``src/discograd/experiments/protocols.py``), each run both ways in one process,
interleaved as in ``bench_engine.py`` (whose paired measurement this reuses:
every Trainer iteration first runs one hand-written step, timed alone, then its
own):

* ``disarm``: the linear 200-latent Bernoulli VAE, encoder input centred on the
  training mean, decoder output bias at its logit, learned prior trained by SGD
  1e-2 apart from Adam 1e-4, batch 50, dynamic binarisation, the whole negative
  ELBO as the cost;
* ``rodeo``: the nonlinear one (200-200 hidden, LeakyReLU(0.3)), fixed uniform
  prior, Adam 3e-4, batch 100, otherwise the same.

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

PROTOCOLS = ("disarm", "rodeo")


def fashion() -> tuple[ImageData, str]:
    from discograd.data import load

    try:
        data = load("fashion-mnist", validation=10000, download_ok=False)
        return data, data.source
    except (OSError, ValueError):
        x, source = images()
        return image_data(x), source


# ------------------------------------------------------ hand-written side
def hand_step(protocol: str, estimator: str, data: ImageData, grad_var: bool) -> Callable[[], None]:
    """One training step of ``protocol`` with ``estimator``, written directly in PyTorch."""
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
    enc_params = list(enc.parameters())
    m = [torch.zeros_like(p) for p in enc_params]
    s = [torch.zeros_like(p) for p in enc_params]

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

    return step


# ----------------------------------------------------------------- main
def discograd_config(protocol: str, estimator: str, steps: int, grad_var: bool) -> VAEConfig:
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
    grad_var = not args.no_grad_var
    data, source = fashion()
    print(f"# bench_protocols: {cpu_name()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"# data: {source} ({len(data.train)} training images); {steps} steps per run")
    print(
        f"# ({warmup} warm-up), {repeats} repeats; estimator {args.estimator}; {args.clock} clock"
    )
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


if __name__ == "__main__":
    main()
