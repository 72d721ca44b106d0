"""Pieces the experiments share: devices, estimator checks and capabilities, file names.

Bad settings raise :class:`~discograd.errors.ConfigError` (a ``ValueError``):
the command line reports those in one line and lets every other exception,
a bug, keep its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from discograd.errors import ConfigError
from discograd.estimators import registry
from discograd.estimators.base import Estimator

__all__ = [
    "ChainedOptimizer",
    "check_estimators",
    "cv_optimizer",
    "has_temperature",
    "is_k_hot",
    "is_multi_sample",
    "is_unbiased",
    "lazily_sized",
    "resolve_device",
    "slug",
    "supports",
    "takes_temperature",
    "temperature",
]


def resolve_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``; ``ConfigError`` if unavailable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    return dev


def cv_optimizer(
    estimator: Estimator, lr: float, f: Any = None, q: Any = None
) -> torch.optim.Optimizer | None:
    """Adam over the estimator's trainable control-variate parameters, if it has any.

    Lazily sized layers (RELAX's default network) get their shapes from one
    throw-away call on ``(f, q)`` first, made in eval mode (so it moves no
    schedule or baseline) with its own generator (so it moves no random
    stream) and with autograd on (RELAX skips its control variate without it).
    """
    if f is not None and q is not None and lazily_sized(estimator):
        was_training = estimator.training
        estimator.eval()
        device = next(iter(estimator.parameters())).device
        estimator(f, q, generator=torch.Generator(device=device).manual_seed(0))
        estimator.train(was_training)
    params = [p for p in estimator.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr) if params else None


class ChainedOptimizer(torch.optim.Optimizer):
    """Several optimisers over disjoint parameters, used as one (the Trainer holds one).

    For models whose parts train differently: the DisARM code trains the encoder
    and decoder with Adam and the prior's logits with plain SGD. ``zero_grad``,
    ``step`` and the state dict go to every part, in order.
    """

    def __init__(self, *parts: torch.optim.Optimizer) -> None:
        if not parts:
            raise ValueError("ChainedOptimizer needs at least one optimiser")
        self.parts = parts
        params = [p for o in parts for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        # The parts' own groups (their learning rates), for schedulers and inspection.
        self.param_groups = [g for o in parts for g in o.param_groups]

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for o in self.parts:
            o.step()

    # torch wraps an optimiser class's step in profiling hooks unless it says it is hooked;
    # the parts' steps are wrapped already, a second layer only costs time every step.
    step.hooked = True  # type: ignore[attr-defined]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        parts = state_dict["parts"]
        if len(parts) != len(self.parts):
            raise ValueError(f"state of {len(parts)} optimisers for {len(self.parts)}")
        for o, saved in zip(self.parts, parts, strict=True):
            o.load_state_dict(saved)


def lazily_sized(module: nn.Module) -> bool:
    """Whether ``module`` has parameters whose shape is set by their first call (RELAX)."""
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters())


# ------------------------------------------------------- estimator capabilities
# Every question the experiments ask an estimator about what it is, one function each:
# when the estimator classes declare them (registry metadata), only these change.
def every_estimator(
    kind: str | None, overrides: Mapping[str, str] = {}, *, multi_sample: bool = False
) -> tuple[str, ...]:
    """The specs of every registered estimator (supporting ``kind``), in registry order,
    with a study's hyper-parameters ``{name: "key=value,..."}`` where they differ.

    ``multi_sample=False`` (the default): the estimators of E_q[f], called as
    ``est(f, q)``; ``True``: the multi-sample-bound ones, called as
    ``est(log_weight, q)``. The two never mix: one objective per study.
    """
    found = registry.names(kind, multi_sample=multi_sample)
    return tuple(f"{name}:{overrides[name]}" if name in overrides else name for name in found)


def has_temperature(est: Any) -> bool:
    """A relaxed estimator whose temperature follows a schedule (annealable)."""
    return registry.tempered(est) is not None


def temperature(est: Any) -> float | None:
    """The temperature ``est``'s next call uses, or ``None`` (REBAR/RELAX learn theirs)."""
    t = registry.tempered(est) if est is not None else None
    return None if t is None else float(t.tau)


def supports(est: Any, kind: str) -> bool:
    """Whether ``est`` handles ``kind`` variables: ``"bernoulli"``, ``"categorical"``, or
    ``"k_hot"`` (k-subsets of the categories, :class:`~discograd.distributions.KSubset`:
    only the estimators with a subset size ``k``, :func:`is_k_hot`)."""
    if kind == "k_hot":
        return is_k_hot(est)
    return kind in type(est).supports


def is_k_hot(est: Any) -> bool:
    """Whether ``est`` (an instance or class) samples k-subsets of size ``est.k`` (SIMPLE,
    I-MLE: the class attribute ``k_hot``). Every other categorical estimator draws one
    category per variable, so on a k-hot problem it would estimate the gradient of
    another law."""
    cls = est if isinstance(est, type) else type(est)
    return bool(getattr(cls, "k_hot", False))


def support_limit(est: Any) -> int | None:
    """The most configurations per data point ``est`` enumerates (``Exact``), or ``None``.

    ``ExactMultiSample`` sums over K-tuples: its budget is on ``N**K``, so the
    limit on ``N`` is the largest ``N`` with ``N**K <= max_support``.
    """
    if not type(est).exact:
        return None
    if not type(est).multi_sample:
        return int(est.max_support)
    k = int(est.n_samples)
    n = round(est.max_support ** (1 / k))
    while n**k > est.max_support:
        n -= 1
    while (n + 1) ** k <= est.max_support:
        n += 1
    return n


def is_unbiased(est: Any) -> bool:
    return bool(type(est).unbiased)


def is_multi_sample(est: Any) -> bool:
    """Whether ``est`` estimates a K-sample bound, called as ``est(log_weight, q)``."""
    return bool(type(est).multi_sample)


def takes_temperature(name: str) -> bool:
    """Whether registry name ``name`` has a temperature hyper-parameter ``tau`` (the
    scheduled relaxations, and REBAR/RELAX's initial learned temperature)."""
    return "tau" in registry.info(name).defaults


# ------------------------------------------------------------ config checks
def check_estimators(
    specs: Sequence[str],
    kind: str | None = None,
    field: str = "estimators",
    support: int | None = None,
    multi_sample: bool | None = False,
) -> list[Estimator]:
    """Build each spec (``ConfigError`` for unknown ones); none repeated; all support ``kind``.

    ``multi_sample``: ``False`` (a study of E_q[f]) refuses the multi-sample-bound
    estimators, whose first argument is a log weight rather than a cost;
    ``True`` refuses the others; ``None`` accepts both.

    ``support``: configurations per data point, for estimators that enumerate
    them (``Exact``): more than their ``max_support`` is refused here rather
    than at the first training step.
    """
    from discograd.estimators.registry import canonical, make

    if not specs:
        raise ConfigError(f"{field} must name at least one estimator")
    if len({canonical(s) for s in specs}) != len(specs):
        raise ConfigError(f"{field} must not repeat an estimator, got {tuple(specs)}")
    built = []
    for spec in specs:
        est = make(spec)
        if kind is not None and not supports(est, kind):
            raise ConfigError(f"{field}: {spec} does not support {kind} variables")
        if multi_sample is not None and is_multi_sample(est) != multi_sample:
            which = "a multi-sample-bound estimator" if is_multi_sample(est) else "not one"
            want = (
                "multi-sample-bound estimators (est(log_weight, q))"
                if multi_sample
                else ("estimators of E_q[f] (est(f, q))")
            )
            raise ConfigError(f"{field}: {spec} is {which}; this study takes {want}")
        limit = support_limit(est)
        if support is not None and limit is not None and support > limit:
            raise ConfigError(
                f"{field}: {spec} would enumerate {support} configurations per data point "
                f"(at most {limit}); use a sampling estimator or a smaller problem"
            )
        built.append(est)
    return built


def slug(text: str) -> str:
    """``text`` with every character but letters, digits, ``-``, ``_``, ``.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
