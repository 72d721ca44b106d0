"""The one training loop: every experiment is a :class:`Task`, run by the :class:`Trainer`.

A task says what one training step, one evaluation and the final test are
(:meth:`Task.step`, :meth:`Task.evaluate`, :meth:`Task.finish`); the Trainer
owns everything around them, the same for every experiment:

* the phases: one per estimator (a :class:`Unit`) and seed, named
  ``<task>/<unit>/seed<k>``, each finished once and recorded in the run folder;
* named random streams (:meth:`Context.stream`), seeded from a SHA-256 of the
  seed and the stream's name, never by offsets: the training stream of seed 1
  is not the validation stream of seed 0;
* the estimator (from the registry), its control-variate optimiser (sized
  lazily by one throw-away step) and the temperature annealing;
* the guarded update: a non-finite loss, control-variate loss or gradient stops
  the phase before it reaches the model (recorded as ``diverged``; the next
  phase runs);
* cost accounting (f-evaluations and seconds per step, and the seconds per
  step of each of :data:`TIMING_WINDOWS` stretches of the phase: repeated
  measurements for the reports' medians), progress bars, logging to
  ``metrics.jsonl`` and to any sinks;
* checkpoints and exact resumption: the checkpoint of step s is saved before
  anything of step s is logged, so a resumed phase logs exactly what an
  uninterrupted one would; Ctrl-C finishes the step, saves a checkpoint and
  raises ``KeyboardInterrupt`` (a second Ctrl-C stops at once);
* the final model of each phase, kept as ``models/<phase>.pt``;
* the results: per seed, and their mean ± standard error (:func:`aggregate`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from discograd.estimators.base import Estimator
from discograd.experiments.common import (
    cv_optimizer,
    has_temperature,
    lazily_sized,
    resolve_device,
    slug,
)
from discograd.experiments.config import to_dict, volatile_keys
from discograd.experiments.runner import RunDir, atomic_save, progress
from discograd.experiments.sinks import Logger, Sink

__all__ = [
    "TIMING_WINDOWS",
    "Cadence",
    "Context",
    "Diverged",
    "Sink",
    "StepResult",
    "Task",
    "TaskState",
    "Trainer",
    "Unit",
    "aggregate",
    "open_run",
    "stream_seed",
]

#: version of the layout of ``models/<phase>.pt``
MODEL_FORMAT = 1

#: A phase's steps are timed in this many consecutive windows (a result's
#: ``step_seconds``): repeated measurements, so that reports can give a median and
#: its spread rather than one mean that a single slow stretch can move.
TIMING_WINDOWS = 20


@functools.lru_cache(maxsize=4096)
def stream_seed(seed: int, name: str) -> int:
    """The seed of random stream ``name`` of run seed ``seed``: a SHA-256 of both, 63 bits.

    Streams of different names or seeds are unrelated (no offsets to collide).
    """
    digest = hashlib.sha256(f"discograd/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ----------------------------------------------------------------- task API
@dataclass
class StepResult:
    """What one training step of a task computed; the Trainer applies it.

    Attributes:
        loss: scalar to minimise (its gradient reaches the model's parameters);
            ``None`` for a task that trains no model (only control variates).
        cv_loss: the estimator's control-variate loss, or ``None``.
        n_evals: evaluations of the cost per example in this step.
        metrics: numbers averaged over ``log_every`` steps and logged
            (tensors are fine: they are read only when logged).
        counts: other costs per step (summed; logged and reported per step).
        after_backward: called once the model's gradients of ``loss`` are in the
            parameters' ``.grad`` and checked finite, before the optimiser steps
            (to record statistics of the gradient, e.g. its running variance).
    """

    loss: Tensor | None
    cv_loss: Tensor | None = None
    n_evals: float | Tensor = 0.0
    metrics: Mapping[str, float | Tensor | None] = field(default_factory=dict)
    counts: Mapping[str, float] = field(default_factory=dict)
    after_backward: Callable[[], None] | None = None


@dataclass
class TaskState:
    """The state of one phase: what the Trainer trains, checkpoints and saves.

    ``model``'s trainable parameters get the task's optimiser; ``estimator``'s
    trainable parameters are control variates (Adam at ``cv_lr``). Subclasses
    add what their steps need (data, constants).
    """

    model: nn.Module | None
    estimator: nn.Module | None


@dataclass(frozen=True)
class Unit:
    """One column of a study: an estimator spec and its label in the results.

    ``spec`` is ``None`` for a method without an estimator (M2's exact
    marginalisation); ``extra`` is the task's own (the variance study's problem).
    """

    key: str
    spec: str | None
    extra: Any = None


@dataclass(frozen=True)
class Cadence:
    """How long a phase trains and how often it logs, checkpoints and evaluates (0: never).

    ``evaluate_every``: the periods of the task's evaluations (:meth:`Task.evaluate`
    is called at the steps where one of them is due, and at the first and last
    step); ``None``: at every step (the task decides).
    """

    steps: int
    log_every: int = 0
    checkpoint_every: int = 0
    evaluate_every: tuple[int, ...] | None = None

    def evaluates(self, step: int) -> bool:
        if self.evaluate_every is None or step in (0, self.steps):
            return True
        return any(every and step % every == 0 for every in self.evaluate_every)


C = TypeVar("C")
S = TypeVar("S", bound=TaskState)


class Task(Generic[C, S]):
    """An experiment: its config class and what a step, an evaluation and the end are.

    Subclasses set :attr:`name` and :attr:`Config` and define :meth:`setup` and
    :meth:`step`; every other method has a default. They hold no state of
    their own: everything a phase needs is in the state :meth:`setup` returns.
    """

    #: the command and the first part of every phase name
    name: ClassVar[str]
    #: the config dataclass (flags, defaults and help come from its fields)
    Config: ClassVar[type]
    #: result keys the command prints per estimator (mean ± s.e. over seeds)
    headline: ClassVar[tuple[str, ...]] = ()
    #: config fields holding the periods of :meth:`evaluate`'s work (``ctx.due``);
    #: ``None``: :meth:`evaluate` is called at every step
    evaluations: ClassVar[tuple[str, ...] | None] = None

    def headlines(self, config: C) -> tuple[str, ...]:
        """The result keys the command prints for ``config`` (default: :attr:`headline`)."""
        return self.headline

    def load(self, config: C, *, quiet: bool = False) -> Any:
        """Data shared by every phase, loaded once per run (default: none)."""
        return None

    def units(self, config: C) -> list[Unit]:
        """What to train, in order: by default one unit per estimator spec."""
        from discograd.estimators.registry import canonical

        return [Unit(canonical(spec), spec) for spec in config.estimators]  # type: ignore[attr-defined]

    def estimator(self, config: C, unit: Unit) -> nn.Module | None:
        """The estimator of ``unit`` from the registry, annealed if the config says so."""
        from discograd.estimators.registry import make

        if unit.spec is None:
            return None
        return anneal(make(unit.spec), config)

    def setup(self, config: C, data: Any, ctx: Context, estimator: Any) -> S:
        """The state of a new phase (called with the global RNG seeded: initial weights)."""
        raise NotImplementedError

    def optimizer(self, config: C, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The model's optimiser (default: Adam at ``config.lr``)."""
        return torch.optim.Adam(params, lr=config.lr)  # type: ignore[attr-defined]

    def cadence(self, config: C, state: S) -> Cadence:
        periods = None
        if self.evaluations is not None:
            periods = tuple(int(getattr(config, name)) for name in self.evaluations)
        return Cadence(
            config.steps,  # type: ignore[attr-defined]
            config.log_every,  # type: ignore[attr-defined]
            config.checkpoint_every,  # type: ignore[attr-defined]
            periods,
        )

    def step(self, state: S, step: int, ctx: Context) -> StepResult:
        """One training step's losses (the Trainer checks and applies them)."""
        raise NotImplementedError

    def evaluate(self, state: S, step: int, ctx: Context) -> dict[str, Any]:
        """Called after every step (and at step 0), in eval mode: what is due, or ``{}``.

        Use :meth:`Context.due` for cadences; the record of the last step
        becomes part of the phase's result.
        """
        return {}

    def finish(self, state: S, ctx: Context) -> dict[str, Any]:
        """Final numbers of a phase that did not diverge (test metrics), in eval mode.

        Save figures' data here too (``ctx.path``).
        """
        return {}

    def state_dict(self, state: S) -> dict[str, Any]:
        """State beyond model, estimator, optimisers and streams, for checkpoints."""
        return {}

    def load_state_dict(self, state: S, saved: Mapping[str, Any]) -> None:
        pass

    def collect(self, config: C, per_seed: dict[str, dict[int, dict[str, Any]]]) -> Any:
        """The study's results from each unit's per-seed results (default: aggregated)."""
        return {key: aggregate(seeds) for key, seeds in per_seed.items()}


def anneal(estimator: Estimator, config: Any) -> Estimator:
    """Give a relaxed estimator Jang et al.'s exponential temperature decay, if configured.

    Applies to configs with ``anneal_rate > 0`` (and ``anneal_every``,
    ``tau_floor``): tau = max(floor, tau0 exp(-rate N floor(t / N))).
    """
    rate = getattr(config, "anneal_rate", 0.0)
    if rate > 0 and has_temperature(estimator):
        from discograd.schedules import ExponentialDecay

        tau0 = estimator.schedule(0)  # type: ignore[operator]
        estimator.schedule = ExponentialDecay(  # type: ignore[assignment]
            tau0=tau0, rate=rate, floor=min(config.tau_floor, tau0), every=config.anneal_every
        )
    return estimator


class Context:
    """What a task's methods get besides their state: streams, the device, the run folder."""

    def __init__(
        self,
        run: RunDir,
        phase: str,
        unit: Unit,
        seed: int,
        config: Any,
        device: torch.device,
        steps: int = 0,
        namespace: str = "",
    ) -> None:
        self.run, self.phase, self.unit, self.seed = run, phase, unit, seed
        self.config, self.device, self.steps = config, device, steps
        self.path: Path = run.path
        self._namespace = namespace
        self._streams: dict[str, torch.Generator] = {}
        self._saved: dict[str, Tensor] = {}

    def seed_of(self, name: str) -> int:
        return stream_seed(self.seed, self._namespace + name)

    def generator(self, name: str, device: torch.device | str | None = None) -> torch.Generator:
        """A new generator seeded for ``name``: the same numbers at every call.

        For what must not depend on when it is asked for: a validation set's
        noise, the batch order of an epoch, a step's binarisation.
        """
        dev = torch.device(device) if device is not None else self.device
        return torch.Generator(device=dev).manual_seed(self.seed_of(name))

    def stream(self, name: str) -> torch.Generator:
        """The phase's stream ``name`` on the device: it moves on as it is used and is
        saved with every checkpoint."""
        gen = self._streams.get(name)
        if gen is None:
            gen = self._streams[name] = self.generator(name)
            if name in self._saved:
                gen.set_state(self._saved.pop(name))
        return gen

    def seeded(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A block in which the global RNG is seeded for ``name`` (and restored after), for
        code that takes no generator (``Distribution.sample``)."""
        return _seeded(self.seed_of(name), self.device)

    def due(self, step: int, every: int) -> bool:
        """Whether something done every ``every`` steps (0: never) is due at ``step``
        (always at the last step)."""
        return bool(every) and (step % every == 0 or step == self.steps)

    def records(self) -> list[dict[str, Any]]:
        """This phase's records so far."""
        return self.run.records(self.phase)

    def probe(self) -> Context:
        """A context whose streams are unrelated to this one's, for throw-away calls."""
        return Context(
            self.run,
            self.phase,
            self.unit,
            self.seed,
            self.config,
            self.device,
            self.steps,
            self._namespace + "probe/",
        )

    def _stream_states(self) -> dict[str, Tensor]:
        return {**self._saved, **{k: g.get_state() for k, g in self._streams.items()}}

    def _load_stream_states(self, states: Mapping[str, Tensor]) -> None:
        self._saved = dict(states)
        for name, gen in self._streams.items():
            if name in self._saved:
                gen.set_state(self._saved.pop(name))


# ---------------------------------------------------------------- divergence
class Diverged(Exception):
    """A training step produced a non-finite ``quantity``."""

    def __init__(self, quantity: str) -> None:
        super().__init__(f"non-finite {quantity}")
        self.quantity = quantity


def check_finite(quantity: str, *tensors: Tensor | None) -> None:
    """Raise :class:`Diverged` naming ``quantity`` unless every tensor (``None`` skipped) is
    finite: one device synchronisation in the common case on an accelerator.

    Fast path: the sum of each tensor, a vectorised reduction that allocates
    nothing of its size (``isfinite(t).all()`` materialises a bool tensor per
    parameter, several times slower on CPU), read as a Python float. A sum of
    finite values is finite unless it overflows, so a non-finite sum is
    confirmed entry by entry before the step is declared diverged.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return
    if len(present) == 1 and present[0].numel() == 1:  # a loss: read it, no reduction
        total = present[0].item()
    elif present[0].device.type == "cpu":
        # Python floats: no accumulation ops (reading a CPU tensor costs no synchronisation).
        total = 0.0
        for t in present:
            total += t.sum().item()
    else:
        total = torch.stack([t.sum().float() for t in present]).sum().item()
    if math.isfinite(total):
        return
    if not all(bool(torch.isfinite(t).all()) for t in present):
        raise Diverged(quantity)


def cv_step(cv_loss: Tensor, cv_opt: torch.optim.Optimizer) -> None:
    """One step of ``cv_opt`` on ``cv_loss``, touching only that optimiser's parameters.

    ``cv_loss.backward()`` would also accumulate into the model's ``.grad``
    where the loss depends on them; ``autograd.grad`` keeps the two apart.
    """
    params = [p for group in cv_opt.param_groups for p in group["params"]]
    # retain_graph: the model's loss is back-propagated next and can share this graph.
    grads = torch.autograd.grad(cv_loss, params, allow_unused=True, retain_graph=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    cv_opt.step()


# ------------------------------------------------------------------ results
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def aggregate(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """One unit's results over seeds: the mean of every numeric entry, its s.e. and n.

    Returns the entries of a single-seed result with numbers replaced by their
    mean over the seeds where they are finite (entries equal in every seed
    keep their value, ints included), and:

    * ``se``: standard error of each mean (sample standard deviation / √n;
      ``None`` below two values);
    * ``n``: how many seeds each mean is over;
    * ``seeds`` and ``per_seed`` (``{seed: result}``), the numbers themselves;
    * ``diverged``: ``None``, or the first divergence with ``seeds``: the
      seeds that diverged.

    Other entries keep their value when it is the same in every seed, and are
    ``None`` otherwise (each seed's is in ``per_seed``).
    """
    seeds = sorted(per_seed)
    results = [per_seed[s] for s in seeds]
    keys: list[str] = []
    for r in results:
        keys += [k for k in r if k not in keys]
    out: dict[str, Any] = {}
    se: dict[str, float | None] = {}
    n: dict[str, int] = {}
    for key in keys:
        if key == "diverged":
            continue
        values = [r.get(key) for r in results]
        present = [v for v in values if v is not None]
        if present and all(_number(v) for v in present):
            finite = [float(v) for v in present if math.isfinite(v)]
            n[key] = len(finite)
            if len(set(present)) == 1 and len(present) == len(values):
                out[key] = present[0]  # the same in every seed (a setting, a count)
            else:
                out[key] = sum(finite) / len(finite) if finite else None
            se[key] = _standard_error(finite)
        else:
            # One seed's list (its timing windows) must not pass for the run's.
            same = all(v == present[0] for v in present)
            out[key] = present[0] if present and same else None
    gone = [(s, r["diverged"]) for s, r in zip(seeds, results, strict=True) if r.get("diverged")]
    out["diverged"] = {**gone[0][1], "seeds": [s for s, _ in gone]} if gone else None
    out["se"], out["n"] = se, n
    out["seeds"] = seeds
    out["per_seed"] = {str(s): dict(r) for s, r in zip(seeds, results, strict=True)}
    return out


def _standard_error(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var / len(values))


# ------------------------------------------------------------------ trainer
def open_run(out: str | Path, config: Any, *, command: str, fresh: bool = False) -> RunDir:
    """The run folder of ``config`` for ``command``, as the command line opens it.

    ``config.json`` holds the command's name and the config (accepted back
    by ``--config``); the config's volatile settings (device, seeds) may
    change when the run resumes. A sweep cell is such a folder.
    """
    return RunDir(
        out,
        {"command": command, **to_dict(config)},
        volatile=volatile_keys(type(config)),
        fresh=fresh,
    )


class _Interrupts:
    """Ctrl-C during training: finish the step, checkpoint, then ``KeyboardInterrupt``.

    Only in the main thread (signal handlers live there); a second Ctrl-C
    raises at once.
    """

    def __init__(self) -> None:
        self.pending = False
        self._installed = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        print(
            "\ninterrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            # None: a handler not set from Python; the default is the closest we can restore.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNG seeded (initial weights), and restored afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    training = [m for m in modules if m is not None and m.training]
    for m in training:
        m.eval()
    try:
        yield
    finally:
        for m in training:
            m.train()


@dataclass
class _Progress:
    """Counters of a phase, saved with its checkpoints."""

    step: int = 0
    evals: float = 0.0
    seconds: float = 0.0
    counts: dict[str, float] = field(default_factory=dict)
    window: list[dict[str, Any]] = field(default_factory=list)
    # Timing windows: seconds per step of each one finished, and where the open one began.
    step_seconds: list[float] = field(default_factory=list)
    timed_steps: int = 0
    timed_seconds: float = 0.0

    def time_window(self, done: int, steps: int) -> None:
        """Close the timing window ending after step ``done`` (of ``steps``), if one does."""
        width = max(1, steps // TIMING_WINDOWS)
        if done > self.timed_steps and (done % width == 0 or done == steps):
            per_step = (self.seconds - self.timed_seconds) / (done - self.timed_steps)
            self.step_seconds.append(per_step)
            self.timed_steps, self.timed_seconds = done, self.seconds

    def per_step(self, done: int) -> dict[str, float | None]:
        rates: dict[str, float | None] = {
            "evals_per_step": self.evals / done if done else None,
            "seconds_per_step": self.seconds / done if done else None,
        }
        rates.update({f"{k}_per_step": v / done if done else None for k, v in self.counts.items()})
        return rates


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


class Trainer:
    """Runs tasks in a run folder: every phase of every study, resumably.

    Args:
        run: the (locked) run folder; several tasks may share it (``bench``).
        quiet: no progress bars.
        sinks: more places for the records (opened once, replayed on resume).

    Use as a context manager (the sinks are closed at the end), or call
    :meth:`close`::

        with Trainer(run) as trainer:
            results = trainer.run(ToyTask(), ToyConfig(steps=100))
    """

    def __init__(self, run: RunDir, *, quiet: bool = False, sinks: Sequence[Sink] = ()) -> None:
        self.run_dir = run
        self.quiet = quiet
        self.sinks = list(sinks)
        self._logger: Logger | None = None

    def __enter__(self) -> Trainer:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Open the sinks and rebuild them from ``metrics.jsonl`` (see :class:`Logger`)."""
        if self._logger is None:
            self._logger = Logger(self.run_dir, self.sinks)

    def close(self) -> None:
        if self._logger is not None:
            logger, self._logger = self._logger, None
            logger.close()

    def _log(self, record: dict[str, Any]) -> None:
        self.open()
        assert self._logger is not None
        self._logger.log(record)

    # ---------------------------------------------------------------- run
    def run(self, task: Task[Any, Any], config: Any, *, data: Any = None) -> Any:
        """Run (or resume) every phase of ``task``; returns ``task.collect``'s results."""
        self.open()
        config.validate()
        device = resolve_device(config.device)
        if data is None:
            data = task.load(config, quiet=self.quiet)
        units = task.units(config)
        per_seed: dict[str, dict[int, dict[str, Any]]] = {}
        total = len(units) * len(config.seeds)
        with progress(total, task.name, quiet=self.quiet or total < 2) as bar:
            for unit in units:
                per_seed[unit.key] = {}
                for seed in config.seeds:
                    phase = f"{task.name}/{unit.key}/seed{seed}"
                    if not self.run_dir.is_done(phase):
                        result = _Phase(self, task, config, unit, seed, data, device).train()
                        self.run_dir.finish(phase, result)
                    per_seed[unit.key][seed] = self.run_dir.result(phase)
                    bar.update()
        return task.collect(config, per_seed)


class _Phase:
    """One phase (a unit and a seed) of a task: built, resumed, trained, finished."""

    def __init__(
        self,
        trainer: Trainer,
        task: Task[Any, Any],
        config: Any,
        unit: Unit,
        seed: int,
        data: Any,
        device: torch.device,
    ) -> None:
        self.trainer, self.task, self.config, self.device = trainer, task, config, device
        self.run = trainer.run_dir
        self.name = f"{task.name}/{unit.key}/seed{seed}"
        self.ctx = ctx = Context(self.run, self.name, unit, seed, config, device)
        # Initial weights (the same for every estimator of a seed) and lazily sized
        # control variates come from the global RNG: seeded here, restored after.
        with ctx.seeded("init"):
            est = task.estimator(config, unit)
            self.state = task.setup(config, data, ctx, None if est is None else est.to(device))
            self.cv_opt = self._cv_optimizer()
        model = self.state.model
        self.params = [p for p in model.parameters() if p.requires_grad] if model else []
        self.opt = task.optimizer(config, self.params) if self.params else None
        self.cadence = task.cadence(config, self.state)
        ctx.steps = self.cadence.steps
        self.progress = _Progress()

    def _cv_optimizer(self) -> torch.optim.Optimizer | None:
        """Adam over the estimator's trainable control-variate parameters, if any.

        Lazily sized layers (RELAX's default network) get their shapes from one
        throw-away step first: in eval mode (no schedule or baseline moves), on
        streams of their own (no stream moves), with autograd on (RELAX sizes
        them only then).
        """
        est = self.state.estimator
        if est is None:
            return None
        if lazily_sized(est):
            with _eval_mode(est):
                self.task.step(self.state, 0, self.ctx.probe())
        return cv_optimizer(est, self.config.cv_lr)

    # ------------------------------------------------------- checkpoints
    def _parts(self) -> dict[str, Any]:
        """What a checkpoint holds besides the counters, streams and the task's extra state."""
        return {
            "model": self.state.model,
            "opt": self.opt,
            "estimator": self.state.estimator,
            "cv_opt": self.cv_opt,
        }

    def _checkpoint(self, step: int) -> None:
        prog = self.progress
        prog.step = step
        prog.window = [{k: _plain(v) for k, v in m.items()} for m in prog.window]
        saved = {k: None if v is None else v.state_dict() for k, v in self._parts().items()}
        saved.update(
            progress=dataclasses.asdict(prog),
            streams=self.ctx._stream_states(),
            task=self.task.state_dict(self.state),
        )
        self.run.save_checkpoint(self.name, saved, self.device)

    def _restore(self) -> None:
        saved = self.run.resume(self.name, self.device)
        if saved is None:
            return
        with self.run.restoring(self.name):
            self.progress = _Progress(**saved["progress"])
            for key, part in self._parts().items():
                if part is not None:
                    part.load_state_dict(saved[key])
            self.ctx._load_stream_states(saved["streams"])
            self.task.load_state_dict(self.state, saved["task"])

    # -------------------------------------------------------------- train
    def train(self) -> dict[str, Any]:
        """Run the phase from where it stands; returns its result."""
        self._restore()
        task, state, ctx, prog, cadence = (
            self.task,
            self.state,
            self.ctx,
            self.progress,
            self.cadence,
        )
        log = self.trainer._log
        start, steps = prog.step, cadence.steps
        diverged: dict[str, Any] | None = None
        final: dict[str, Any] = {}
        desc = f"{ctx.unit.key} seed {ctx.seed}"
        quiet = self.trainer.quiet or steps == 0
        with progress(steps, desc, quiet=quiet, initial=start) as bar, _Interrupts() as stop:
            for step in range(start, steps + 1):
                # Checkpoint first: a resumed run replays this whole step, logging included.
                if step > start and (
                    stop.pending
                    or step == steps
                    or (cadence.checkpoint_every and step % cadence.checkpoint_every == 0)
                ):
                    self._checkpoint(step)
                    if stop.pending:
                        raise KeyboardInterrupt
                if cadence.log_every and step and step % cadence.log_every == 0 and prog.window:
                    keys = dict.fromkeys(k for m in prog.window for k in m)
                    means = {k: _mean([_plain(m.get(k)) for m in prog.window]) for k in keys}
                    log({"phase": self.name, "step": step, **means, **prog.per_step(step)})
                    prog.window = []
                record = {}
                if cadence.evaluates(step):  # switching modes costs a little every step
                    with _eval_mode(state.model, state.estimator):
                        record = task.evaluate(state, step, ctx)
                if record:
                    costs = {"evals": prog.evals, "seconds": prog.seconds}
                    log({"phase": self.name, "step": step, **record, **costs})
                if step == steps:
                    final = record
                    break
                t0 = time.perf_counter()
                result = task.step(state, step, ctx)
                try:
                    self._update(result)
                except Diverged as err:
                    diverged = {"estimator": ctx.unit.key, "step": step, "quantity": err.quantity}
                    log({"phase": self.name, "diverged": True, **diverged})
                    break
                prog.seconds += time.perf_counter() - t0
                prog.evals += float(result.n_evals)
                for k, v in result.counts.items():
                    prog.counts[k] = prog.counts.get(k, 0.0) + float(v)
                prog.window.append(dict(result.metrics))
                prog.time_window(step + 1, steps)
                bar.update()
        return self._finish(final, diverged)

    def _update(self, result: StepResult) -> None:
        """One guarded step: nothing non-finite reaches the control variates or the model."""
        check_finite("loss", result.loss)
        check_finite("control-variate loss", result.cv_loss)
        cv_loss, opt = result.cv_loss, self.opt
        if self.cv_opt is not None and cv_loss is not None and cv_loss.requires_grad:
            cv_step(cv_loss, self.cv_opt)
        if opt is None or result.loss is None:
            return
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        check_finite("gradient", *(p.grad for p in self.params))
        if result.after_backward is not None:
            result.after_backward()
        opt.step()

    def _finish(self, final: dict[str, Any], diverged: dict[str, Any] | None) -> dict[str, Any]:
        done = diverged["step"] if diverged is not None else self.cadence.steps
        summary: dict[str, Any] = {"steps": done, **self.progress.per_step(done)}
        summary["step_seconds"] = list(self.progress.step_seconds)
        if diverged is None:
            # A model stopped part-way has no final numbers worth comparing.
            with _eval_mode(self.state.model, self.state.estimator):
                finished = self.task.finish(self.state, self.ctx)
            summary.update(final)
            summary.update(finished)
            numbers = {f"final_{k}": v for k, v in finished.items() if _number(v)}
            if numbers:
                self.trainer._log({"phase": self.name, "step": done, **numbers})
        summary["diverged"] = diverged
        self._save_model(diverged)
        return summary

    def _save_model(self, diverged: dict[str, Any] | None) -> None:
        """``models/<phase>.pt``: the final model (and estimator state) of the phase.

        Reload with ``torch.load(path, weights_only=False)["model"]``.
        """
        state, ctx = self.state, self.ctx
        if state.model is None:
            return
        folder = self.run.path / "models"
        folder.mkdir(exist_ok=True)
        atomic_save(
            folder / f"{slug(self.name)}.pt",
            {
                "format": MODEL_FORMAT,
                "task": self.task.name,
                "phase": self.name,
                "estimator": ctx.unit.spec,
                "seed": ctx.seed,
                "config": to_dict(ctx.config),
                "diverged": diverged,
                "model": state.model.cpu(),
                "estimator_state": None
                if state.estimator is None
                else state.estimator.state_dict(),
            },
        )


def _plain(value: Any) -> Any:
    """A logged metric as a Python number (tensors are read here, once per log)."""
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
