"""Estimator overhead, peak memory and profile on a VAE training step.

Run by hand (about 2-3 minutes on 2 CPU cores; ``--quick``: well under one)::

    PYTHONPATH=src python benchmarks/bench_estimators.py [--quick] [--threads N]
        [--device cpu|cuda] [--profile [SPEC ...]] [--estimators SPEC ...]
        [--problem categorical|disarm-linear|rodeo-nonlinear|coupled] [--clock wall|cpu]
        [--no-memory]

Problems:

* ``categorical`` (default): :class:`discograd.models.CategoricalVAE` as
  ``discograd vae`` builds it (20 variables x 10 categories, 784-512-256
  encoder and mirrored decoder, LeakyReLU(0.2), uniform prior, analytic KL,
  Adam lr 3e-4) on one batch of 200 images;
* ``disarm-linear``: the linear Bernoulli VAE of the ``disarm`` protocol
  (200 latents, affine encoder and decoder, learned prior, Adam lr 1e-4) on
  one batch of 50 images, with the protocol's cost (the whole negative ELBO,
  below): the model on which issue 13 asks every binary estimator to spend at
  most 10% of a step outside f and autograd;
* ``rodeo-nonlinear``: the nonlinear Bernoulli VAE of the ``rodeo`` protocol
  (200 latents, 784-200-200 encoder and mirrored decoder, LeakyReLU(0.3), uniform
  prior, Adam lr 3e-4) on one batch of 100 images, with the protocol's cost;
* ``coupled``: the categorical VAE of the ``coupled`` protocol (20 x 10
  categorical latents, 784-512-256 LeakyReLU(0.2) encoder and mirrored decoder,
  learned prior, encoder input centred and decoder output bias at the logit of
  the batch's mean, Adam lr 1e-4) on one batch of 200 images, with the
  protocol's cost: the whole negative ELBO
  ``f(z) = log q(z | x) - log p(z) - log p(x | z)`` (q's logits detached inside
  ``f``; no analytic KL): the model on which issue 14 asks every new
  categorical estimator to spend at most 10% of a step outside f and autograd.

Images: scikit-learn's 8x8 digits upsampled to 28x28 and thresholded (random
binary images if scikit-learn is missing). The cost handed to the estimator
is ``f(z) = -log p(x | z)`` on ``categorical``, the whole negative ELBO on the
three protocol problems (their ``kl="estimated"``); multi-sample estimators
get ``log_weight = -f``. The row ``hand:disarm`` (``--estimators hand:disarm``)
is a minimal hand-written DisARM (:class:`HandDisARM`): the floor of what
any DisARM spends outside f and autograd on the problem;
one training step is what ``discograd vae`` does: encoder, estimator call,
KL, ``cv_loss`` step (REBAR, RELAX), ``loss.backward()``, ``Adam.step()``.

What it measures, per step (medians over interleaved repeats; every
estimator trains its own copy of the same initial model on the same batch):

* ``f ms``: wall time inside ``f`` (the decoder and the Bernoulli
  log-likelihood), all calls of the step, gradient-free ones included.
* ``model ms``: the encoder forward, the analytic KL (``categorical``) and the loss assembly:
  model work outside the estimator, the same for every estimator.
* ``backward ms``: all autograd passes: ``loss.backward()``, the ``cv_loss``
  gradient and every ``torch.autograd.grad`` an estimator makes inside its
  call (REBAR / RELAX differentiate their control variate there).
* ``opt ms``: ``Adam.step()`` (and the control-variate optimiser's step).
* ``overhead ms``: the rest = step - f - model - backward - opt: the
  estimator's own work (noise, pseudo-actions, de-duplication, surrogate
  building) plus Python dispatch. ``overhead %`` is its share of the step
  (the target is <= 10%); ``outside %`` also counts ``model ms`` (everything
  outside f, autograd and the optimiser, the model's encoder included).

ARSM vs RLOO at equal evaluations: RLOO's ``n_samples`` is ARSM's mean
``n_evals`` on the batch at the initial weights (rounded), so both evaluate
``f`` equally often; targets: ARSM's step <= 1.5x RLOO's, ARSM's peak memory
<= 2x RLOO's. ``max_evals_per_call`` chunking is shown to bound ARSM's memory.

Memory. On CPU every configuration runs in a fresh subprocess (same threads,
same data) with ``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=0``:
glibc then serves every tensor above 64 KiB by ``mmap`` and returns it on free,
so the resident set tracks live tensors instead of the allocator's free lists.
The subprocess runs two warm-up steps (Adam state, gradients, lazy layers and
one-off allocations now exist), frees garbage, resets the kernel's peak
resident set (writing 5 to ``/proc/self/clear_refs``), reads it (``VmHWM`` in
``/proc/self/status``) as the baseline, runs the measured steps and reads it
again: ``peak MiB`` is the difference, the transient memory of a step above
the persistent state (model, optimiser state, data). ``VmHWM`` rather than
``getrusage(RUSAGE_SELF).ru_maxrss``: the latter keeps, across ``execve``, the
high-water mark of the process that spawned it (the benchmark's parent, much
larger) and ``clear_refs`` does not reset that part. Where ``/proc`` is
missing, ``ru_maxrss`` is used; where the reset is refused, the baseline is the
mark after the warm-up and the value is marked ``*`` (an under-estimate). On
CUDA the subprocess uses ``torch.cuda.reset_peak_memory_stats`` and reports
``max_memory_allocated`` minus the memory allocated before the steps.

Caveats: wall-clock timings on a shared machine are noisy (the medians and
interleaving help; compare ratios within one run, not across runs). At the
initial weights the posterior is nearly uniform, so ARSM's pseudo-actions are
almost all distinct (about C(C-1)/2 + 1 = 46 evaluations); a trained,
peaked posterior needs fewer. The timers add a few microseconds per call
(plus a device synchronisation on CUDA). ``--profile`` prints
``torch.profiler`` tables (top ops by self CPU time) for ARSM and RLOO.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from discograd.estimators.registry import ESTIMATORS, make
from discograd.experiments.common import cv_optimizer
from discograd.models import BernoulliVAE, CategoricalVAE, DiscreteVAE

X_DIM, CV_LR, SEED = 784, 1e-3, 0
CHUNK = 8  # max_evals_per_call of the chunked ARSM
#: problem -> (batch size, Adam learning rate)
PROBLEMS = {
    "categorical": (200, 3e-4),
    "disarm-linear": (50, 1e-4),
    "rodeo-nonlinear": (100, 3e-4),
    "coupled": (200, 1e-4),
}
PROBLEM = "categorical"  # set by main()


# ----------------------------------------------------------------- problem
def images(device: torch.device) -> tuple[Tensor, str]:
    """A batch of binary 784-pixel images (the problem's batch size) and where they came from."""
    batch = PROBLEMS[PROBLEM][0]
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        gen = torch.Generator().manual_seed(SEED)
        x = (torch.rand(batch, X_DIM, generator=gen) < 0.3).float()
        return x.to(device), "random binary (p=0.3)"
    digits = torch.tensor(load_digits().images[:batch], dtype=torch.float32) / 16.0
    x = F.interpolate(digits.unsqueeze(1), size=(28, 28), mode="bilinear", align_corners=False)
    return (x.flatten(1) > 0.5).float().to(device), "sklearn digits, 8x8 -> 28x28, x > 0.5"


def initial_model(device: torch.device) -> DiscreteVAE:
    torch.manual_seed(SEED)
    if PROBLEM == "disarm-linear":
        return BernoulliVAE(X_DIM, 200, (), "leaky_relu", "learned").to(device)
    if PROBLEM == "rodeo-nonlinear":
        return BernoulliVAE(X_DIM, 200, (200, 200), "leaky_relu_0.3", "uniform").to(device)
    if PROBLEM == "coupled":
        model = CategoricalVAE(X_DIM, 20, 10, (512, 256), "leaky_relu", "learned").to(device)
        model.use_data_mean(images(device)[0].mean(0))
        return model
    return CategoricalVAE(X_DIM, 20, 10, (512, 256), "leaky_relu", "uniform").to(device)


class HandDisARM(torch.nn.Module):
    """DisARM as a minimal hand-written PyTorch function: the floor of its overhead.

    Row ``hand:disarm``: the same antithetic pair, one call of ``f`` on both, the
    same surrogate, but none of the library's checks or bookkeeping (no NaN
    check of the logits, no open-interval clamp, no coinciding-pair count, no
    ``Estimate``). What is left of its ``overhead`` is the estimator's math
    and PyTorch's dispatch of it, which no implementation avoids.
    """

    multi_sample = False

    def forward(self, f: Any, q: Any, generator: torch.Generator | None = None) -> Any:
        theta = q.base_dist.logits
        th = theta.detach()
        u = torch.rand(th.shape, generator=generator, device=th.device, dtype=th.dtype)
        p = torch.sigmoid(th)
        z = torch.stack([u < p, (1 - u) < p]).to(th.dtype)
        values = f(z)
        df = (values[0] - values[1]).detach().unsqueeze(-1)
        grad = 0.5 * df * (z[0] - z[1]) * torch.sigmoid(th.abs())
        mean_f = 0.5 * (values[0] + values[1])
        loss = mean_f + (grad * (theta - th)).sum(-1)
        return _HandEstimate(loss, 2.0)


class _HandEstimate:
    def __init__(self, loss: Tensor, evals: float) -> None:
        self.loss, self.mean_evals, self.cv_loss = loss, evals, None


#: hand-written references, by spec (rows of the table like registry specs)
HAND = {"hand:disarm": HandDisARM}


def cost_for(est: Any, f: Any) -> Any:
    """What ``est`` is called with: ``f``, or ``-f`` as log-weights for a multi-sample bound."""
    return (lambda z: -f(z)) if getattr(est, "multi_sample", False) else f


def applicable(model: DiscreteVAE, x: Tensor) -> list[str]:
    """Registry names whose default estimator accepts this VAE's posterior.

    A side-effect-free trial call (eval mode, no autograd, two data points):
    ``TypeError`` (wrong kind of variable) or ``ValueError`` (Exact's support
    budget) rules a name out.
    """
    names = []
    with torch.no_grad():
        q = model.posterior(x[:2])
        for name in ESTIMATORS:
            est = make(name).to(x.device).eval()
            gen = torch.Generator(device=x.device).manual_seed(0)
            try:
                est(cost_for(est, lambda z: -model.log_likelihood(x[:2], z)), q, generator=gen)
            except (TypeError, ValueError):
                continue
            names.append(name)
    return names


# ------------------------------------------------------------------ timing
#: "wall" (default) or "cpu": the calling thread's CPU time (``--clock cpu``)
CLOCK = "wall"


class Clock:
    """Accumulates wall time of labelled sections (synchronising on CUDA).

    With ``CLOCK == "cpu"`` it reads the calling thread's CPU time instead:
    on a CPU shared with other jobs, time spent waiting for a core is then not
    counted (valid with one intra-op thread only, which main() enforces).
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.thread_time() if CLOCK == "cpu" else time.perf_counter()

    @contextmanager
    def section(self, label: str) -> Iterator[None]:
        t0 = self.now()
        try:
            yield
        finally:
            self.totals[label] = self.totals.get(label, 0.0) + self.now() - t0


@contextmanager
def timed_autograd_grad(clock: Clock) -> Iterator[None]:
    """Count every ``torch.autograd.grad`` (estimators call it inside) as backward time."""
    original = torch.autograd.grad

    def grad(*args: Any, **kwargs: Any) -> Any:
        with clock.section("backward"):
            return original(*args, **kwargs)

    torch.autograd.grad = grad
    try:
        yield
    finally:
        torch.autograd.grad = original


class Runner:
    """One estimator training its own copy of the model, one step at a time."""

    def __init__(self, spec: str, model0: DiscreteVAE, x: Tensor, seed: int) -> None:
        self.spec = spec
        self.x = x
        self.model = copy.deepcopy(model0)
        self.est = HAND[spec]() if spec in HAND else make(spec).to(x.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=PROBLEMS[PROBLEM][1])
        self.cv_opt = cv_optimizer(
            self.est,
            CV_LR,
            lambda z: -self.model.log_likelihood(x, z),
            self.model.posterior(x),
        )
        self.gen = torch.Generator(device=x.device).manual_seed(seed)

    def step(self, clock: Clock | None = None) -> dict[str, float]:
        """One training step as ``discograd vae`` makes it; seconds per section."""
        clock = clock or Clock(self.x.device)
        model, x = self.model, self.x

        # The protocols' cost is the whole negative ELBO (kl="estimated")
        full_elbo = PROBLEM in ("coupled", "disarm-linear", "rodeo-nonlinear")

        t0 = clock.now()
        with timed_autograd_grad(clock):
            with clock.section("model"):
                q = model.posterior(x)
                a = q.base_dist.logits.detach()

            def f(z: Tensor) -> Tensor:
                with clock.section("f"):
                    if full_elbo:  # as VAE.objective(kl="estimated")
                        return (
                            model.log_prob(a, z)
                            - model.log_prob(model.prior_logits, z)
                            + model.neg_log_likelihood(x, z)
                        )
                    return -model.log_likelihood(x, z)

            out = self.est(cost_for(self.est, f), q, generator=self.gen)
            with clock.section("model"):
                loss = out.loss.mean() if full_elbo else (out.loss + model.analytic_kl(q)).mean()
            cv_loss = out.cv_loss
            if self.cv_opt is not None and cv_loss is not None and cv_loss.requires_grad:
                # As experiments.common.cv_step: only the control variate's parameters.
                params = [p for g in self.cv_opt.param_groups for p in g["params"]]
                grads = torch.autograd.grad(cv_loss, params, allow_unused=True, retain_graph=True)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                with clock.section("opt"):
                    self.cv_opt.step()
            self.opt.zero_grad(set_to_none=True)
            with clock.section("backward"):
                loss.backward()
            with clock.section("opt"):
                self.opt.step()
        total = clock.now() - t0
        res = {k: clock.totals.get(k, 0.0) for k in ("f", "model", "backward", "opt")}
        res["total"] = total
        res["overhead"] = total - sum(res[k] for k in ("f", "model", "backward", "opt"))
        res["evals"] = out.mean_evals
        return res


def interleaved(runners: list[Runner], rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Medians per runner of each section, the runners interleaved (rotating order)."""
    for _ in range(warmup):
        for r in runners:
            r.step()
    records: dict[str, list[dict[str, float]]] = {r.spec: [] for r in runners}
    for i in range(rounds):
        k = i % len(runners)
        for r in runners[k:] + runners[:k]:
            records[r.spec].append(r.step())
    return {
        spec: {key: statistics.median(rec[key] for rec in recs) for key in recs[0]}
        for spec, recs in records.items()
    }


# ------------------------------------------------------------------ memory
def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _high_water_kib() -> int:
    """The process's peak resident set in KiB: ``VmHWM``, else ``ru_maxrss``.

    Not ``ru_maxrss`` first: across ``execve`` it keeps the high-water mark of
    the process that spawned it (here the benchmark's parent, far larger), and
    ``clear_refs`` does not reset that inherited part.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def memory_child(spec: str, device: torch.device, steps: int) -> dict[str, Any]:
    """In a fresh process: transient peak memory (MiB) of ``steps`` training steps."""
    x, _ = images(device)
    runner = Runner(spec, initial_model(device), x, seed=1)
    for _ in range(2):
        runner.step()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            runner.step()
        torch.cuda.synchronize()
        return {"mib": (torch.cuda.max_memory_allocated(device) - base) / 2**20, "reset": True}
    reset = _reset_peak()
    base = _high_water_kib()
    for _ in range(steps):
        runner.step()
    return {"mib": (_high_water_kib() - base) / 1024, "reset": reset}


_MEMORY: dict[str, str] = {}


def peak_memory(spec: str, args: argparse.Namespace) -> str:
    """``peak MiB`` of ``spec`` measured in a fresh subprocess, formatted (cached per spec)."""
    if spec not in _MEMORY:
        _MEMORY[spec] = _peak_memory(spec, args)
    return _MEMORY[spec]


def _peak_memory(spec: str, args: argparse.Namespace) -> str:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-child", spec, "--threads", str(args.threads)]
    cmd += ["--device", args.device, "--memory-steps", str(args.memory_steps)]
    cmd += ["--problem", args.problem]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return "error: " + proc.stderr.strip().splitlines()[-1]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return f"{res['mib']:.1f}" + ("" if res["reset"] else "*")


# ------------------------------------------------------------------ profile
def profile(runner: Runner, steps: int, rows: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if runner.x.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    runner.step()
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            runner.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --------------------------------------------------------------------- main
def _fmt(v: float) -> str:
    return f"{v * 1e3:.1f}"


def arsm_against_rloo(
    model0: DiscreteVAE, x: Tensor, args: argparse.Namespace, rounds: int, warmup: int
) -> None:
    """Sections 1 and 2 (categorical problem): ARSM against RLOO at equal evaluations."""
    device = x.device
    # ARSM's evaluations on this batch at the initial weights -> RLOO's n_samples.
    with torch.no_grad():
        probe = make("arsm").to(device)
        gen = torch.Generator(device=device).manual_seed(SEED)
        evals = probe(
            lambda z: -model0.log_likelihood(x, z), model0.posterior(x), generator=gen
        ).mean_evals
    n_rloo = max(2, round(evals))
    arsm, arsm_chunked, rloo = (
        "arsm",
        f"arsm:max_evals_per_call={CHUNK}",
        f"rloo:n_samples={n_rloo}",
    )

    # --- 1 + 2: ARSM vs RLOO at equal evaluations.
    specs = [arsm, arsm_chunked, rloo]
    runners = [Runner(s, model0, x, seed=i + 1) for i, s in enumerate(specs)]
    med = interleaved(runners, rounds, warmup)
    print(f"## ARSM vs RLOO at equal evaluations (ARSM mean n_evals on the batch: {evals:.2f})\n")
    print("| estimator | f-evals/step | ms/step | f ms | backward ms | peak MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    mem = {s: peak_memory(s, args) for s in specs}
    for s in specs:
        m = med[s]
        print(
            f"| {s} | {m['evals']:.1f} | {_fmt(m['total'])} | {_fmt(m['f'])} | "
            f"{_fmt(m['backward'])} | {mem[s]} |"
        )
    t_ratio = med[arsm]["total"] / med[rloo]["total"]
    print(
        f"\nstep time ARSM / RLOO(n={n_rloo}): {t_ratio:.2f} (target <= 1.5: "
        f"{'met' if t_ratio <= 1.5 else 'MISSED'})"
    )
    try:
        m_ratio = float(mem[arsm].rstrip("*")) / float(mem[rloo].rstrip("*"))
        c_ratio = float(mem[arsm_chunked].rstrip("*")) / float(mem[rloo].rstrip("*"))
        print(
            f"peak memory ARSM / RLOO(n={n_rloo}): {m_ratio:.2f} (target <= 2: "
            f"{'met' if m_ratio <= 2 else 'MISSED'}); with max_evals_per_call={CHUNK}: "
            f"{c_ratio:.2f}"
        )
    except ValueError:
        print("peak memory ratio: unavailable (a memory subprocess failed)")
    print(
        f"step time chunked / unchunked ARSM: "
        f"{med[arsm_chunked]['total'] / med[arsm]['total']:.2f}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats; memory of ARSM/RLOO only"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--profile",
        nargs="*",
        metavar="SPEC",
        help="torch.profiler tables of these specs (none given: ARSM and RLOO on "
        "categorical, DisARM on the Bernoulli problems)",
    )
    parser.add_argument(
        "--estimators",
        nargs="+",
        metavar="SPEC",
        help="registry specs for the table (default: every applicable estimator)",
    )
    parser.add_argument("--problem", choices=list(PROBLEMS), default="categorical")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time (default) or the thread's CPU time (CPU, one thread: less "
        "sensitive to other jobs on a shared machine)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="leave out the peak-memory subprocesses"
    )
    parser.add_argument("--memory-child", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--memory-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global PROBLEM, CLOCK
    PROBLEM, CLOCK = args.problem, args.clock
    if CLOCK == "cpu" and (args.threads != 1 or args.device != "cpu"):
        parser.error("--clock cpu measures one thread: use --device cpu --threads 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, device, args.memory_steps)))
        return

    rounds, warmup = (4, 1) if args.quick else (10, 2)
    x, source = images(device)
    model0 = initial_model(device)
    print(
        f"# {PROBLEM} VAE, batch {len(x)}, data: {source}; device {device}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{rounds} interleaved repeats (medians), {CLOCK} clock\n"
    )

    if PROBLEM == "categorical":
        arsm_against_rloo(model0, x, args, rounds, warmup)

    # --- 3: every applicable estimator.
    names = args.estimators or applicable(model0, x)
    runners = [Runner(s, model0, x, seed=i + 1) for i, s in enumerate(names)]
    med = interleaved(runners, rounds, warmup)
    if args.estimators:
        print("## Selected estimators\n")
    else:
        print(
            f"## Every applicable registry estimator (defaults); skipped: "
            f"{', '.join(n for n in ESTIMATORS if n not in names)}\n"
        )
    print(
        "| estimator | f-evals/step | ms/step | f ms | model ms | backward ms | opt ms "
        "| overhead ms | overhead % | outside % | peak MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    over: list[str] = []
    for s in names:
        m = med[s]
        share = m["overhead"] / m["total"]
        outside = (m["overhead"] + m["model"]) / m["total"]
        if share > 0.10:
            over.append(f"{s} ({100 * share:.1f}%)")
        peak = "-" if args.quick or args.no_memory else peak_memory(s, args)
        print(
            f"| {s} | {m['evals']:.1f} | {_fmt(m['total'])} | {_fmt(m['f'])} | "
            f"{_fmt(m['model'])} | {_fmt(m['backward'])} | {_fmt(m['opt'])} | "
            f"{_fmt(m['overhead'])} | {100 * share:.1f} | {100 * outside:.1f} | {peak} |"
        )
    print(
        "\noverhead share <= 10% (target): "
        + ("met by every estimator" if not over else "MISSED by " + ", ".join(over))
    )
    if any(math.isnan(v) for m in med.values() for v in m.values()):
        print("warning: NaN timings")

    if args.profile is not None:
        profiled = args.profile or (
            ("arsm", "rloo:n_samples=4") if PROBLEM in ("categorical", "coupled") else ("disarm",)
        )
        for s in profiled:
            print(f"\n## torch.profiler: {s}, 3 steps, top ops by self CPU time\n")
            print(profile(Runner(s, model0, x, seed=7), 3, 15))


if __name__ == "__main__":
    main()
