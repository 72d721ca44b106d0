"""Estimators by name, with their metadata: ``make("rloo:n_samples=4")``, ``info("arsm")``.

Registration. An estimator class becomes available by name with a decorator::

    @register("my_estimator")
    class MyEstimator(Estimator):
        supports = frozenset({"categorical"})
        unbiased = True
        needs_grad_f = False
        has_temperature = False

        def __init__(self, n_samples: int = 4, *, generator=None): ...

The four metadata attributes (see :class:`~discograd.estimators.base.Estimator`)
must be set by the class or one of its family bases — not inherited from
``Estimator``'s defaults — or given to ``register`` as keywords; the default
hyper-parameters are read from ``__init__``'s signature. A *preset* is a named
variant of a registered class, made by a factory function whose signature gives
the preset's own hyper-parameters::

    @register_preset("reinforce_ema", REINFORCE)
    def reinforce_ema(decay: float = 0.9, n_samples: int = 1, *, generator=None):
        return REINFORCE(baseline=EMA(decay), n_samples=n_samples, generator=generator)

Registration happens when the estimator modules are imported;
``discograd.estimators`` imports all of them, in the order names are listed
(exact enumeration first, then score function, relaxed, augment-REINFORCE and
control-variate families). This module imports nothing of the estimator
families itself, so there is no import cycle.

Specs. A spec is ``name`` or ``name:key=value,key=value``; values are parsed as
int, float, bool (``true``/``false``) or kept as strings. Names are snake case
(``st_gumbel_softmax``, ``arsm_plus``, ...); ``-`` and upper case are accepted.
A bad spec is a :class:`~discograd.errors.ConfigError`, which is a ``ValueError``.

Queries: :func:`names` and :func:`infos` list what is registered, filtered by
metadata; :func:`info` returns one :class:`EstimatorInfo`.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from torch import nn

from discograd.errors import ConfigError
from discograd.estimators.base import Estimator, Tempered

__all__ = [
    "ESTIMATORS",
    "EstimatorInfo",
    "canonical",
    "info",
    "infos",
    "make",
    "names",
    "parse_spec",
    "register",
    "register_preset",
    "signature",
    "tempered",
    "unregister",
]

KINDS: frozenset[str] = frozenset({"bernoulli", "categorical"})
#: The metadata a registered class must declare (itself or through a family base).
REQUIRED: tuple[str, ...] = ("supports", "unbiased", "needs_grad_f", "has_temperature")


@dataclass(frozen=True)
class EstimatorInfo:
    """What the registry knows about one name.

    Attributes:
        name: the registered name (snake case), the first part of a spec.
        cls: the estimator class :func:`make` returns an instance of (for a
            preset, the class it is a preset of).
        supports: the variable kinds it accepts (``"bernoulli"``, ``"categorical"``).
        unbiased, needs_grad_f, has_temperature, exact, multi_sample: the class's
            metadata, see :class:`~discograd.estimators.base.Estimator`.
            ``multi_sample``: called as ``est(log_weight, q)`` for the K-sample
            bound instead of ``est(f, q)`` for E_q[f].
        defaults: the hyper-parameters a spec may set, with their defaults, in
            signature order (``{"n_samples": 2}`` for ``rloo``); read from
            ``__init__`` (from the factory for a preset).
        components: constructor arguments that take modules (a REINFORCE
            ``baseline``, a RELAX ``control_variate``): not settable from a spec,
            only through :func:`make`'s keyword arguments.
        preset_of: for a preset, the name of the class it is a preset of; else ``None``.
        summary: the first paragraph of the class's (or the preset factory's)
            docstring, on one line.
        factory: what :func:`make` calls with the hyper-parameters: the class, or
            the preset's factory function.
    """

    name: str
    cls: type[Estimator]
    supports: frozenset[str]
    unbiased: bool
    needs_grad_f: bool
    has_temperature: bool
    exact: bool
    defaults: Mapping[str, Any]
    components: tuple[str, ...]
    preset_of: str | None
    summary: str
    factory: Callable[..., Estimator]
    multi_sample: bool = False


#: name -> its record, in registration order (see the module docstring).
_REGISTRY: dict[str, EstimatorInfo] = {}

#: name -> class name in :mod:`discograd.estimators` (a preset: its class's name).
#: Kept for existing callers; :func:`names` and :func:`info` say more.
ESTIMATORS: dict[str, str] = {}

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_C = TypeVar("_C", bound=type[Estimator])


# ------------------------------------------------------------------ registration
def register(
    name: str,
    *,
    supports: frozenset[str] | set[str] | None = None,
    unbiased: bool | None = None,
    needs_grad_f: bool | None = None,
    has_temperature: bool | None = None,
    exact: bool | None = None,
    multi_sample: bool | None = None,
) -> Callable[[_C], _C]:
    """Class decorator: make an :class:`Estimator` subclass available as ``name``.

    Keyword arguments set the corresponding class attributes (see
    :class:`~discograd.estimators.base.Estimator`); those left out must be set
    by the class or a base below ``Estimator``. The class gets ``cls.name``.
    ``ValueError`` for a malformed or taken name, ``TypeError`` for missing or
    ill-typed metadata.
    """

    def decorate(cls: _C) -> _C:
        if not (isinstance(cls, type) and issubclass(cls, Estimator)):
            raise TypeError(f"@register({name!r}) decorates Estimator subclasses, got {cls!r}")
        _check_name(name, cls)
        given: dict[str, Any] = {
            "supports": None if supports is None else frozenset(supports),
            "unbiased": unbiased,
            "needs_grad_f": needs_grad_f,
            "has_temperature": has_temperature,
            "exact": exact,
            "multi_sample": multi_sample,
        }
        missing = [a for a in REQUIRED if given[a] is None and not _declared(cls, a)]
        if missing:
            raise TypeError(
                f"@register({name!r}): {cls.__name__} must declare {', '.join(missing)} "
                "(in the class, a family base, or as keywords of register)"
            )
        meta = {a: getattr(cls, a) if v is None else v for a, v in given.items()}
        _check_metadata(cls.__name__, meta)
        defaults, components = _parameters(cls.__init__, skip_self=True)
        if meta["has_temperature"] and "tau" not in defaults:
            raise TypeError(
                f"@register({name!r}): {cls.__name__} declares has_temperature but its "
                "__init__ takes no tau"
            )
        # Everything checked: only now is the class changed and the name taken.
        for attr, value in given.items():
            if value is not None:
                setattr(cls, attr, value)
        cls.name = name
        _add(name, cls, cls, defaults, components, None, cls.__doc__)
        return cls

    return decorate


def register_preset(
    name: str, of: type[Estimator]
) -> Callable[[Callable[..., Estimator]], Callable[..., Estimator]]:
    """Decorator: register a factory of a configured ``of`` instance as ``name``.

    ``of`` must be registered; the preset shares its metadata. The factory's
    keyword parameters with defaults are the preset's hyper-parameters (a
    ``generator`` keyword is passed through by :func:`make`). The factory is
    returned unchanged.
    """

    def decorate(factory: Callable[..., Estimator]) -> Callable[..., Estimator]:
        _check_name(name, factory)
        base = next((e for e in _REGISTRY.values() if e.cls is of and e.preset_of is None), None)
        if base is None:
            raise ValueError(f"register_preset({name!r}): {of.__name__} is not registered")
        defaults, components = _parameters(factory, skip_self=False)
        _add(name, of, factory, defaults, components, base.name, factory.__doc__)
        return factory

    return decorate


def unregister(name: str) -> None:
    """Remove ``name`` (a class or a preset); ``KeyError`` if it is not registered.

    For tests and plugins that register temporarily. Presets of a removed class
    stay until removed themselves.
    """
    del _REGISTRY[name]
    del ESTIMATORS[name]


def _check_name(name: str, factory: Callable[..., Any]) -> None:
    """``ValueError`` unless ``name`` is snake case and free (or held by ``factory``'s qualname)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"estimator names are snake case (a-z, 0-9, _; a letter first), got {name!r}"
        )
    old = _REGISTRY.get(name)
    # Re-importing a module (importlib.reload) registers a new class object of
    # the same qualified name: that replaces the entry; anything else is a clash.
    if old is not None and _qualname(old.factory) != _qualname(factory):
        raise ValueError(f"estimator name {name!r} is taken by {_qualname(old.factory)}")


def _add(
    name: str,
    cls: type[Estimator],
    factory: Callable[..., Estimator],
    defaults: dict[str, Any],
    components: tuple[str, ...],
    preset_of: str | None,
    doc: str | None,
) -> None:
    _REGISTRY[name] = _record(name, cls, factory, defaults, components, preset_of, doc)
    ESTIMATORS[name] = cls.__name__


def _record(
    name: str,
    cls: type[Estimator],
    factory: Callable[..., Estimator],
    defaults: dict[str, Any],
    components: tuple[str, ...],
    preset_of: str | None,
    doc: str | None,
) -> EstimatorInfo:
    return EstimatorInfo(
        name=name,
        cls=cls,
        supports=cls.supports,
        unbiased=cls.unbiased,
        needs_grad_f=cls.needs_grad_f,
        has_temperature=cls.has_temperature,
        exact=cls.exact,
        defaults=types.MappingProxyType(defaults),
        components=components,
        preset_of=preset_of,
        summary=_summary(doc),
        factory=factory,
        multi_sample=cls.multi_sample,
    )


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _declared(cls: type, attr: str) -> bool:
    """Whether ``attr`` is set by ``cls`` or a base below :class:`Estimator`."""
    return any(
        attr in vars(k) for k in cls.__mro__ if k is not Estimator and issubclass(k, Estimator)
    )


def _check_metadata(owner: str, meta: Mapping[str, Any]) -> None:
    sup = meta["supports"]
    if not (isinstance(sup, frozenset) and sup and sup <= KINDS):
        raise TypeError(
            f"{owner}.supports must be a non-empty frozenset of {sorted(KINDS)}, got {sup!r}"
        )
    for attr in ("unbiased", "needs_grad_f", "has_temperature", "exact", "multi_sample"):
        if not isinstance(meta[attr], bool):
            raise TypeError(f"{owner}.{attr} must be a bool, got {meta[attr]!r}")


def _summary(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "")
    return text.split("\n\n")[0].replace("\n", " ").strip()


def _parameters(
    fn: Callable[..., Any], *, skip_self: bool
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Hyper-parameters with their defaults, and module-valued arguments, of ``fn``.

    ``generator`` is neither. A parameter whose annotation admits only
    ``nn.Module`` subclasses (and ``None``) is a component; every other
    parameter with a default is a hyper-parameter. Parameters without a default
    are refused: a registered estimator must be constructible from its name alone.
    """
    params = list(inspect.signature(fn).parameters.values())
    if skip_self:
        params = params[1:]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not evaluate: treat all as hyper-parameters
        hints = {}
    defaults: dict[str, Any] = {}
    components: list[str] = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "generator":
            continue
        if p.default is p.empty:
            raise TypeError(
                f"{_qualname(fn)}: parameter {p.name!r} has no default; a registered "
                "estimator must be constructible from its name alone"
            )
        if _is_module_type(hints.get(p.name)):
            components.append(p.name)
        else:
            defaults[p.name] = p.default
    return defaults, tuple(components)


def _is_module_type(hint: Any) -> bool:
    if hint is None:
        return False
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else (hint,)
    classes = [a for a in args if a is not type(None)]
    return bool(classes) and all(isinstance(a, type) and issubclass(a, nn.Module) for a in classes)


# ----------------------------------------------------------------------- queries
def _entry(name: str) -> EstimatorInfo | None:
    """The record of ``name``; ``None`` if unknown.

    Compatibility: a name put straight into :data:`ESTIMATORS` (name -> the name
    of a class exported by :mod:`discograd.estimators`), the way to add one
    before ``register`` existed, is resolved here on each call (not cached, so
    that removing the entry removes it), with the class's metadata.
    """
    entry = _REGISTRY.get(name)
    if entry is not None or name not in ESTIMATORS:
        return entry
    import discograd.estimators as package  # loaded by now: this runs at call time

    cls = getattr(package, ESTIMATORS[name], None)
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        return None
    defaults, components = _parameters(cls.__init__, skip_self=True)
    return _record(name, cls, cls, defaults, components, None, cls.__doc__)


def info(spec: str) -> EstimatorInfo:
    """The record of a name; a spec's hyper-parameters are ignored (``info("rloo:n_samples=4")``).

    ``ConfigError`` (a ``ValueError``) for an unknown name or a malformed spec.
    """
    name, _ = parse_spec(spec)
    entry = _entry(name)
    if entry is None:
        raise ConfigError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return entry


def infos(
    kind: str | None = None,
    *,
    unbiased: bool | None = None,
    needs_grad_f: bool | None = None,
    has_temperature: bool | None = None,
    exact: bool | None = None,
    presets: bool = True,
    multi_sample: bool | None = None,
) -> list[EstimatorInfo]:
    """Registered records, in registration order, filtered by metadata.

    Args:
        kind: only those supporting ``"bernoulli"`` (or ``"categorical"``) variables.
        unbiased, needs_grad_f, has_temperature, exact: only those with this
            value (``None``: any). ``exact=False`` leaves out the ground truth.
        presets: include presets (``reinforce_ema``); ``False``: one per class.
        multi_sample: ``False``: only estimators of E_q[f]
            (called as ``est(f, q)``), what code that runs every estimator on a
            cost wants; ``True``: only the multi-sample-bound ones (called as
            ``est(log_weight, q)``); ``None``: both.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)} or None, got {kind!r}")
    wanted = {
        "unbiased": unbiased,
        "needs_grad_f": needs_grad_f,
        "has_temperature": has_temperature,
        "exact": exact,
        "multi_sample": multi_sample,
    }
    return [
        e
        for e in map(_entry, ESTIMATORS)
        if e is not None
        if (kind is None or kind in e.supports)
        and (presets or e.preset_of is None)
        and all(v is None or getattr(e, k) == v for k, v in wanted.items())
    ]


def names(
    kind: str | None = None,
    *,
    unbiased: bool | None = None,
    needs_grad_f: bool | None = None,
    has_temperature: bool | None = None,
    exact: bool | None = None,
    presets: bool = True,
    multi_sample: bool | None = None,
) -> list[str]:
    """Registered names, in registration order, filtered as in :func:`infos`.

    ``names()`` is every name; ``names("categorical", unbiased=True, exact=False)``
    the sampling estimators unbiased for categorical variables;
    ``names(multi_sample=False)`` those called as ``est(f, q)`` (not the
    multi-sample-bound ones).
    """
    found = infos(
        kind,
        unbiased=unbiased,
        needs_grad_f=needs_grad_f,
        has_temperature=has_temperature,
        exact=exact,
        presets=presets,
        multi_sample=multi_sample,
    )
    return [e.name for e in found]


def signature(name: str) -> str:
    """The constructor call with every default: ``"RLOO(n_samples=2)"``.

    Components show their default too (``baseline=None``); a preset shows its
    factory's parameters under the preset's name (``"reinforce_ema(decay=0.9, ...)"``).
    """
    entry = info(name)
    args = [f"{k}={_literal(v)}" for k, v in entry.defaults.items()]
    sig = inspect.signature(entry.factory)
    args += [f"{c}={_literal(sig.parameters[c].default)}" for c in entry.components]
    order = list(sig.parameters)
    args.sort(key=lambda a: order.index(a.split("=")[0]))
    head = entry.cls.__name__ if entry.preset_of is None else entry.name
    return f"{head}({', '.join(args)})"


def tempered(est: Estimator) -> Tempered | None:
    """``est`` itself, typed as :class:`~discograd.estimators.base.Tempered`, when its
    class has ``has_temperature``; ``None`` otherwise (REBAR and RELAX included).

    For code that anneals or logs the temperature::

        t = tempered(est)
        if t is not None:
            t.schedule = ExponentialDecay(tau0=t.schedule(0), rate=1e-4, floor=0.5)
            print(t.tau)
    """
    return cast(Tempered, est) if type(est).has_temperature else None


def _literal(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


# -------------------------------------------------------------------------- specs
def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for convert in (int, float):
        try:
            return convert(text)
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


def make(spec: str, /, **overrides: Any) -> Estimator:
    """Build an estimator from its spec; ``ConfigError`` naming unknown names or bad arguments.

    ``overrides`` are Python values that take precedence over the spec's: any
    hyper-parameter (a schedule for ``tau``, say), a component (``baseline=``,
    ``control_variate=``) or ``generator=``. A spec itself sets hyper-parameters only.
    """
    name, kwargs = parse_spec(spec)
    entry = info(name)
    for key in kwargs:
        if key in entry.defaults:
            continue
        if key in entry.components:
            raise ConfigError(
                f"{key!r} of {name} takes a module, not a value in a spec; "
                f"pass it in Python: make({name!r}, {key}=...)"
            )
        takes = ", ".join(entry.defaults) or "no hyper-parameters"
        raise ConfigError(f"unknown hyper-parameter {key!r} for {name}; it takes: {takes}")
    allowed = [*entry.defaults, *entry.components, "generator"]
    unknown = [k for k in overrides if k not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown argument {unknown[0]!r} for {name}; it takes: {', '.join(allowed)}"
        )
    kwargs.update(overrides)
    try:
        return entry.factory(**kwargs)
    except ConfigError:
        raise
    except TypeError as err:  # e.g. a string where a number was needed
        raise ConfigError(f"bad hyper-parameters for {name}: {err}") from err
    except ValueError as err:  # the constructors' contract: a bad hyper-parameter
        raise ConfigError(str(err)) from err


def __getattr__(attr: str) -> types.ModuleType:
    # Compatibility: experiments.variance reads ``registry._est`` (the estimators
    # package). Imported lazily: at import time this module is itself being
    # imported by that package. Use info(name).cls instead; remove with that caller.
    if attr == "_est":
        import discograd.estimators

        return discograd.estimators
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
