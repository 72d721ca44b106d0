"""Estimators by name: ``make("rloo:n_samples=4")`` for command lines and configs.

A spec is ``name`` or ``name:key=value,key=value``; values are parsed as int,
float, bool (``true``/``false``) or kept as strings. Names are the snake-case
class names (``st_gumbel_softmax``, ``arsm_plus``, ...); ``reinforce_ema`` is
REINFORCE with an :class:`~discograd.baselines.EMA` baseline (``decay=``).
A bad spec is a :class:`~discograd.errors.ConfigError`, which is a ``ValueError``.
"""

from __future__ import annotations

import inspect
from typing import Any

from discograd import estimators as _est
from discograd.errors import ConfigError
from discograd.estimators.base import Estimator

__all__ = ["ESTIMATORS", "canonical", "make", "parse_spec"]

#: name -> class name in :mod:`discograd.estimators`
ESTIMATORS: dict[str, str] = {
    "exact": "Exact",
    "reinforce": "REINFORCE",
    "reinforce_ema": "REINFORCE",
    "rloo": "RLOO",
    "vargrad": "VarGrad",
    "gumbel_softmax": "GumbelSoftmax",
    "st_gumbel_softmax": "STGumbelSoftmax",
    "straight_through": "StraightThrough",
    "gumbel_rao": "GumbelRao",
    "reinmax": "ReinMax",
    "ar": "AR",
    "ars": "ARS",
    "arsm": "ARSM",
    "ars_plus": "ARSPlus",
    "arsm_plus": "ARSMPlus",
    "arm": "ARM",
    "disarm": "DisARM",
    "rebar": "REBAR",
    "relax": "RELAX",
}


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"rloo:n_samples=4"`` -> ``("rloo", {"n_samples": 4})``; ``ConfigError`` if malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"an estimator spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower().replace("-", "_")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(
                f"bad hyper-parameter {item!r} in estimator spec {spec!r}: use key=value"
            )
        kwargs[key.strip()] = _value(val.strip())
    return name, kwargs


def canonical(spec: str) -> str:
    """A normalised spelling of ``spec`` (used as a label and a resume key)."""
    name, kwargs = parse_spec(spec)
    return name + (":" + ",".join(f"{k}={v}" for k, v in sorted(kwargs.items())) if kwargs else "")


def make(spec: str) -> Estimator:
    """Build an estimator from its spec; ``ConfigError`` naming unknown names or bad arguments."""
    name, kwargs = parse_spec(spec)
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    cls = getattr(_est, ESTIMATORS[name], None)
    if cls is None:  # pragma: no cover - only while a family is missing
        raise ConfigError(f"estimator {name!r} is not available in this build")
    if name == "reinforce_ema":
        from discograd.baselines import EMA

        decay = kwargs.pop("decay", 0.9)
        kwargs["baseline"] = EMA(decay)
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p not in ("self", "generator", "baseline")]
    unknown = [k for k in kwargs if k not in params or k == "self"]
    if unknown:
        takes = ", ".join(allowed) or "no hyper-parameters"
        raise ConfigError(f"unknown hyper-parameter {unknown[0]!r} for {name}; it takes: {takes}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as err:  # e.g. a string where a number was needed
        raise ConfigError(f"bad hyper-parameters for {name}: {err}") from err
    except ValueError as err:  # the constructors' contract: a bad hyper-parameter
        raise ConfigError(str(err)) from err
