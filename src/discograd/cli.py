"""The ``discograd`` command (also ``python -m discograd``).

Subcommands: ``bench`` (the main job: toy + variance + a short VAE, one
report), ``toy``, ``variance``, ``vae``, ``sbn``, ``ssl``, ``demo``. Each writes
``config.json``, ``metrics.jsonl``, ``results.json``, PNG plots and
``report.md`` into ``--out`` and resumes when re-run with the same ``--out``.
Errors in the input (:class:`~discograd.errors.ConfigError`: bad settings, an
unknown estimator or dataset, a run folder in use or damaged) end the command
with one line on stderr and exit status 2; ``--debug`` adds their traceback.
Any other exception is a bug in discograd and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from discograd.errors import ConfigError, RunFolderWarning

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _fmt(values: torch.Tensor, digits: int = 3) -> str:
    return "[" + " ".join(f"{float(v):.{digits}f}" for v in values) + "]"


# ----------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    from torch.distributions import Independent, OneHotCategorical

    import discograd as dg
    from discograd.diagnostics import gradient_stats

    if args.draws < 2:
        raise ConfigError(
            f"--draws must be >= 2 (gradient_stats needs n_draws >= 2), got {args.draws}"
        )
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
    print("\nNext: `discograd bench` compares every estimator and writes a report.")
    return 0


# ------------------------------------------------------------ shared helpers
def _run_dir(args: argparse.Namespace, config: dict[str, Any]):
    """The locked run folder of ``--out``; the device may change between runs."""
    from discograd.experiments import RunDir

    return RunDir(args.out, {"command": args.command, **config}, volatile=("device",))


def _diverged(result: dict[str, Any]) -> str | None:
    """The note "diverged at step 37 (non-finite loss)" for a diverged estimator, else None."""
    d = result.get("diverged")
    if not isinstance(d, dict):
        return None
    return f"diverged at step {d['step']} (non-finite {d['quantity']})"


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def _finish(run, title: str, command: str, sections, summary) -> None:
    from discograd.report import write_report

    path = write_report(run, title, command, sections, summary)
    print(f"\nreport: {path}")
    for line in summary:
        print(f"  * {line.replace('`', '')}")


def _command_line(argv: Sequence[str] | None) -> str:
    return "discograd " + " ".join(argv if argv is not None else sys.argv[1:])


def _toy_config(args: argparse.Namespace):
    from discograd.experiments.toy import ToyConfig

    return ToyConfig(
        C=args.C,
        R=args.R,
        steps=args.steps,
        lr=args.lr,
        estimators=tuple(args.estimators),
        record_every=args.record_every,
        var_every=args.var_every,
        var_draws=args.var_draws,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        device=args.device,
    )


def _variance_config(args: argparse.Namespace):
    from discograd.experiments.variance import VarianceConfig

    return VarianceConfig(
        problems=tuple(args.problems),
        estimators=tuple(args.estimators),
        temperatures=tuple(args.temperatures),
        n_draws=args.draws,
        warmup=args.warmup,
        seed=args.seed,
        device=args.device,
    )


def _dataset_fields(value: str) -> dict[str, Any]:
    """``--dataset`` takes a known name or a folder of IDX files."""
    from discograd.data import DATASETS

    if value == "digits" or value in DATASETS:
        return {"dataset": value, "dataset_path": None}
    folder = Path(value).expanduser()
    if not folder.is_dir():
        known = ", ".join(["digits", *DATASETS])
        raise ConfigError(
            f"--dataset {value!r} is neither a known dataset ({known}) nor an existing folder"
        )
    return {"dataset": folder.name, "dataset_path": str(folder.resolve())}


def _vae_config(args: argparse.Namespace, **overrides: Any):
    from discograd.experiments.vae import VAEConfig

    fields = dict(
        **_dataset_fields(args.dataset),
        data_dir=args.data_dir,
        binarization=args.binarization,
        latent=args.latent,
        n_latent=args.n_latent,
        n_categories=args.n_categories,
        hidden=tuple(args.hidden),
        activation=args.activation,
        prior=args.prior,
        kl=args.kl,
        estimators=tuple(args.estimators),
        anneal_rate=args.anneal_rate,
        anneal_every=args.anneal_every,
        tau_floor=args.tau_floor,
        lr=args.lr,
        batch_size=args.batch_size,
        steps=args.steps,
        log_every=args.log_every,
        eval_every=args.eval_every,
        eval_samples=args.eval_samples,
        iw_examples=args.iw_examples,
        checkpoint_every=args.checkpoint_every,
        grad_check_every=args.grad_check_every,
        grad_check_draws=args.grad_check_draws,
        seed=args.seed,
        device=args.device,
    )
    fields.update(overrides)
    return VAEConfig(**fields)


# ---------------------------------------------------------------- commands
def _single_study(args: argparse.Namespace, key: str, cfg: Any, runner, section, *extra) -> dict:
    """Validate, run (or resume) one study, write its results and report."""
    cfg.validate()
    with _run_dir(args, dataclasses.asdict(cfg)) as run:
        results = runner(cfg, run, quiet=args.quiet)
        run.write_results({key: results})
        text, summary = section(run, results, cfg, *extra)
        _finish(run, f"discograd {key}", args.command_line, [text], summary)
    return results


def _toy(args: argparse.Namespace) -> int:
    from discograd.experiments.toy import run_toy
    from discograd.report import toy_section

    _single_study(args, "toy", _toy_config(args), run_toy, toy_section)
    return 0


def _variance(args: argparse.Namespace) -> int:
    from discograd.experiments.variance import run_variance
    from discograd.report import variance_section

    _single_study(args, "variance", _variance_config(args), run_variance, variance_section)
    return 0


def _vae(args: argparse.Namespace) -> int:
    from discograd.experiments.vae import run_vae
    from discograd.report import vae_section

    cfg = _vae_config(args)
    results = _single_study(args, "vae", cfg, run_vae, vae_section, cfg.dataset)
    rows = [
        (
            k,
            _diverged(v)
            or f"test -ELBO {v['test_neg_elbo']:.2f}  IW({v['iw_samples']}) "
            f"{v['test_iw_bound']:.2f}  {1000 * v['seconds_per_step']:.1f} ms/step  "
            f"{v['evals_per_step']:.2f} evals/step",
        )
        for k, v in results.items()
    ]
    _print_table("VAE results", rows)
    return 0


def _sbn(args: argparse.Namespace) -> int:
    from discograd.experiments.sbn import SBNConfig, run_sbn
    from discograd.report import sbn_section

    cfg = SBNConfig(
        **_dataset_fields(args.dataset),
        data_dir=args.data_dir,
        binarization=args.binarization,
        latent=args.latent,
        units=tuple(args.units),
        n_categories=args.n_categories,
        hidden=tuple(args.hidden),
        activation=args.activation,
        estimators=tuple(args.estimators or ()),
        lr=args.lr,
        batch_size=args.batch_size,
        steps=args.steps,
        log_every=args.log_every,
        eval_every=args.eval_every,
        valid_samples=args.valid_samples,
        eval_samples=args.eval_samples,
        iw_examples=args.iw_examples,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        device=args.device,
    )
    results = _single_study(args, "sbn", cfg, run_sbn, sbn_section, cfg.dataset)
    _print_table(
        "SBN results",
        [
            (
                k,
                _diverged(v)
                or f"test NLL {v['test_nll']:.2f}  {1000 * v['seconds_per_step']:.1f} ms/step  "
                f"{v['evals_per_step']:.1f} decoder passes/step",
            )
            for k, v in results.items()
        ],
    )
    return 0


def _ssl(args: argparse.Namespace) -> int:
    from discograd.experiments.ssl import SSLConfig, run_ssl
    from discograd.report import ssl_section

    cfg = SSLConfig(
        **_dataset_fields(args.dataset),
        data_dir=args.data_dir,
        binarization=args.binarization,
        n_classes=args.n_classes,
        n_labels=args.n_labels,
        z_dim=args.z_dim,
        hidden=tuple(args.hidden),
        activation=args.activation,
        methods=tuple(args.methods),
        entropy=args.entropy,
        alpha=args.alpha,
        anneal_rate=args.anneal_rate,
        anneal_every=args.anneal_every,
        tau_floor=args.tau_floor,
        lr=args.lr,
        batch_size=args.batch_size,
        labelled_batch=args.labelled_batch,
        steps=args.steps,
        log_every=args.log_every,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        device=args.device,
    )
    timing_cfg = None
    if args.timing_classes:
        timing_cfg = dataclasses.replace(
            cfg,
            n_classes=args.timing_classes,
            n_labels=args.timing_classes,
            steps=args.timing_steps,
            log_every=min(cfg.log_every, args.timing_steps),
            eval_every=args.timing_steps,
            checkpoint_every=args.timing_steps,
        )
        timing_cfg.validate()
    cfg.validate()
    config = {"main": dataclasses.asdict(cfg)}
    if timing_cfg is not None:
        config["timing"] = dataclasses.asdict(timing_cfg)
    with _run_dir(args, config) as run:
        results = run_ssl(cfg, run, quiet=args.quiet)
        timing = None
        if timing_cfg is not None:
            from discograd.experiments import RunDir

            with RunDir(
                run.path / f"timing-{args.timing_classes}",
                dataclasses.asdict(timing_cfg),
                volatile=("device",),
            ) as sub_run:
                timing = run_ssl(timing_cfg, sub_run, quiet=args.quiet)
        run.write_results({"ssl": results, "timing": timing})
        text, summary = ssl_section(run, results, cfg, cfg.dataset, timing, args.timing_classes)
        _finish(run, "discograd ssl", args.command_line, [text], summary)
    return 0


BENCH_VAE = dict(
    n_latent=8,
    n_categories=4,
    hidden=(128, 64),
    batch_size=100,
    lr=1e-3,
    eval_samples=1000,
    iw_examples=300,
)


def bench_configs(args: argparse.Namespace):
    """The three studies of ``discograd bench`` (``--quick`` shrinks each)."""
    from discograd.experiments.toy import ToyConfig
    from discograd.experiments.vae import VAE_ESTIMATORS, VAEConfig
    from discograd.experiments.variance import VarianceConfig

    quick = args.quick
    toy = ToyConfig(
        steps=500 if quick else 3000,
        var_draws=50 if quick else 100,
        var_every=100,
        seed=args.seed,
        device=args.device,
    )
    variance = VarianceConfig(
        temperatures=(0.5, 1.0) if quick else (0.1, 0.5, 1.0, 2.0),
        n_draws=200 if quick else 1000,
        warmup=50 if quick else 200,
        seed=args.seed,
        device=args.device,
    )
    vae_fields = dict(BENCH_VAE)
    vae_fields.update(
        **_dataset_fields(args.dataset),
        data_dir=args.data_dir,
        steps=300 if quick else 2000,
        eval_every=100 if quick else 500,
        log_every=25 if quick else 50,
        eval_samples=100 if quick else 1000,
        estimators=VAE_ESTIMATORS,
        seed=args.seed,
        device=args.device,
    )
    vae = VAEConfig(**vae_fields)
    return toy, variance, vae


def _bench(args: argparse.Namespace) -> int:
    toy_cfg, var_cfg, vae_cfg = bench_configs(args)
    for cfg in (toy_cfg, var_cfg, vae_cfg):
        cfg.validate()
    config = {
        "quick": args.quick,
        "toy": dataclasses.asdict(toy_cfg),
        "variance": dataclasses.asdict(var_cfg),
        "vae": dataclasses.asdict(vae_cfg),
    }
    with _run_dir(args, config) as run:
        _bench_studies(args, run, toy_cfg, var_cfg, vae_cfg)
    return 0


def _bench_studies(args: argparse.Namespace, run, toy_cfg, var_cfg, vae_cfg) -> None:
    from discograd.experiments.toy import run_toy
    from discograd.experiments.vae import run_vae
    from discograd.experiments.variance import run_variance
    from discograd.report import toy_section, vae_section, variance_section
    from discograd.report.markdown import bench_summary

    start = time.perf_counter()
    sections, summary, results = [], [], {}
    studies: list[tuple[str, Callable[[], tuple[str, list[str]]]]] = []
    if "toy" not in args.skip:
        studies.append(
            ("toy", lambda: _study(run, "toy", run_toy, toy_section, toy_cfg, args, results))
        )
    if "variance" not in args.skip:
        studies.append(
            (
                "variance",
                lambda: _study(
                    run, "variance", run_variance, variance_section, var_cfg, args, results
                ),
            )
        )
    if "vae" not in args.skip:
        studies.append(
            (
                "vae",
                lambda: _study(
                    run, "vae", run_vae, vae_section, vae_cfg, args, results, vae_cfg.dataset
                ),
            )
        )
    for name, fn in studies:
        if not args.quiet:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        text, lines = fn()
        sections.append(text)
        summary += lines
        run.write_results(results)  # after every study: nothing finished is lost
    sections.insert(0, _simplex_section(run))
    run.write_results(results)
    _finish(run, "discograd bench", args.command_line, sections, bench_summary(results))
    print(f"bench took {time.perf_counter() - start:.0f} s")


def _study(run, key, runner, section, cfg, args, results, *extra):
    results[key] = runner(cfg, run, quiet=args.quiet)
    return section(run, results[key], cfg, *extra)


def _simplex_section(run) -> str:
    try:
        from discograd.report import plots
    except ImportError:
        return "## Concrete samples\n\n(install the `plot` extra for figures)\n"
    plots.simplex_samples(run.path / "concrete_simplex.png")
    return (
        "## Concrete samples on the simplex\n\n"
        "Gumbel-Softmax samples softmax((θ + G)/τ) of a 3-category variable: near the corners "
        "(almost one-hot, high-variance gradients) at low τ, near the centre (smooth, biased) "
        "at high τ; the argmax is an exact categorical sample at every τ (Jang et al. 2017, "
        "Fig. 1; Maddison et al. 2017).\n\n![Concrete samples](concrete_simplex.png)\n"
    )


# -------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(out_default),
        help=f"output folder; re-running with the same folder resumes (default: {out_default})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars (for CI and logs)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice; 1 avoids oversubscription "
        "when several runs share a machine)",
    )
    _debug_arg(p)


def _debug_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of errors in the input too (other errors always show one)",
    )


def _estimators_arg(p: argparse.ArgumentParser, default: Sequence[str]) -> None:
    p.add_argument(
        "--estimators",
        nargs="+",
        default=list(default),
        metavar="SPEC",
        help="estimator specs name[:key=value,...], e.g. rloo:n_samples=4 arsm "
        "gumbel_softmax:tau=0.5 (default: %(default)s)",
    )


def _activations() -> list[str]:
    from discograd.models.nets import ACTIVATIONS

    return list(ACTIVATIONS)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", default="digits", help="digits, mnist, fashion-mnist, kmnist or a folder"
    )
    p.add_argument("--data-dir", default=None, help="dataset cache (default: $DISCOGRAD_DATA)")
    p.add_argument("--binarization", default="threshold", choices=["threshold", "fixed", "dynamic"])


def build_parser() -> argparse.ArgumentParser:
    from discograd.estimators.registry import ESTIMATORS
    from discograd.experiments.toy import TOY_ESTIMATORS
    from discograd.experiments.vae import VAE_ESTIMATORS
    from discograd.experiments.variance import PROBLEMS, VARIANCE_ESTIMATORS

    parser = argparse.ArgumentParser(
        prog="discograd",
        description="Gradients through discrete random variables: which estimator, at what cost.",
        epilog="estimators: " + ", ".join(ESTIMATORS),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench = sub.add_parser(
        "bench",
        help="the main job: toy + variance study + a short VAE, one report",
        description="Every estimator on the ARSM toy, the bias/variance study and a short "
        "categorical VAE on the offline digits data; one report.md with tables and plots.",
        epilog="example: discograd bench --quick --out runs/bench-quick",
    )
    _common(bench, "runs/bench")
    bench.add_argument("--quick", action="store_true", help="smaller settings (under 2 minutes)")
    bench.add_argument(
        "--dataset", default="digits", help="VAE data: name or folder (default: digits)"
    )
    bench.add_argument("--data-dir", default=None, help="dataset cache (default: $DISCOGRAD_DATA)")
    bench.add_argument(
        "--skip", nargs="*", default=[], choices=["toy", "variance", "vae"], help="studies to skip"
    )
    bench.set_defaults(func=_bench)

    toy = sub.add_parser(
        "toy",
        help="the ARSM toy: maximise E[0.5 + (z+1)/(C R)] from theta = 0",
        description="Gradient ascent with each estimator on the ARSM toy problem.",
        epilog="example: discograd toy --steps 1000 --estimators exact arsm rloo:n_samples=10",
    )
    _common(toy, "runs/toy")
    toy.add_argument("--C", type=int, default=30, help="categories (default: 30)")
    toy.add_argument("--R", type=int, default=30, help="reward scale (default: 30)")
    toy.add_argument("--steps", type=int, default=5000, help="iterations (default: 5000)")
    toy.add_argument("--lr", type=float, default=1.0, help="step size (default: 1)")
    toy.add_argument("--record-every", type=int, default=10)
    toy.add_argument("--var-every", type=int, default=100, help="gradient variance every N steps")
    toy.add_argument("--var-draws", type=int, default=100, help="draws per variance estimate")
    toy.add_argument("--checkpoint-every", type=int, default=250)
    _estimators_arg(toy, TOY_ESTIMATORS)
    toy.set_defaults(func=_toy)

    var = sub.add_parser(
        "variance",
        help="bias / variance / SNR / cosine of each estimator against the exact gradient",
        description="Every estimator on small enumerable problems, per call and at equal cost.",
        epilog="example: discograd variance --problems toy bernoulli --draws 2000",
    )
    _common(var, "runs/variance")
    var.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    var.add_argument(
        "--temperatures",
        nargs="+",
        type=float,
        default=[0.1, 0.5, 1.0, 2.0],
        help="temperatures for relaxed estimators given without one",
    )
    var.add_argument("--draws", type=int, default=1000, help="draws per estimator (default: 1000)")
    var.add_argument("--warmup", type=int, default=200, help="training calls before measuring")
    _estimators_arg(var, VARIANCE_ESTIMATORS)
    var.set_defaults(func=_variance)

    vae = sub.add_parser(
        "vae",
        help="train discrete VAEs with each estimator; test -ELBO and IW bound",
        description="Categorical (default 20x10) or Bernoulli (200) VAE on binarised images.",
        epilog="example: discograd vae --dataset fashion-mnist --steps 5000 "
        "--estimators gumbel_softmax:tau=1.0 rloo:n_samples=4 arsm",
    )
    _common(vae, "runs/vae")
    _data_args(vae)
    vae.add_argument("--latent", default="categorical", choices=["categorical", "bernoulli"])
    vae.add_argument("--n-latent", type=int, default=20)
    vae.add_argument("--n-categories", type=int, default=10)
    vae.add_argument("--hidden", type=int, nargs="*", default=[512, 256])
    vae.add_argument("--activation", default="leaky_relu", choices=sorted(_activations()))
    vae.add_argument("--prior", default="uniform", choices=["uniform", "learned"])
    vae.add_argument("--kl", default="analytic", choices=["analytic", "relaxed"])
    vae.add_argument(
        "--anneal-rate", type=float, default=0.0, help="tau = max(floor, tau0 exp(-r t))"
    )
    vae.add_argument("--anneal-every", type=int, default=1000)
    vae.add_argument("--tau-floor", type=float, default=0.5)
    vae.add_argument("--lr", type=float, default=3e-4)
    vae.add_argument("--batch-size", type=int, default=200)
    vae.add_argument("--steps", type=int, default=2000)
    vae.add_argument("--log-every", type=int, default=50)
    vae.add_argument("--eval-every", type=int, default=500)
    vae.add_argument("--eval-samples", type=int, default=1000, help="importance samples m")
    vae.add_argument("--iw-examples", type=int, default=1000, help="test images for the IW bound")
    vae.add_argument("--checkpoint-every", type=int, default=500)
    vae.add_argument(
        "--grad-check-every",
        type=int,
        default=0,
        help="every N steps compare each estimator's encoder gradient with the exact one "
        "(needs an enumerable posterior, e.g. --n-latent 1 --n-categories 10; seed 000's toy)",
    )
    vae.add_argument("--grad-check-draws", type=int, default=100)
    _estimators_arg(vae, VAE_ESTIMATORS)
    vae.set_defaults(func=_vae)

    sbn = sub.add_parser(
        "sbn",
        help="structured output prediction: the bottom half of a digit from its top half",
        description="A two-layer stochastic binary network trained with each estimator "
        "(nested: one estimator per layer); importance-sampled test -log-likelihood.",
        epilog="example: discograd sbn --latent categorical --steps 1000 "
        "--estimators gumbel_softmax:tau=1.0 rloo:n_samples=4",
    )
    _common(sbn, "runs/sbn")
    _data_args(sbn)
    sbn.add_argument("--latent", default="bernoulli", choices=["bernoulli", "categorical"])
    sbn.add_argument(
        "--units",
        type=int,
        nargs="*",
        default=[],
        help="units per stochastic layer (default: 200 200 binary, or 20 20 categorical)",
    )
    sbn.add_argument("--n-categories", type=int, default=10)
    sbn.add_argument("--hidden", type=int, nargs="*", default=[])
    sbn.add_argument("--activation", default="tanh", choices=sorted(_activations()))
    sbn.add_argument(
        "--estimators",
        nargs="+",
        default=None,
        metavar="SPEC",
        help="estimator specs (default: gumbel_softmax, st_gumbel_softmax, reinforce_ema, "
        "rloo:n_samples=4, and disarm (Bernoulli) or ars (categorical))",
    )
    sbn.add_argument("--lr", type=float, default=1e-3)
    sbn.add_argument("--batch-size", type=int, default=100)
    sbn.add_argument("--steps", type=int, default=2000)
    sbn.add_argument("--log-every", type=int, default=50)
    sbn.add_argument("--eval-every", type=int, default=500)
    sbn.add_argument("--valid-samples", type=int, default=100)
    sbn.add_argument("--eval-samples", type=int, default=1000, help="importance samples m")
    sbn.add_argument("--iw-examples", type=int, default=1000)
    sbn.add_argument("--checkpoint-every", type=int, default=500)
    sbn.set_defaults(func=_sbn)

    ssl = sub.add_parser(
        "ssl",
        help="semi-supervised M2: estimators vs exact marginalisation over labels",
        description="M2 with few labels; Gumbel-Softmax / ST-GS / any estimator against exact "
        "marginalisation: accuracy, -ELBO and time per step, plus a timing run with many classes.",
        epilog="example: discograd ssl --steps 2000 --methods marginal gumbel_softmax:tau=1.0",
    )
    _common(ssl, "runs/ssl")
    _data_args(ssl)
    ssl.add_argument("--n-classes", type=int, default=10)
    ssl.add_argument("--n-labels", type=int, default=100)
    ssl.add_argument("--z-dim", type=int, default=16)
    ssl.add_argument("--hidden", type=int, nargs="*", default=[256])
    ssl.add_argument("--activation", default="softplus", choices=sorted(_activations()))
    ssl.add_argument(
        "--methods",
        nargs="+",
        default=["marginal", "gumbel_softmax:tau=1.0", "st_gumbel_softmax:tau=1.0"],
        metavar="METHOD",
        help="'marginal' and/or estimator specs (default: %(default)s)",
    )
    ssl.add_argument("--entropy", default="analytic", choices=["analytic", "sampled"])
    ssl.add_argument("--alpha", type=float, default=0.1)
    ssl.add_argument("--anneal-rate", type=float, default=0.0)
    ssl.add_argument("--anneal-every", type=int, default=1000)
    ssl.add_argument("--tau-floor", type=float, default=0.5)
    ssl.add_argument("--lr", type=float, default=1e-3)
    ssl.add_argument("--batch-size", type=int, default=100)
    ssl.add_argument("--labelled-batch", type=int, default=100)
    ssl.add_argument("--steps", type=int, default=2000)
    ssl.add_argument("--log-every", type=int, default=50)
    ssl.add_argument("--eval-every", type=int, default=500)
    ssl.add_argument("--checkpoint-every", type=int, default=500)
    ssl.add_argument(
        "--timing-classes",
        type=int,
        default=100,
        help="also time every method with this many (random) classes; 0 skips (default: 100)",
    )
    ssl.add_argument("--timing-steps", type=int, default=200)
    ssl.set_defaults(func=_ssl)

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
    _debug_arg(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = _command_line(argv)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            print(
                f"discograd {args.command}: error: --threads must be >= 1, got {threads}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("always", RunFolderWarning)
        warnings.showwarning = _warning_printer(args.command, warnings.showwarning)
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            out = getattr(args, "out", None)
            hint = f" (finished work is kept in {out})" if out else ""
            print(
                f"\ndiscograd {args.command}: interrupted; run the same command again to "
                f"resume{hint}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except ConfigError as err:
            # Only errors in the input: anything else is a bug and keeps its traceback.
            if args.debug:
                traceback.print_exc()
            message = " ".join(str(err).split("\n"))
            print(f"discograd {args.command}: error: {message}", file=sys.stderr)
            return EXIT_USAGE


def _warning_printer(command: str, fallback: Callable[..., None]) -> Callable[..., None]:
    """Run-folder repairs as one line each on stderr; other warnings as usual."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
        if issubclass(category, RunFolderWarning):
            print(f"discograd {command}: warning: {message}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
