"""Experiments: each a function plus a config dataclass, writing into a :class:`RunDir`."""

from discograd.experiments.runner import RunDir, progress

__all__ = ["RunDir", "progress"]
