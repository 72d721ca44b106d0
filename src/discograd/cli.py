"""The ``discograd`` command (also ``python -m discograd``).

Subcommands: ``bench`` (the main job: toy + variance + a short VAE, one
report), ``toy``, ``variance``, ``vae``, ``sbn``, ``ssl``, ``gates``, ``sweep`` (a grid of
those runs, see :mod:`discograd.experiments.sweep`), ``demo``. Each run
command is a :class:`~discograd.experiments.trainer.Task` run by the
:class:`~discograd.experiments.trainer.Trainer`: its flags, their defaults and
help come from the task's config dataclass; ``--config FILE`` and
``--set key=value`` override them (defaults < config file < flags < ``--set``).
Each writes ``config.json``, ``metrics.jsonl``, ``results.json``, PNG plots,
``report.md`` and ``models/`` into ``--out`` and resumes when re-run with the
same ``--out``.
Errors in the input (:class:`~discograd.errors.ConfigError`: bad settings, an
unknown estimator or dataset, a run folder in use or damaged) end the command
with one line on stderr and exit status 2; ``--debug`` adds their traceback.
Any other exception is a bug in discograd and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from discograd.errors import ConfigError, RunFolderWarning

if TYPE_CHECKING:  # the command imports the experiments lazily (fast --help)
    from discograd.experiments.runner import RunDir

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


def _command_line(argv: Sequence[str] | None) -> str:
    return "discograd " + " ".join(argv if argv is not None else sys.argv[1:])


# ------------------------------------------------------------------ commands
class _Command(NamedTuple):
    config: type
    task: Any  # a Task class; None for bench, which runs several
    help: str
    description: str
    example: str


def _commands() -> dict[str, _Command]:
    """The run commands: their config class, task, help texts and example."""
    from discograd.experiments.bench import BenchConfig
    from discograd.experiments.gates import GatesTask
    from discograd.experiments.sbn import SBNTask
    from discograd.experiments.ssl import SSLTask
    from discograd.experiments.topk import TopKTask
    from discograd.experiments.toy import ToyTask
    from discograd.experiments.vae import VAETask
    from discograd.experiments.variance import VarianceTask

    def task(cls: Any, *texts: str) -> _Command:
        return _Command(cls.Config, cls, *texts)

    return {
        "bench": _Command(
            BenchConfig,
            None,
            "the main job: toy + variance study + a short VAE, one report",
            "Every estimator on the ARSM toy, the bias/variance study and a short categorical "
            "VAE; one report.md with tables and plots. The studies' settings are nested: "
            "--set toy.steps=1000, --set vae.lr=1e-3, or [toy] tables in --config.",
            "discograd bench --quick --out runs/bench-quick",
        ),
        "toy": task(
            ToyTask,
            "the ARSM toy: maximise E[0.5 + (z+1)/(C R)] from theta = 0",
            "Gradient ascent with each estimator on the ARSM toy problem.",
            "discograd toy --steps 1000 --estimators exact arsm rloo:n_samples=10",
        ),
        "variance": task(
            VarianceTask,
            "bias / variance / SNR / cosine of each estimator against the exact gradient",
            "Every estimator on small enumerable problems, per call and at equal cost.",
            "discograd variance --problems toy bernoulli --draws 2000 --seeds 3",
        ),
        "vae": task(
            VAETask,
            "train discrete VAEs with each estimator; test -ELBO and IW bound",
            "Categorical (default 20x10) or Bernoulli (200) VAE on binarised images.",
            "discograd vae --config cfg.toml --set steps=300 --seeds 3 "
            "--estimators gumbel_softmax:tau=1.0 rloo:n_samples=4 arsm",
        ),
        "sbn": task(
            SBNTask,
            "structured output prediction: the bottom half of a digit from its top half",
            "A two-layer stochastic binary network trained with each estimator (nested: one "
            "estimator per layer); importance-sampled test -log-likelihood.",
            "discograd sbn --latent categorical --steps 1000 "
            "--estimators gumbel_softmax:tau=1.0 rloo:n_samples=4",
        ),
        "ssl": task(
            SSLTask,
            "semi-supervised M2: estimators vs exact marginalisation over labels",
            "M2 with few labels; Gumbel-Softmax / ST-GS / any estimator against exact "
            "marginalisation: accuracy, -ELBO and time per step, plus a timing run with many "
            "classes.",
            "discograd ssl --steps 2000 --methods marginal gumbel_softmax:tau=1.0",
        ),
        "gates": task(
            GatesTask,
            "sparse gates: L0 feature selection with Hard Concrete, HardKuma, Gaussian, ST gates",
            "A linear classifier on pixels with one gate per pixel and an L0 penalty "
            "lambda * sum P(z != 0); test accuracy against the fraction of gates open for each "
            "gate family and lambda.",
            "discograd gates --seeds 3 --lambdas 0.0001 0.001 0.003",
        ),
        "topk": task(
            TopKTask,
            "learn which k pixels to keep: RelaxedSubset vs SIMPLE vs I-MLE vs ST top-k",
            "A selector over the pixels and a linear classifier on the k kept pixels, "
            "trained jointly with each method (Xie & Ermon 2019 style feature selection); "
            "test accuracy with the top-k pixels of the learned logits, for each k.",
            "discograd topk --seeds 3 --ks 10 50",
        ),
    }


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"vae.dataset": x}`` -> ``{"vae": {"dataset": x}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _config(args: argparse.Namespace) -> Any:
    """The command's config: defaults < presets < ``--config`` < flags < ``--set``."""
    from discograd.experiments.config import build, parse_sets, read_file

    cls = args.config_class
    file: dict[str, Any] = {}
    if args.config is not None:
        file = read_file(args.config)
        held = file.pop("command", None)  # a run's config.json names its command
        if held is not None and held != args.command:
            raise ConfigError(f"{args.config} holds a {held} config, not a {args.command} one")
    flags = _nest({k: getattr(args, k) for k in args.config_flags if hasattr(args, k)})
    if args.seed is not None:
        if "seeds" in flags:
            raise ConfigError("give --seed or --seeds, not both")
        flags["seeds"] = [args.seed]
    config = build(cls, file, flags, parse_sets(args.set))
    config.validate()
    return config


def _open_run(args: argparse.Namespace, config: Any) -> RunDir:
    """The locked run folder of ``--out``; says in one line when it resumes a run.

    Also checks ``--log`` (before anything is written: a bad sink name is exit 2
    with nothing created) and records this session in ``meta.json``.
    """
    from discograd.experiments import open_run
    from discograd.experiments.meta import now, write_meta
    from discograd.experiments.sinks import make_sinks

    args.sinks = make_sinks(args.log)
    args.started, args.run_config = now(), config
    run = open_run(args.out, config, command=args.command, fresh=args.fresh)
    write_meta(run.path, device=_device(config), argv=args.argv, started=args.started)
    if run.resumed:
        done = len(run.state["done"])
        print(
            f"discograd {args.command}: resuming the run in {args.out} "
            f"({done} phase{'s' * (done != 1)} finished, {run.elapsed():.0f} s so far)"
        )
    return run


def _device(config: Any) -> str:
    """The device a run's config asks for, resolved (``auto`` becomes cpu or cuda)."""
    from discograd.experiments.common import resolve_device

    return str(resolve_device(config.device))


def _sections() -> dict[str, Callable[..., tuple[str, list[str]]]]:
    from discograd.report import (
        gates_section,
        sbn_section,
        ssl_section,
        topk_section,
        toy_section,
        vae_section,
        variance_section,
    )

    return {
        "toy": toy_section,
        "variance": variance_section,
        "vae": vae_section,
        "sbn": sbn_section,
        "ssl": ssl_section,
        "gates": gates_section,
        "topk": topk_section,
    }


def _finish(run: Any, args: argparse.Namespace, sections: list[str], summary: list[str]) -> None:
    from discograd.experiments.meta import now, write_meta
    from discograd.report import write_report

    path = write_report(run, f"discograd {args.command}", args.command_line, sections, summary)
    write_meta(
        run.path, device=_device(args.run_config), argv=args.argv, started=args.started, ended=now()
    )
    print(f"\nreport: {path}")
    for line in summary:
        print(f"  * {line.replace('`', '')}")
    print(f"{args.command} took {run.elapsed():.0f} s")


def _print_results(title: str, results: dict[str, Any], keys: Sequence[str]) -> None:
    """One line per estimator: its headline numbers as the report shows them."""
    from discograd.report.markdown import headline

    rows = headline(results, keys)
    print(f"\n{title}")
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def _task_command(args: argparse.Namespace) -> int:
    from discograd.experiments.trainer import Trainer

    task = args.task()
    config = _config(args)
    # Data first: a dataset that cannot be found or read leaves no run folder behind.
    data = task.load(config, quiet=args.quiet)
    with (
        _open_run(args, config) as run,
        Trainer(run, quiet=args.quiet, sinks=args.sinks) as trainer,
    ):
        results = trainer.run(task, config, data=data)
        written: dict[str, Any] = {task.name: results}
        extra: dict[str, Any] = {}
        if task.name == "ssl":
            extra["timing"] = written["timing"] = _ssl_timing(args, run, config)
        run.write_results(written)
        text, summary = _sections()[task.name](run, results, config, **extra)
        if task.headlines(config):
            _print_results(f"{task.name} results", results, task.headlines(config))
        _finish(run, args, [text], summary)
    return 0


def _ssl_timing(args: argparse.Namespace, run: Any, config: Any) -> dict[str, Any] | None:
    """The ssl timing run: an ordinary run folder of its own inside the main one."""
    from discograd.experiments import Trainer, open_run
    from discograd.experiments.ssl import SSLTask, timing_config

    timing = timing_config(config)
    if timing is None:
        return None
    folder = run.path / f"timing-{timing.n_classes}"
    with open_run(folder, timing, command="ssl") as sub:
        with Trainer(sub, quiet=args.quiet) as trainer:
            return trainer.run(SSLTask(), timing)


def _bench(args: argparse.Namespace) -> int:
    from discograd.experiments.trainer import Trainer
    from discograd.report import simplex_section

    config = _config(args)
    studies = [
        (name, task, sub, task.load(sub, quiet=args.quiet)) for name, task, sub in config.studies()
    ]
    with (
        _open_run(args, config) as run,
        Trainer(run, quiet=args.quiet, sinks=args.sinks) as trainer,
    ):
        sections, summary, results = [], [], {}
        for name, task, sub, data in studies:
            if not args.quiet:
                print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            results[name] = trainer.run(task, sub, data=data)
            text, lines = _sections()[name](run, results[name], sub)
            sections.append(text)
            summary += lines
            run.write_results(results)  # after every study: nothing finished is lost
        sections.insert(0, simplex_section(run))
        _finish(run, args, sections, summary)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from discograd.experiments.sweep import command
    from discograd.report.sweep import render

    return command(args, render)


# -------------------------------------------------------------------- parser
def _run_options(p: argparse.ArgumentParser, command: str) -> None:
    g = p.add_argument_group("run options")
    g.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        default=Path(f"runs/{command}"),
        help=f"output folder; re-running with the same folder resumes (default: runs/{command})",
    )
    g.add_argument(
        "--fresh",
        action="store_true",
        help="start the run in --out over: delete everything in it first (a discograd run "
        "folder only)",
    )
    g.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a .json, .toml or .yaml file (a run's config.json works as it is); "
        "flags and --set override it",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set steps=300 --set hidden=128,64 (nested: "
        "--set vae.lr=1e-3); applied last",
    )
    g.add_argument(
        "--seed", type=int, default=None, metavar="K", help="run seed K alone (instead of --seeds)"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars (for CI and logs)")
    g.add_argument(
        "--log",
        default="",
        metavar="SINKS",
        help="more views of the metrics besides metrics.jsonl (always written): csv, "
        "tensorboard, wandb, mlflow, comma-separated (e.g. --log csv,tensorboard)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: torch's choice; 1 avoids oversubscription "
        "when several runs share a machine)",
    )
    _debug_arg(g)


def _debug_arg(p: Any) -> None:
    p.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of errors in the input too (other errors always show one)",
    )


def build_parser() -> argparse.ArgumentParser:
    from discograd import __version__
    from discograd.estimators import registry
    from discograd.experiments.config import add_flags
    from discograd.experiments.vae import VAEConfig

    parser = argparse.ArgumentParser(
        prog="discograd",
        description="Gradients through discrete random variables: which estimator, at what cost.",
        epilog="estimators: "
        + ", ".join(registry.names(multi_sample=False))
        + "; multi-sample bounds (est(log_weight, q)): "
        + ", ".join(registry.names(multi_sample=True)),
        allow_abbrev=False,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"discograd {__version__} (torch {torch.__version__})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, spec in _commands().items():
        p = sub.add_parser(
            name,
            help=spec.help,
            description=spec.description,
            epilog=f"example: {spec.example}",
            allow_abbrev=False,
        )
        _run_options(p, name)
        settings = p.add_argument_group("settings (defaults < --config < these flags < --set)")
        dests = add_flags(settings, spec.config)
        if name == "bench":
            # The VAE study's data, as flags of their own.
            dests += add_flags(
                settings,
                VAEConfig,
                prefix="vae.",
                only=("dataset", "data_dir"),
            )
        p.set_defaults(
            func=_bench if name == "bench" else _task_command,
            task=spec.task,
            config_class=spec.config,
            config_flags=dests,
        )

    from discograd.experiments.sweep import add_parser as add_sweep

    add_sweep(sub, _sweep)

    demo = sub.add_parser(
        "demo",
        help="sample, compute an exact gradient, print both",
        description="A short tour: Gumbel-Softmax samples, an exact gradient by enumeration.",
        epilog="example: discograd demo --seed 1",
        allow_abbrev=False,
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
    args.argv = sys.argv if argv is None else ["discograd", *argv]
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

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, RunFolderWarning):
            print(f"discograd {command}: warning: {message}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
