"""Experiments: one :class:`Trainer` runs every :class:`Task` (toy, variance, vae, sbn, ssl, gates)
in a :class:`RunDir`; configs are dataclasses (:mod:`discograd.experiments.config`)."""

from discograd.experiments.runner import RunDir, progress
from discograd.experiments.trainer import (
    Context,
    StepResult,
    Task,
    TaskState,
    Trainer,
    Unit,
    aggregate,
    open_run,
)

__all__ = [
    "Context",
    "RunDir",
    "StepResult",
    "Task",
    "TaskState",
    "Trainer",
    "Unit",
    "aggregate",
    "open_run",
    "progress",
]
