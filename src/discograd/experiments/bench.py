"""``discograd bench``: the toy, the variance study and a small VAE, as one config.

The studies' settings are their tasks' configs, nested (``--set vae.steps=100``,
or a ``[vae]`` table in a config file). The bench's own choices are presets:
:data:`BENCH` over the tasks' defaults, then :data:`QUICK` with ``--quick``,
then the user's config file, flags and ``--set``. ``seeds`` and ``device`` are
the bench's, for every study.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from discograd.errors import ConfigError
from discograd.experiments.config import RunConfig, option
from discograd.experiments.toy import ToyConfig, ToyTask
from discograd.experiments.trainer import Task
from discograd.experiments.vae import VAEConfig, VAETask
from discograd.experiments.variance import VarianceConfig, VarianceTask

__all__ = ["BENCH", "QUICK", "STUDIES", "BenchConfig"]

STUDIES: tuple[str, ...] = ("toy", "variance", "vae")

#: the bench's settings over the tasks' defaults: a shorter toy and a small VAE
BENCH: dict[str, Any] = {
    "toy": {"steps": 3000},
    "vae": {
        "n_latent": 8,
        "n_categories": 4,
        "hidden": [128, 64],
        "batch_size": 100,
        "lr": 1e-3,
        "iw_examples": 300,
        # 784-pixel images (the embedded Fashion-MNIST subset): about 2 minutes of
        # VAE training for the six default estimators on one CPU thread.
        "steps": 1200,
    },
}

#: ``--quick``: fewer steps, draws and temperatures
QUICK: dict[str, Any] = {
    "toy": {"steps": 500, "var_draws": 50},
    "variance": {"temperatures": [0.5, 1.0], "draws": 200, "warmup": 50},
    "vae": {"steps": 300, "eval_every": 100, "log_every": 25, "eval_samples": 100},
}


@dataclass
class BenchConfig(RunConfig):
    """The main job: which studies, how big, and each study's settings."""

    quick: bool = option(False, "smaller settings: fewer steps, draws and temperatures")
    skip: tuple[str, ...] = option((), "studies to leave out", choices=STUDIES, volatile=True)
    # option(factory=...) is a dataclasses.field (ruff cannot tell: RUF009).
    toy: ToyConfig = option(factory=ToyConfig, help="the toy study (--set toy.steps=...)")  # noqa: RUF009
    variance: VarianceConfig = option(factory=VarianceConfig, help="the variance study")  # noqa: RUF009
    vae: VAEConfig = option(factory=VAEConfig, help="the VAE study (--set vae.steps=...)")  # noqa: RUF009

    def __post_init__(self) -> None:
        # One seed list and one device for the whole bench.
        for name in STUDIES:
            sub = getattr(self, name)
            if (sub.seeds, sub.device) != (self.seeds, self.device):
                setattr(self, name, dataclasses.replace(sub, seeds=self.seeds, device=self.device))

    @classmethod
    def presets(cls, overrides: dict[str, Any]) -> list[dict[str, Any]]:
        quick = overrides.get("quick", False)
        if isinstance(quick, str):
            quick = quick.lower() in ("true", "yes", "1")
        return [BENCH, QUICK] if quick else [BENCH]

    def validate(self) -> None:
        super().validate()
        if not self.studies():
            raise ConfigError(
                f"skip leaves no study to run (skip={' '.join(self.skip)}); skip fewer"
            )
        for _, _, config in self.studies():
            config.validate()

    def studies(self) -> list[tuple[str, Task[Any, Any], Any]]:
        """``(name, task, config)`` of each study to run, in order."""
        tasks: dict[str, Task[Any, Any]] = {
            "toy": ToyTask(),
            "variance": VarianceTask(),
            "vae": VAETask(),
        }
        return [(n, tasks[n], getattr(self, n)) for n in STUDIES if n not in self.skip]
