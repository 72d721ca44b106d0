"""Configs as dataclasses: one declaration gives the flags, their defaults and help, and checks.

Each experiment's settings are a dataclass whose fields are declared with
:func:`option`: the default is written there and nowhere else, with a help
text and, where they apply, the allowed ``choices`` and a ``minimum``. From
that declaration this module derives

* the command-line flags (:func:`add_flags`: ``--batch-size`` for
  ``batch_size``, types from the annotations, help ending in the default),
* reading a config file (:func:`read_file`: JSON, TOML, YAML; the
  ``config.json`` a run writes is accepted back as it is),
* ``--set key=value`` overrides (:func:`parse_sets`; dotted keys reach nested
  configs: ``--set vae.steps=100``),
* building the config from those layers (:func:`build`): dataclass defaults <
  presets < config file < flags < ``--set``, each value converted to the
  field's type, and
* checking every value against its declaration (:func:`check_fields`).

Every problem is a :class:`~discograd.errors.ConfigError` naming the setting.

Why not a library (``tyro``, ``jsonargparse``)? The package depends on torch
and tqdm only; these ~300 lines do what the experiments need (flat configs with
one level of nesting for ``bench``, one-line errors, ``config.json`` round
trips) without a dependency whose behaviour (flag spelling, union handling)
would then be part of discograd's command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from discograd.data import DATASET_NAMES, DEFAULT_DATASET
from discograd.errors import ConfigError

__all__ = [
    "AnnealConfig",
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "add_flags",
    "build",
    "check_fields",
    "config_fields",
    "option",
    "parse_sets",
    "read_file",
    "to_dict",
    "volatile_keys",
]

_NO_DEFAULT = object()


def option(
    default: Any = _NO_DEFAULT,
    help: str | None = None,
    *,
    factory: Callable[[], Any] | None = None,
    choices: Iterable[Any] | None = None,
    minimum: float | None = None,
    positive: bool = False,
    flag: str | None = None,
    metavar: str | None = None,
    volatile: bool = False,
    count: bool = False,
) -> Any:
    """A config field: its default (the only place it is written) and how to present it.

    Args:
        default: the value (immutable: tuples, not lists).
        help: the flag's help; ``None`` inherits the help of the same field in
            a base class (a subclass that only changes a default).
        factory: instead of ``default``, for nested configs.
        choices: the allowed values (of each element, for tuples).
        minimum: the smallest allowed number (of each element, for tuples).
        positive: numbers must be > 0 (and finite).
        flag: the flag's spelling when not ``--`` + the name with ``-`` for ``_``;
            ``""`` for no flag (set it through a file or ``--set``).
        metavar: shown in ``--help`` for the value.
        volatile: may change between a run and its resumption (the device).
        count: a tuple of ints where one number ``N`` means ``0 .. N-1`` (seeds).
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "positive": positive or None,
        "flag": flag,
        "metavar": metavar,
        "volatile": volatile or None,
        "count": count or None,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable: use a tuple")
    return dataclasses.field(default=default, metadata=meta)


# ------------------------------------------------------------------ fields
@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a config class, with its metadata resolved through the base classes."""

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    minimum: float | None
    positive: bool
    flag: str | None
    metavar: str | None
    volatile: bool
    count: bool

    @property
    def nested(self) -> bool:
        return dataclasses.is_dataclass(self.type)


def _meta(cls: type, name: str, key: str) -> Any:
    """The first non-None metadata ``key`` of field ``name``, most derived class first."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get(key) is not None:
            return f.metadata[key]
    return None


def config_fields(cls: type) -> list[Field]:
    """The fields of config class ``cls`` in declaration order (base classes first)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # pragma: no cover - every config field has a default
            raise TypeError(f"{cls.__name__}.{f.name} has no default")
        help_text = _meta(cls, f.name, "help")
        if not help_text:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text")
        out.append(
            Field(
                name=f.name,
                type=hints[f.name],
                default=default,
                help=help_text,
                choices=_meta(cls, f.name, "choices"),
                minimum=_meta(cls, f.name, "minimum"),
                positive=bool(_meta(cls, f.name, "positive")),
                flag=_meta(cls, f.name, "flag"),
                metavar=_meta(cls, f.name, "metavar"),
                volatile=bool(_meta(cls, f.name, "volatile")),
                count=bool(_meta(cls, f.name, "count")),
            )
        )
    return out


def volatile_keys(cls: type) -> set[str]:
    """Names of the fields (at any depth) that may change when a run resumes."""
    out = set()
    for f in config_fields(cls):
        if f.volatile:
            out.add(f.name)
        if f.nested:
            out |= volatile_keys(f.type)
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """The config as JSON-ready data (tuples become lists): what ``config.json`` holds."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


# ----------------------------------------------------------------- types
def _optional(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _element(tp: Any) -> Any | None:
    """``X`` for ``tuple[X, ...]``, else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _describe(tp: Any) -> str:
    if (inner := _optional(tp)) is not None:
        return f"{_describe(inner)} or none"
    if (elem := _element(tp)) is not None:
        plural = {int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(elem, getattr(elem, '__name__', str(elem)))}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(tp: Any, value: Any, name: str) -> Any:
    """``value`` (typed, or a string from a flag or ``--set``) as type ``tp``."""

    def bad() -> ConfigError:
        return ConfigError(f"{name} must be {_describe(tp)}, got {name}={value!r}")

    if (inner := _optional(tp)) is not None:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _convert(inner, value, name)
    if (elem := _element(tp)) is not None:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise bad() from None
            else:
                value = [v.strip() for v in text.split(",")] if text else []
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_convert(elem, v, name) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    return value  # pragma: no cover - no other field types are declared


# ------------------------------------------------------------------ build
def _normalise_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """``batch-size`` and ``batch_size`` alike (files may use either spelling)."""
    return {
        str(k).replace("-", "_"): _normalise_keys(v) if isinstance(v, Mapping) else v
        for k, v in values.items()
    }


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in layer.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _construct(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in config_fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"unknown setting {prefix + unknown[0]!r}; known: " + ", ".join(fields))
    kwargs = {}
    for name, value in values.items():
        f = fields[name]
        if f.nested:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{name} must be a table of settings, got {value!r}")
            kwargs[name] = _construct(f.type, value, f"{prefix}{name}.")
        elif f.count and _is_count(value):
            # One number N: the first N (seeds 0 .. N-1); a list names them.
            kwargs[name] = tuple(range(int(value)))
        else:
            kwargs[name] = _convert(f.type, value, prefix + name)
    return cls(**kwargs)


def _is_count(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().isdigit()
    return isinstance(value, int) and not isinstance(value, bool)


def build(cls: type, *layers: Mapping[str, Any]) -> Any:
    """An instance of ``cls`` from its defaults overridden by ``layers`` in order.

    A class may define ``presets(cls, overrides) -> list[dict]``: layers applied
    between the defaults and ``layers`` (``bench --quick``); ``overrides`` is
    the merge of ``layers``, for the preset to look at (``quick``).
    """
    user: dict[str, Any] = {}
    for layer in layers:
        user = _merge(user, _normalise_keys(layer))
    values = to_dict(cls())
    presets = getattr(cls, "presets", None)
    for preset in presets(user) if presets is not None else ():
        values = _merge(values, preset)
    return _construct(cls, _merge(values, user), "")


def check_fields(config: Any, prefix: str = "") -> None:
    """Every value has its field's type, and is among its choices and above its minimum.

    The messages are those of the command line: ``steps must be a positive
    integer, got steps=0``.
    """
    for f in config_fields(type(config)):
        value = getattr(config, f.name)
        name = prefix + f.name
        if f.nested:
            check_fields(value, f"{name}.")
            continue
        if value is None and _optional(f.type) is not None:
            continue
        tp = _optional(f.type) or f.type
        elem = _element(tp)
        items = value if elem is not None and isinstance(value, tuple) else (value,)
        scalar = elem or tp
        ok = (elem is None or isinstance(value, tuple)) and all(
            _is(scalar, v) and _in_range(f, v) for v in items
        )
        if not ok:
            raise ConfigError(f"{name} must be {_expected(f, scalar, elem)}, got {name}={value!r}")
        if f.choices is not None:
            for v in items:
                if v not in f.choices:
                    raise ConfigError(
                        f"{name} must be one of {', '.join(map(str, f.choices))}, "
                        f"got {name}={value!r}"
                    )


def _is(tp: Any, v: Any) -> bool:
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, tp)


def _in_range(f: Field, v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return True
    if f.positive and not v > 0:
        return False
    return f.minimum is None or v >= f.minimum


def _expected(f: Field, scalar: Any, elem: Any) -> str:
    """What a value must be, worded as the experiments always have ("a positive integer")."""
    low = 1 if f.positive and scalar is int else f.minimum
    if scalar is int:
        one, many = (
            ("a positive integer", "positive integers")
            if low == 1
            else (f"an integer >= {low:g}", f"integers >= {low:g}")
            if low is not None
            else ("an integer", "integers")
        )
    elif scalar is float:
        one, many = (
            ("positive", "positive numbers")
            if f.positive
            else (f"a finite number >= {low:g}", f"finite numbers >= {low:g}")
            if low is not None
            else ("a finite number", "finite numbers")
        )
    else:
        return _describe(tuple[elem, ...] if elem is not None else scalar)
    return many if elem is not None else one


# ------------------------------------------------------------ files, --set
def read_file(path: str | Path) -> dict[str, Any]:
    """The settings in a ``.json``, ``.toml`` or ``.yaml`` / ``.yml`` file.

    TOML needs Python 3.11 (``tomllib``) or the ``tomli`` package, YAML the
    ``PyYAML`` package; without them the error names what to install.
    """
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    try:
        text = file.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {file}: {err.strerror or err}") from err
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = _toml().loads(text)
        elif suffix in (".yaml", ".yml"):
            data = _yaml().safe_load(text)
        else:
            raise ConfigError(
                f"config file {file}: unknown type {suffix or '(none)'}; use .json, .toml or .yaml"
            )
    except ConfigError:
        raise
    except Exception as err:  # each parser has its own error class
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"config file {file} is not valid {suffix[1:].upper()}: {first}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a table of settings")
    return data


# Optional parsers, imported by name: neither is a dependency of discograd.
def _toml() -> Any:
    name = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError(
            "reading TOML needs Python 3.11 or the tomli package (pip install tomli)"
        ) from None


def _yaml() -> Any:
    try:
        return importlib.import_module("yaml")
    except ImportError:
        raise ConfigError("reading YAML needs the PyYAML package (pip install pyyaml)") from None


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["steps=300", "vae.lr=1e-3"]`` -> ``{"steps": "300", "vae": {"lr": "1e-3"}}``.

    Values stay strings: :func:`build` converts them to each field's type
    (lists as ``128,64`` or ``[128, 64]``).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: use key=value, e.g. --set steps=300")
        *path, last = key.strip().split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a table of settings")
        node[last] = value
    return out


# ------------------------------------------------------------------ flags
def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "none"
    if value is None:
        return "none"
    return str(value)


def add_flags(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    prefix: str = "",
    only: Iterable[str] | None = None,
    defaults: Any = None,
) -> list[str]:
    """One flag per (non-nested) field of ``cls``; returns their ``dest`` names.

    Flags are stored only when given (``argparse.SUPPRESS`` defaults), so that
    a config file is not overridden by defaults; their help ends in the
    field's default (taken from ``defaults``, a config, when given).
    ``prefix`` (``"vae."``) makes the flags set a nested config's fields;
    ``only`` limits them to some fields.
    """
    names = []
    keep = set(only) if only is not None else None
    for f in config_fields(cls):
        if f.nested or f.flag == "" or (keep is not None and f.name not in keep):
            continue
        flag = f.flag or "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name) if defaults is not None else f.default
        help_text = f"{f.help} (default: {_shown(default)})".replace("%", "%%")
        dest = prefix + f.name
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
        tp = _optional(f.type) or f.type
        elem = _element(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.count:
            kwargs.update(nargs="+", type=int, action=_CountAction, metavar=f.metavar or "N")
        elif elem is not None:
            kwargs["nargs"] = "*"
            kwargs["type"] = _parser(elem, f)
            kwargs["metavar"] = f.metavar or elem.__name__.upper()
        else:
            kwargs["type"] = _parser(tp, f)
            kwargs["metavar"] = f.metavar or {int: "N", float: "X"}.get(tp, "TEXT")
        if f.choices is not None:
            kwargs["choices"] = f.choices
            if f.metavar is None:
                kwargs.pop("metavar", None)
        parser.add_argument(flag, **kwargs)
        names.append(dest)
    return names


def _parser(tp: Any, f: Field) -> Callable[[str], Any]:
    if _optional(f.type) is None:
        return tp

    def optional(text: str) -> Any:
        return None if text.lower() in ("none", "null") else tp(text)

    optional.__name__ = tp.__name__  # argparse names the type in its errors
    return optional


class _CountAction(argparse.Action):
    """``--seeds 5``: one number is a count (kept an int for :func:`build`); more name them."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


# ------------------------------------------------ the fields experiments share
# Declared once here; a Task's Config inherits them and may change a default by
# declaring the field again with only its new default (the help is inherited).
@dataclasses.dataclass
class RunConfig:
    """What every experiment has: its seeds and its device."""

    # Volatile: each seed's phases depend on nothing but the seed and the other settings,
    # so a run may be resumed with more (or fewer) seeds; phases already run are kept.
    seeds: tuple[int, ...] = option(
        (0,),
        "random seeds: every estimator runs once per seed and the results are the mean ± "
        "standard error over seeds; one number N means seeds 0 .. N-1 (--seed K: seed K alone)",
        minimum=0,
        count=True,
        volatile=True,
    )
    device: str = option("cpu", "cpu, cuda, cuda:N or auto", metavar="DEVICE", volatile=True)

    def validate(self) -> None:
        """Every field against its declaration (types, choices, ranges); then the task's rules."""
        check_fields(self)
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must not repeat a seed, got seeds={self.seeds!r}")


@dataclasses.dataclass
class TrainConfig(RunConfig):
    """What every experiment that trains has: steps, learning rates, cadences."""

    steps: int = option(2000, "training steps per estimator and seed", minimum=1)
    lr: float = option(1e-3, "learning rate (Adam)", positive=True)
    cv_lr: float = option(
        1e-3,
        "learning rate of the estimators' control variates (baselines, REBAR, RELAX)",
        positive=True,
    )
    log_every: int = option(50, "log the training averages every N steps", minimum=1)
    eval_every: int = option(500, "evaluate on the validation set every N steps", minimum=1)
    checkpoint_every: int = option(500, "save a checkpoint every N steps", minimum=1)


@dataclasses.dataclass
class DataConfig:
    """Image data: which dataset, where it is cached, how it is binarised."""

    dataset: str = option(
        DEFAULT_DATASET,
        f"{', '.join(DATASET_NAMES)} or a folder of IDX files (default: the embedded "
        "Fashion-MNIST subset, no download)",
        metavar="NAME|FOLDER",
    )
    data_dir: str | None = option(
        None, "dataset cache (none: $DISCOGRAD_DATA or ~/.cache/discograd)", metavar="DIR"
    )
    binarization: str = option(
        "threshold",
        "threshold (x > 1/2), fixed (one draw) or dynamic (a new draw per batch)",
        choices=("threshold", "fixed", "dynamic"),
    )
    validation: int = option(
        5000,
        "training images held out as the validation set: the last N of the train split "
        "(mnist, fashion-mnist, kmnist and IDX folders; 10000 gives the 50k/10k split of "
        "the DisARM and RODEO code; the embedded and digits splits are fixed)",
        minimum=1,
    )

    def __post_init__(self) -> None:
        # A folder is stored absolute: a run resumed elsewhere reads the same data.
        from discograd.experiments.images import dataset_value

        if isinstance(self.dataset, str):
            self.dataset = dataset_value(self.dataset)


@dataclasses.dataclass
class AnnealConfig:
    """Jang et al.'s temperature schedule for relaxed estimators."""

    anneal_rate: float = option(
        0.0,
        "anneal relaxed estimators' temperature: tau = max(floor, tau0 exp(-rate t)); 0: constant",
        minimum=0,
    )
    anneal_every: int = option(1000, "change the temperature every N steps", minimum=1)
    tau_floor: float = option(0.5, "the smallest annealed temperature", positive=True)
