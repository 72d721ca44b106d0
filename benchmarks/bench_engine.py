"""The Trainer's cost: a whole discograd training step against a hand-written PyTorch loop.

Run by hand (a few minutes on 2 CPU cores; ``--quick``: about one)::

    PYTHONPATH=src python benchmarks/bench_engine.py [--quick] [--threads 1] [--repeats 5]

Two problems, each run both ways in one process, interleaved:

* ``categorical``: the 20x10 categorical VAE of ``discograd vae`` (784-512-256
  encoder, mirrored decoder, LeakyReLU(0.2), uniform prior, analytic KL),
  ``rloo:n_samples=4``, batch 200, Adam 3e-4;
* ``bernoulli``: the linear Bernoulli VAE of the DisARM paper (200 latents,
  affine encoder and decoder, learned prior, analytic KL), ``disarm``,
  batch 50, Adam 1e-4; its hand-written loop forms DisARM's sign term as the
  paper writes it, (-1)^{b~} 1[b != b~];
* ``bernoulli-difference``: the same, against a hand-written loop that forms
  that term as b - b~ of the evaluated pair, as discograd's DisARM does (a
  scalar ``where`` costs about 60 us at 50x200 on CPU): the engine's overhead
  alone.

The discograd side is ``Trainer.run(VAETask(), config)``: batches drawn by the
Trainer's hashed streams, the estimator from the registry, the guarded step
(finite checks of the loss and of every gradient), cost accounting, logging
every 50 steps, checkpoints every 500, a progress bar (off: ``quiet``, as in
a sweep), optionally the TensorBoard sink. Its time per step is the mean
interval between the starts of consecutive ``Task.step`` calls, so it counts
everything the Trainer does around a step and nothing of the set-up or the
final test evaluation. The hand-written side (below, about 30 lines a
problem) is the same model, estimator, batch size and optimiser written
directly in PyTorch. The two run paired, in one loop: every Trainer iteration
first runs one hand-written step (timed alone), then its own, so both sides
see the same machine at the same moment; a repeat is one such run, and the
table shows the median over repeats of the mean time per step. Both train on the same 784-pixel
binary images: the MNIST test set from ``../shared/data`` when present, else
Fashion-MNIST from Debian's ``dataset-fashion-mnist``, else random images.

The bar (issue 12): discograd / hand-written <= 1.10.
"""

from __future__ import annotations

import argparse
import gzip
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _machine import cpu_name
from torch import nn

from discograd.data.datasets import ImageData
from discograd.experiments import Trainer
from discograd.experiments.runner import RunDir
from discograd.experiments.sinks import make_sinks
from discograd.experiments.vae import VAEConfig, VAETask

HERE = Path(__file__).resolve().parent
#: time.perf_counter (wall) or time.thread_time (CPU time of this thread: robust
#: to other processes on a shared machine; the benchmark runs one thread).
CLOCK = time.perf_counter


# ------------------------------------------------------------------ data
def _idx_images(path: Path) -> torch.Tensor:
    raw = gzip.decompress(path.read_bytes())
    n, rows, cols = (int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in (1, 2, 3))
    pixels = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8)
    return pixels.view(n, rows * cols).float() / 255


def images() -> tuple[torch.Tensor, str]:
    for path in (
        HERE.parent.parent / "shared/data/mnist/t10k-images-idx3-ubyte.gz",
        Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
    ):
        if path.exists():
            return _idx_images(path), str(path)
    gen = torch.Generator().manual_seed(0)
    return torch.rand(10_000, 784, generator=gen), "random images"


def image_data(x: torch.Tensor) -> ImageData:
    n = len(x)
    labels = torch.zeros(n, dtype=torch.long)
    cut = n - 1000
    return ImageData(
        "bench", (28, 28), x[:cut], labels[:cut], x[cut:], labels[cut:], x[cut:], labels[cut:], ""
    )


# --------------------------------------------------------- discograd side
class PairedVAETask(VAETask):
    """VAETask that also runs one hand-written step before each of its own.

    Each Trainer iteration then holds one step of each side, back to back: the
    two are timed under the same conditions (no drift between separate runs on
    a shared machine). The discograd time of an iteration is the interval
    between the starts of consecutive iterations minus the hand-written step.
    """

    hand: Callable[[], None]
    starts: list[float]
    hand_seconds: list[float]

    def step(self, state: Any, step: int, ctx: Any) -> Any:
        t0 = CLOCK()
        self.hand()
        t1 = CLOCK()
        self.starts.append(t0)
        self.hand_seconds.append(t1 - t0)
        return super().step(state, step, ctx)


def paired_steps(
    config: VAEConfig, data: ImageData, hand: Callable[[], None], sinks: str, warmup: int
) -> tuple[float, float]:
    """Mean seconds per step of the discograd Trainer and of the hand-written loop."""
    task = PairedVAETask()
    task.hand, task.starts, task.hand_seconds = hand, [], []
    with tempfile.TemporaryDirectory() as out, RunDir(out, {"bench": "engine"}) as run:
        with Trainer(run, quiet=True, sinks=make_sinks(sinks)) as trainer:
            trainer.run(task, config, data=data)
    starts, hands = task.starts[warmup:], task.hand_seconds[warmup:]
    ours = [b - a - h for a, b, h in zip(starts, starts[1:], hands, strict=False)]
    return statistics.fmean(ours), statistics.fmean(hands[: len(ours)])


# ------------------------------------------------------ hand-written side
def hand_categorical(x: torch.Tensor) -> Callable[[], None]:
    """One step of RLOO(4) on the 20x10 categorical VAE, written out."""
    torch.manual_seed(0)
    V, C, S, B = 20, 10, 4, 200
    act = nn.LeakyReLU(0.2)
    enc = nn.Sequential(nn.Linear(784, 512), act, nn.Linear(512, 256), act, nn.Linear(256, V * C))
    dec = nn.Sequential(nn.Linear(V * C, 256), act, nn.Linear(256, 512), act, nn.Linear(512, 784))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], 3e-4)
    data = (x > 0.5).float()

    def step() -> None:
        xb = data[torch.randint(len(data), (B,))]
        log_q = torch.log_softmax(enc(xb).view(B, V, C), -1)
        idx = torch.distributions.Categorical(logits=log_q.detach()).sample((S,))  # [S, B, V]
        z = F.one_hot(idx, C).float()
        logits = dec(z.flatten(-2))
        f = F.binary_cross_entropy_with_logits(logits, xb.expand(S, -1, -1), reduction="none")
        f = f.sum(-1)  # [S, B]
        lq = log_q.expand(S, -1, -1, -1).gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1)
        w = (f - f.mean(0)).detach() / (S - 1)
        kl = (log_q.exp() * (log_q + math.log(C))).sum((-1, -2))
        loss = (f.mean(0) + (w * lq).sum(0) + kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def hand_bernoulli(x: torch.Tensor, sign: str = "where") -> Callable[[], None]:
    """One step of DisARM on the linear 200-latent Bernoulli VAE (learned prior), written out.

    ``sign="where"``: the paper's (-1)^{b~} 1[b != b~] as written; ``"difference"``:
    as b - b~ of the evaluated pair, the cheaper form discograd's DisARM uses (so
    that the ratio measures the engine, not the formula).
    """
    torch.manual_seed(0)
    V, B = 200, 50
    enc, dec = nn.Linear(784, V), nn.Linear(V, 784)
    prior = nn.Parameter(torch.zeros(V))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), prior], 1e-4)
    data = (x > 0.5).float()
    difference = {"where": False, "difference": True}[sign]

    def step() -> None:
        xb = data[torch.randint(len(data), (B,))]
        a = enc(xb)
        u = torch.rand(a.shape)
        p = torch.sigmoid(a.detach())
        b1, b2 = u < p, (1 - u) < p
        z = torch.stack([b1, b2]).float()
        logits = dec(z)
        f = F.binary_cross_entropy_with_logits(logits, xb.expand(2, -1, -1), reduction="none")
        f = f.sum(-1)  # [2, B]
        df = (f[0] - f[1]).detach().unsqueeze(-1)
        if difference:
            g = 0.5 * df * (z[0] - z[1]) * torch.sigmoid(a.detach().abs())
        else:
            g = 0.5 * df * torch.where(b2, -1.0, 1.0) * (b1 != b2) * torch.sigmoid(a.detach().abs())
        pa = torch.sigmoid(a)
        kl = pa * (F.logsigmoid(a) - F.logsigmoid(prior))
        kl = (kl + (1 - pa) * (F.logsigmoid(-a) - F.logsigmoid(-prior))).sum(-1)
        loss = (0.5 * (f[0] + f[1]) + (g * (a - a.detach())).sum(-1) + kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


# ----------------------------------------------------------------- main
PROBLEMS = {
    "categorical": (
        dict(latent="categorical", estimators=("rloo:n_samples=4",), batch_size=200, lr=3e-4),
        hand_categorical,
    ),
    "bernoulli": (
        dict(
            latent="bernoulli",
            n_latent=200,
            hidden=(),
            prior="learned",
            estimators=("disarm",),
            batch_size=50,
            lr=1e-4,
        ),
        hand_bernoulli,
    ),
}
# The same step against a hand-written loop that also forms DisARM's sign term as b - b~.
PROBLEMS["bernoulli-difference"] = (
    PROBLEMS["bernoulli"][0],
    lambda x: hand_bernoulli(x, sign="difference"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument(
        "--sinks", nargs="+", default=["", "tensorboard"], help="'' (JSONL only), tensorboard"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this thread's CPU time (steadier on a busy machine; 1 thread)",
    )
    args = parser.parse_args()
    global CLOCK
    if args.clock == "cpu":
        if args.threads != 1:
            parser.error("--clock cpu measures one thread: use --threads 1")
        CLOCK = time.thread_time
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    steps = args.steps or (120 if args.quick else 400)
    warmup = 20
    x, source = images()
    data = image_data(x)
    print(f"# bench_engine: {cpu_name()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"# data: {source}; {steps} steps per run ({warmup} warm-up), {repeats} repeats")
    print(f"# clock: {'thread CPU time' if args.clock == 'cpu' else 'wall time'}")
    print("| problem | sinks | discograd ms/step | hand-written ms/step | ratio |")
    print("|---|---|--:|--:|--:|")
    for name in args.problems:
        fields, hand = PROBLEMS[name]
        config = VAEConfig(
            **fields,  # type: ignore[arg-type]
            steps=steps,
            eval_every=10**9,
            log_every=50,
            checkpoint_every=500,
            eval_samples=1,
            iw_examples=1,
            binarization="threshold",
        )
        for sinks in args.sinks:
            ours, theirs = [], []
            for _ in range(repeats):
                a, b = paired_steps(config, data, hand(x), sinks, warmup)
                ours.append(a)
                theirs.append(b)
            a, b = statistics.median(ours), statistics.median(theirs)
            label = sinks or "jsonl only"
            print(f"| {name} | {label} | {1e3 * a:.3f} | {1e3 * b:.3f} | **{a / b:.2f}** |")


if __name__ == "__main__":
    main()
