"""Search spaces of ``wmplan tune``: which planner options a study searches, and over what.

A search space is a tuple of :class:`Param`, one per planner option. :data:`DEFAULT_SPACES` holds
one per planner (:func:`default_space`): wmplan's own planners' spaces are written below
(:data:`BUILTIN_SPACES`); a plug-in planner (``package.module:Class`` or a registered one) brings
its own as ``Class.search_space`` (:attr:`wmplan.platform.planners.Planner.search_space`, items in
the command-line grammar below), or has none and must be given one with ``--space NAME=SPEC``.
:func:`parse_space_overrides` (command line) and :func:`space_from_config` (config file) narrow,
widen, fix, drop or add parameters of it; :func:`suggest` draws planner options from an Optuna
trial, and every dict it returns is accepted by ``make_planner(name, horizon=H, **options)``.

The iterations are special in a study (:func:`wmplan.tuning.trials.trial_options`): with a budget
of model transitions (``wmplan tune --budget``) they are not searched but fitted to it after the
other options are drawn; without one, GRASP's are rounded to a multiple of its sync interval.

Two planner options need more than a plain Optuna distribution.

**Log-scale values that must be able to be exactly 0** (GRASP's ``noise_scale``, GD's
``action_noise``; ``zero=True``). Such a parameter is one float in Optuna, suggested on a log
scale over ``[zero_floor, high]`` with ``zero_floor < low``: raw values below ``low`` (the
*zero bucket*) map to exactly 0, the others are the option value itself (rounded for an int
option). The bucket takes :data:`ZERO_SHARE` (a quarter) of the log range, so a random or
start-up trial is 0 with that probability. One static, unconditional dimension suits TPE (also
multivariate TPE, Optuna 5's default): if 0 works best, the good trials' raw values cluster in the
bucket and TPE samples there; otherwise it moves up the log range. There is no second, conditional
parameter (``noise_off`` + value) whose value would be meaningless in half the trials. The
trial's raw value maps back to the option deterministically: :func:`options_from_params`.

**Elites, which must stay <= samples** (CEM and MPPI ``elites``, GRASP's ``sync_elites``). The
default spaces search a *fraction* of the samples (``fraction_of="samples"``; trial parameter
``elites_fraction``) and derive ``elites = clamp(round(fraction * samples), 1, samples)``, so
the pair is valid by construction and TPE learns the ratio, which is what matters, independent
of the sample count. An absolute elites value (``elites=20``, ``elites=8:64``) is clamped to the
trial's samples. Whenever either option of such a pair is in a space, the other is too: an option
that is not searched enters as a fixed value (its default), so that :func:`suggest` needs nothing
but the space. Other ordered pairs (MPPI ``min_std <= max_std``) are checked when the space is
built: every value of one must be compatible with every value of the other.

Command-line grammar of :func:`parse_space_overrides` (one item each)::

    name=LOW:HIGH[:log][:zero][:int|:float][:frac]   a range (replaces the default parameter)
    name=A,B,C                                       categorical choices
    name=VALUE                                       fixed: not searched
    -name                                            drop: not searched, keeps the planner default
    +name=SPEC                                       add an option that is not in the default space

``:log`` is a log scale, ``:zero`` adds exactly 0 to a log range, ``:frac`` (only for elites)
makes LOW and HIGH fractions of the samples. A spec replaces the parameter as a whole: write
``:log:zero`` again when narrowing ``noise_scale``. For a planner without a default space, plain
``name=SPEC`` adds the option (there is nothing to replace).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from wmplan.platform.errors import ConfigError, unknown_name_error
from wmplan.platform.options import build_options, parse_value
from wmplan.platform.planners import PLANNERS, Planner, planner_class
from wmplan.platform.registry import is_plugin_spec

__all__ = [
    "Param", "DEFAULT_SPACES", "BUILTIN_SPACES", "SpaceTable", "default_space", "ZERO_SHARE", "suggest",
    "options_from_params", "default_params", "distributions", "parse_space_overrides", "space_from_config", "describe",
    "searchable_options",
]

Kind = Literal["float", "int", "categorical"]

ZERO_SHARE = 0.25
"""Share of a zero-including log range (in log units) that maps to exactly 0."""

_CLAMPED_PAIRS: tuple[tuple[str, str], ...] = (("elites", "samples"), ("sync_elites", "sync_samples"))
"""(count, total) option pairs with count <= total: the count is a fraction of, or clamped to, the total."""

_ORDERED_PAIRS: tuple[tuple[str, str], ...] = (("min_std", "max_std"),)
"""(a, b) option pairs with a <= b, checked when a space is built."""

_NOT_SEARCHABLE = frozenset({"horizon"})
"""Options a study never searches (the horizon is part of the task)."""

_FLAGS = ("log", "zero", "int", "float", "frac")
_CONFIG_KEYS = ("low", "high", "log", "zero", "kind", "fraction", "choices", "value")


@dataclass(frozen=True, kw_only=True)
class Param:
    """How one planner option is searched.

    Raises:
        ConfigError: for an inconsistent description (e.g. ``low > high``, log with ``low <= 0``).
    """

    name: str
    """The planner option this parameter sets."""
    kind: Kind
    """'float' or 'int': a range ``[low, high]``; 'categorical': one of ``choices``."""
    low: float | int | None = None
    """Smallest nonzero value of a range (a fraction of the total when ``fraction_of`` is set)."""
    high: float | int | None = None
    """Largest value of a range."""
    log: bool = False
    """Search the range on a log scale (needs ``low > 0``)."""
    zero: bool = False
    """A log range that also includes exactly 0 (its zero bucket, :data:`ZERO_SHARE` of the range)."""
    choices: tuple[Any, ...] = ()
    """Values of a categorical parameter; a single choice is a fixed, unsearched value."""
    fraction_of: str | None = None
    """A float range that is a fraction of this other option (elites of samples): the option is
    ``clamp(round(fraction * total), 1, total)``."""

    def __post_init__(self) -> None:
        where = f"parameter {self.name!r}"
        if self.kind == "categorical":
            if not self.choices:
                raise ConfigError(f"{where}: a categorical parameter needs at least one choice")
            if self.low is not None or self.high is not None or self.log or self.zero or self.fraction_of:
                raise ConfigError(f"{where}: a categorical parameter takes only choices")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ConfigError(f"{where}: repeated choices in {list(self.choices)}")
            return
        if self.kind not in ("float", "int"):
            raise ConfigError(f"{where}: kind must be 'float', 'int' or 'categorical', got {self.kind!r}")
        if self.choices:
            raise ConfigError(f"{where}: a {self.kind} range takes no choices")
        if self.low is None or self.high is None:
            raise ConfigError(f"{where}: a {self.kind} range needs low and high")
        for bound in (self.low, self.high):
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
                raise ConfigError(f"{where}: bounds must be finite numbers, got {bound!r}")
            if self.kind == "int" and not isinstance(bound, int):
                raise ConfigError(f"{where}: an int range needs int bounds, got {bound!r}")
        if self.low > self.high:
            raise ConfigError(f"{where}: low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(
                f"{where}: a log range needs low > 0, got {self.low}"
                + ("" if self.zero else " (to include 0, give the smallest nonzero value as low and add zero)")
            )
        if self.zero:
            if not self.log:
                raise ConfigError(f"{where}: zero applies to log ranges; a linear range includes 0 with low=0")
            if self.low == self.high:
                raise ConfigError(f"{where}: zero needs low < high; for exactly {{0, {self.low}}} use choices")
        if self.fraction_of is not None:
            if self.kind != "float" or self.zero:
                raise ConfigError(f"{where}: a fraction of {self.fraction_of!r} is a float range without zero")
            if not 0 < self.low <= self.high <= 1:
                raise ConfigError(f"{where}: a fraction needs 0 < low <= high <= 1, got {self.low}..{self.high}")

    @property
    def key(self) -> str:
        """The name of the trial parameter (``<name>_fraction`` for a fraction)."""
        return f"{self.name}_fraction" if self.fraction_of else self.name

    @property
    def fixed(self) -> bool:
        """True for a single value that is not searched."""
        return self.kind == "categorical" and len(self.choices) == 1

    @property
    def zero_floor(self) -> float:
        """Lower end of the raw log range of a zero-including parameter (below ``low``: 0)."""
        assert self.zero and self.low is not None and self.high is not None
        return float(self.low) * (self.low / self.high) ** (ZERO_SHARE / (1.0 - ZERO_SHARE))

    @property
    def bounds(self) -> tuple[float | int, float | int]:
        """``(low, high)`` of a range (a float or int parameter, whose bounds are checked when it is made)."""
        assert self.low is not None and self.high is not None, f"parameter {self.name!r} is categorical"
        return self.low, self.high

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution of the raw trial parameter :attr:`key`."""
        if self.kind == "categorical":
            return CategoricalDistribution(self.choices)
        low, high = self.bounds
        if self.zero:
            return FloatDistribution(self.zero_floor, float(high), log=True)
        if self.kind == "int":
            return IntDistribution(int(low), int(high), log=self.log)
        return FloatDistribution(float(low), float(high), log=self.log)

    def value(self, raw: Any) -> Any:
        """The option value of the raw trial value (for a fraction: the fraction itself)."""
        if self.kind == "categorical":
            return raw
        low, high = self.bounds
        if self.zero and raw < low:
            return 0 if self.kind == "int" else 0.0
        if self.kind == "int":
            return min(max(int(math.floor(raw + 0.5)), int(low)), int(high))
        return min(max(float(raw), float(low)), float(high))


def _log(name: str, low: float, high: float, *, zero: bool = False) -> Param:
    return Param(name=name, kind="float", low=low, high=high, log=True, zero=zero)


def _int(name: str, low: int, high: int, *, log: bool = False) -> Param:
    return Param(name=name, kind="int", low=low, high=high, log=log)


def _fraction(name: str, total: str, low: float, high: float) -> Param:
    return Param(name=name, kind="float", low=low, high=high, log=True, fraction_of=total)


BUILTIN_SPACES: dict[str, tuple[Param, ...]] = {
    # Defaults: state_lr 0.1, action_lr 0.005, goal_weight 1, noise 0.005, sync every 50 for 10
    # steps at lr 0.05, the last iterate returned. Iterations are the planner default (750) unless
    # added, rounded to a multiple of the sync interval (the run ends on a sync); with a study
    # budget they are fitted to it (wmplan.tuning.trials.trial_options).
    "grasp": (
        _log("noise_scale", 1e-4, 0.1, zero=True),
        Param(name="sync_interval", kind="categorical", choices=(0, 10, 25, 50, 100, 200)),
        _int("sync_steps", 1, 50, log=True),
        _log("sync_lr", 0.005, 0.5),
        _log("state_lr", 0.01, 1.0),
        _log("action_lr", 5e-4, 0.05),
        _log("goal_weight", 1e-3, 10.0),
        Param(name="end", kind="categorical", choices=("last", "sync", "best")),
        Param(name="rollout_states", kind="categorical", choices=(False, True)),
    ),
    # DINO-WM: 300 samples, 30 elites (10%), 30 iterations, init std 1.
    "cem": (
        _int("samples", 32, 1024, log=True),
        _fraction("elites", "samples", 0.02, 0.3),
        _int("iterations", 5, 50),
        _log("init_std", 0.1, 2.0),
    ),
    # DINO-WM: lr 1, 1000 steps, action noise 0.003, init std 1 (0: zero initial actions).
    "gd": (
        _log("lr", 0.01, 3.0),
        _int("iterations", 50, 1000, log=True),
        _log("action_noise", 1e-4, 0.1, zero=True),
        _log("init_std", 0.03, 2.0, zero=True),
    ),
    # First-order LatCo: lr 0.05, 500 iterations, multiplier rate 0.1.
    "latco": (
        _log("lr", 0.003, 0.5),
        _int("iterations", 50, 500, log=True),
        _log("multiplier_lr", 0.01, 1.0),
    ),
    # TD-MPC2: temperature 0.5, 512 samples, 64 elites (12.5%), init std 2.
    "mppi": (
        _log("temperature", 0.01, 5.0),
        _int("samples", 32, 1024, log=True),
        _fraction("elites", "samples", 0.02, 0.3),
        _log("init_std", 0.1, 3.0),
    ),
}
"""The default search space of each of wmplan's own planners, around its defaults."""


# ----------------------------------------------------------------------------- suggestions


def _check_space(space: Sequence[Param]) -> None:
    names = [p.name for p in space]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"search space sets {', '.join(map(repr, repeated))} more than once")
    for p in space:
        if p.fraction_of is not None and p.fraction_of not in names:
            raise ConfigError(f"parameter {p.name!r} is a fraction of {p.fraction_of!r}, which the space lacks")


def options_from_params(params: Mapping[str, Any], space: Sequence[Param]) -> dict[str, Any]:
    """Planner options from raw trial parameters (``trial.params``, ``study.best_params``).

    Maps zero buckets to 0, fractions to counts and clamps counts to their totals; deterministic.

    Raises:
        ConfigError: for a malformed space or a parameter missing from ``params``.
    """
    _check_space(space)
    options: dict[str, Any] = {}
    for p in space:
        if p.key not in params:
            raise ConfigError(f"trial parameters lack {p.key!r} (have: {', '.join(sorted(params)) or 'none'})")
    for p in space:
        if p.fraction_of is None:
            options[p.name] = p.value(params[p.key])
    for p in space:
        if p.fraction_of is not None:
            total = options[p.fraction_of]
            options[p.name] = min(max(int(math.floor(p.value(params[p.key]) * total + 0.5)), 1), total)
    for count, total in _CLAMPED_PAIRS:
        if count in options and total in options and options[count] > options[total]:
            options[count] = options[total]
    return options


def suggest(trial: optuna.Trial, space: Sequence[Param]) -> dict[str, Any]:
    """Draw planner options for ``trial`` from ``space``.

    The trial's parameters are the raw values (:attr:`Param.key`); the returned options are what
    :func:`options_from_params` makes of them, ready for ``make_planner(name, horizon=H, **options)``.
    """
    _check_space(space)
    raw: dict[str, Any] = {}
    for p in space:
        dist = p.distribution()
        if isinstance(dist, CategoricalDistribution):
            raw[p.key] = trial.suggest_categorical(p.key, dist.choices)
        elif isinstance(dist, IntDistribution):
            raw[p.key] = trial.suggest_int(p.key, dist.low, dist.high, log=dist.log)
        else:
            assert isinstance(dist, FloatDistribution)
            raw[p.key] = trial.suggest_float(p.key, dist.low, dist.high, log=dist.log)
    return options_from_params(raw, space)


def default_params(planner: str, space: Sequence[Param]) -> dict[str, Any] | None:
    """The raw trial parameters that give ``planner``'s default options (for ``study.enqueue_trial``), each clamped
    into its parameter's range (a fraction computed from the default count and total); None when a categorical
    parameter's choices lack the default. With these, every study tries the defaults first."""
    _check_space(space)
    defaults = _defaults(planner)
    fixed = {p.name: p.choices[0] for p in space if p.fixed}
    params: dict[str, Any] = {}
    for p in space:
        value = defaults.get(p.name)
        if p.fixed:
            params[p.key] = p.choices[0]
            continue
        if p.kind == "categorical":
            if value not in p.choices:
                return None
            params[p.key] = value
            continue
        low, high = p.bounds
        if p.fraction_of is not None:
            total = fixed.get(p.fraction_of, defaults.get(p.fraction_of))
            value = value / total if isinstance(value, (int, float)) and isinstance(total, (int, float)) and total else low
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        if p.zero and value == 0:
            params[p.key] = p.zero_floor
            continue
        params[p.key] = min(max(value, low), high) if p.kind == "float" else int(min(max(round(value), low), high))
    return params


def distributions(space: Sequence[Param]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every raw trial parameter (for ``study.ask(fixed_distributions=...)``)."""
    _check_space(space)
    return {p.key: p.distribution() for p in space}


# ----------------------------------------------------------------------------- overrides


def searchable_options(planner: str) -> tuple[str, ...]:
    """The option names of ``planner`` a space may contain (all but the horizon)."""
    cls = planner_class(planner).Options
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _NOT_SEARCHABLE)


def _defaults(planner: str) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(planner_class(planner).Options)}


def _annotation(planner: str, name: str) -> Any:
    return typing.get_type_hints(planner_class(planner).Options)[name]


def _validate_value(planner: str, name: str, value: Any) -> Any:
    """``value`` converted to option ``name``'s type; ConfigError if the planner rejects it.

    Partners of ordered pairs are moved out of the way, so only the value itself is judged.
    """
    defaults = _defaults(planner)
    values = {name: value}
    for a, b in _CLAMPED_PAIRS + _ORDERED_PAIRS:
        if a in defaults and b in defaults and isinstance(value, (int, float)) and not isinstance(value, bool):
            if name == a:
                values[b] = max(value, defaults[b])
            elif name == b:
                values[a] = min(value, defaults[a])
    try:
        options = build_options(planner_class(planner).Options, values, owner=f"planner {planner!r}")
    except ConfigError as exc:
        raise _unprefixed(exc, planner) from None
    return getattr(options, name)


def _unprefixed(exc: ConfigError, planner: str) -> ConfigError:
    """``exc`` without the ``planner '...': `` prefix of :mod:`wmplan.platform.options` (the caller adds its own)."""
    prefix = f"planner {planner!r}: "
    message = str(exc)
    return ConfigError(message[len(prefix):] if message.startswith(prefix) else message)


def _number(text: Any, kind: str, what: str) -> int | float:
    """A bound from the command line (a string) or a config file (a number)."""
    if isinstance(text, str):
        try:
            text = float(text) if kind == "float" else int(text)
        except ValueError:
            raise ConfigError(f"{what} {text!r} is not {'a number' if kind == 'float' else 'an integer'}") from None
    if isinstance(text, bool) or not isinstance(text, (int, float)):
        raise ConfigError(f"{what} {text!r} is not a number")
    if kind == "int":
        if isinstance(text, float):
            if not text.is_integer():
                raise ConfigError(f"{what} {text!r} is not an integer")
            text = int(text)
        return text
    return float(text)


def _choice(planner: str, name: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = parse_value(planner_class(planner).Options, name, value.strip(), owner=f"planner {planner!r}")
        except ConfigError as exc:
            raise _unprefixed(exc, planner) from None
    return _validate_value(planner, name, value)


def _build_param(planner: str, name: str, spec: Mapping[str, Any]) -> Param:
    """A :class:`Param` from a config-style ``spec`` (keys :data:`_CONFIG_KEYS`)."""
    unknown = [k for k in spec if k not in _CONFIG_KEYS]
    if unknown:
        raise unknown_name_error("key", unknown[0], _CONFIG_KEYS)
    if "value" in spec:
        if len(spec) > 1:
            raise ConfigError("'value' (a fixed value) takes no other keys")
        return Param(name=name, kind="categorical", choices=(_choice(planner, name, spec["value"]),))
    if "choices" in spec:
        if len(spec) > 1:
            raise ConfigError("'choices' takes no other keys")
        choices = spec["choices"]
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or not choices:
            raise ConfigError(f"choices must be a non-empty list, got {choices!r}")
        return Param(name=name, kind="categorical", choices=tuple(_choice(planner, name, c) for c in choices))
    for key in ("log", "zero", "fraction"):
        if not isinstance(spec.get(key, False), bool):
            raise ConfigError(f"{key!r} must be true or false, got {spec[key]!r}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError("a range needs low and high (or give choices or a value)")
    fraction = bool(spec.get("fraction", False))
    pairs = dict(_CLAMPED_PAIRS)
    annotation = _annotation(planner, name)
    natural = {int: "int", float: "float"}.get(annotation)
    if fraction:
        if name not in pairs or pairs[name] not in searchable_options(planner):
            raise ConfigError(f"only {' and '.join(pairs)} can be a fraction (of {' and '.join(pairs.values())})")
        natural = "float"
    if natural is None:
        raise ConfigError(f"option {name!r} is not a number: give choices or a fixed value, not a range")
    kind = spec.get("kind", natural)
    if kind not in ("int", "float"):
        raise ConfigError(f"kind must be 'int' or 'float', got {kind!r}")
    if kind != natural:
        what = "a fraction (float)" if fraction else f"of type {natural}"
        raise ConfigError(f"option {name!r} is {what}; drop the {kind!r} kind")
    try:
        low = _number(spec["low"], kind, "low")
        high = _number(spec["high"], kind, "high")
    except ConfigError as exc:
        if name in pairs and not fraction:
            raise ConfigError(f"{exc} (for a fraction of {pairs[name]}, add :frac or fraction: true)") from None
        raise
    if low > high:
        raise ConfigError(f"low {low} > high {high}")
    log, zero = bool(spec.get("log", False)), bool(spec.get("zero", False))
    if log and low <= 0:
        raise ConfigError(
            f"a log range needs low > 0, got {low}"
            + (" (with zero, low is the smallest nonzero value)" if zero else " (add zero to include 0, with low the smallest nonzero value)")
        )
    if not fraction:
        low, high = (_validate_value(planner, name, v) for v in (low, high))
        if zero:
            _validate_value(planner, name, 0 if kind == "int" else 0.0)
    return Param(name=name, kind=kind, low=low, high=high, log=log, zero=zero, fraction_of=pairs[name] if fraction else None)


def _spec_from_text(text: str) -> dict[str, Any]:
    """The config-style spec of a command-line spec ``LOW:HIGH[:flag...]``, ``A,B,C`` or ``VALUE``."""
    text = text.strip()
    if not text:
        raise ConfigError("empty value")
    if ":" in text:
        low, high, *flags = (part.strip() for part in text.split(":"))
        spec: dict[str, Any] = {"low": low, "high": high}
        for flag in flags:
            if flag not in _FLAGS:
                raise ConfigError(f"unknown range flag {flag!r}; valid: {', '.join(_FLAGS)}")
            if flag in ("int", "float"):
                if "kind" in spec and spec["kind"] != flag:
                    raise ConfigError("a range is int or float, not both")
                spec["kind"] = flag
            else:
                spec["fraction" if flag == "frac" else flag] = True
        return spec
    if "," in text:
        choices = [c.strip() for c in text.split(",")]
        if not all(choices):
            raise ConfigError(f"empty choice in {text!r}")
        return {"choices": choices}
    return {"value": text}


class _Builder:
    """A space being edited, item by item, with errors that name the item.

    It starts from the planner's default space, or from ``base`` when given. A planner without a
    default space starts empty and *open*: ``name=SPEC`` adds, and an empty result is an error.
    """

    def __init__(self, planner: str, *, base: Sequence[Param] | None = None, source: str = "") -> None:
        self.cls = planner_class(planner)  # unknown planner: ConfigError listing the valid ones
        self.planner = planner
        self.source = source
        self.valid = searchable_options(planner)
        start = _default_space_or_none(planner) if base is None else tuple(base)
        self.open = not start
        self.params: dict[str, Param] = {p.name: p for p in start or ()}
        self.items: dict[str, str] = {}

    def fail(self, item: str, exc: Exception) -> ConfigError:
        where = f" in {self.source}" if self.source else ""
        return ConfigError(f"search space item {item!r}{where} for planner {self.planner!r}: {exc}")

    def check_name(self, name: str, item: str) -> None:
        if name in _NOT_SEARCHABLE:
            raise self.fail(item, ConfigError(f"{name!r} is set by the task and is not searched"))
        if name not in self.valid:
            source = f" in {self.source}" if self.source else ""
            raise unknown_name_error(
                "option", name, self.valid, where=f"in search space item {item!r}{source} for planner {self.planner!r}"
            )

    def set(self, name: str, spec: Mapping[str, Any] | None, item: str) -> None:
        self.check_name(name, item)
        if spec is None:
            self.params.pop(name, None)
            self.items.pop(name, None)
            return
        try:
            param = _build_param(self.planner, name, spec)
        except ConfigError as exc:
            raise self.fail(item, exc) from None
        self.params[name] = param  # replaces in place, or appends
        self.items[name] = item

    def set_text(self, name: str, text: str, item: str) -> None:
        """:meth:`set` from a spec written as text (``LOW:HIGH[:log][:zero][:int]``, ``A,B,C`` or ``V``)."""
        try:
            spec = _spec_from_text(text)
        except ConfigError as exc:
            raise self.fail(item, exc) from None
        self.set(name, spec, item)

    def finish(self) -> tuple[Param, ...]:
        if self.open and not self.params:
            raise _no_space_error(self.planner, self.cls)
        defaults = _defaults(self.planner)
        for count, total in _CLAMPED_PAIRS:
            if count in self.params or total in self.params:
                for name in (count, total):
                    if name in defaults and name not in self.params:
                        self.params[name] = Param(name=name, kind="categorical", choices=(defaults[name],))
        for a, b in _ORDERED_PAIRS:
            if a in defaults and b in defaults and (a in self.params or b in self.params):
                lows = self._values(a, defaults[a])
                highs = self._values(b, defaults[b])
                if max(lows) > min(highs):
                    items = ", ".join(repr(self.items[n]) for n in (a, b) if n in self.items) or "the default space"
                    raise ConfigError(
                        f"search space of planner {self.planner!r}: {a} can reach {max(lows)} but {b} can be "
                        f"{min(highs)}, and {a} must be <= {b} (from {items})"
                    )
        space = tuple(self.params.values())
        _check_space(space)
        return space

    def _values(self, name: str, default: Any) -> list[Any]:
        p = self.params.get(name)
        if p is None:
            return [default]
        if p.kind == "categorical":
            return list(p.choices)
        return [p.low, p.high] + ([0] if p.zero else [])


def parse_space_overrides(planner: str, items: Sequence[str]) -> tuple[Param, ...]:
    """The default space of ``planner`` (:func:`default_space`) edited by command-line ``items`` (see the module docs).

    >>> [p.name for p in parse_space_overrides("grasp", ["-goal_weight", "+iterations=100:1000:int"])][-1]
    'iterations'

    Raises:
        ConfigError: for an unknown planner or option (listing the valid ones), or a malformed
            item (naming it): bad range, value the planner rejects, adding an option already
            searched, changing one that is not (use ``+``); a planner without a default
            space and no items.
    """
    builder = _Builder(planner)
    for raw in items:
        item = raw.strip()
        if item.startswith("-"):
            name = item[1:].strip()
            builder.check_name(name, item)
            if name not in builder.params:
                raise builder.fail(item, ConfigError(f"{name!r} is not in the search space"))
            builder.set(name, None, item)
            continue
        add = item.startswith("+")
        name, sep, text = item[1:].partition("=") if add else item.partition("=")
        name = name.strip()
        if not sep:
            raise builder.fail(item, ConfigError("expected name=SPEC, +name=SPEC or -name"))
        builder.check_name(name, item)
        if add and name in builder.params:
            raise builder.fail(item, ConfigError(f"{name!r} is already searched; write {name}=... to change it"))
        if not add and name not in builder.params and not builder.open:
            raise builder.fail(item, ConfigError(f"{name!r} is not in the default space; write +{name}=... to add it"))
        builder.set_text(name, text, item)
    return builder.finish()


def space_from_config(planner: str, mapping: Mapping[str, Any]) -> tuple[Param, ...]:
    """The default space of ``planner`` edited by a config-file mapping, option name to spec.

    A spec is a mapping with ``low``, ``high`` and optionally ``log``, ``zero``, ``kind``
    ('int'/'float'), ``fraction``; or ``{"choices": [...]}`` or a list (choices); or
    ``{"value": v}`` or a number or bool (fixed); or a string in the command-line syntax
    (``"0.001:0.1:log"``); or ``None`` (drop: keep the planner default). Options not in the
    default space are added. Validation is that of :func:`parse_space_overrides`.
    """
    builder = _Builder(planner)
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"search space of planner {planner!r} must be a mapping of option names, got {mapping!r}")
    for name, value in mapping.items():
        item = f"{name}: {value!r}"
        builder.check_name(str(name), item)
        spec: Mapping[str, Any] | None
        try:
            if value is None:
                spec = None
            elif isinstance(value, Mapping):
                spec = value
            elif isinstance(value, str):
                spec = _spec_from_text(value)
            elif isinstance(value, (list, tuple)):
                spec = {"choices": list(value)}
            else:
                spec = {"value": value}
        except ConfigError as exc:
            raise builder.fail(item, exc) from None
        builder.set(str(name), spec, item)
    return builder.finish()


# ----------------------------------------------------------------------------- default spaces


def _builtin_space(cls: type[Planner[Any]]) -> tuple[Param, ...] | None:
    """The written space of one of wmplan's own planner classes (by class, so a spec naming it works too)."""
    for name, space in BUILTIN_SPACES.items():
        if PLANNERS[name] is cls:
            return space
    return None


def _no_space_error(planner: str, cls: type[Planner[Any]]) -> ConfigError:
    return ConfigError(
        f"planner {planner!r} has no search space: give one with --space NAME=SPEC or define {cls.__name__}.search_space"
    )


def _default_space_or_none(planner: str) -> tuple[Param, ...] | None:
    cls = planner_class(planner)
    builtin = _builtin_space(cls)
    if builtin is not None:
        return builtin
    hook = cls.search_space
    if not hook:
        return None
    builder = _Builder(planner, base=(), source=f"{cls.__name__}.search_space")
    for name, text in hook.items():
        item = f"{name}={text}"
        builder.check_name(name, item)
        builder.set_text(name, text, item)
    return builder.finish()


def default_space(planner: str) -> tuple[Param, ...]:
    """The search space ``wmplan tune`` uses for ``planner`` when none is given.

    wmplan's own planners: :data:`BUILTIN_SPACES`. A plug-in planner (a registered name or
    ``package.module:Class``): its ``search_space`` hook, parsed and checked like ``--space`` items.

    Raises:
        ConfigError: an unknown planner (listing the valid ones), a malformed hook (naming the
            item), or a plug-in planner without a search space.
    """
    space = _default_space_or_none(planner)
    if space is None:
        raise _no_space_error(planner, planner_class(planner))
    return space


class SpaceTable(Mapping[str, tuple[Param, ...]]):
    """The default search space of every planner by name, read-only (:func:`default_space`).

    Iterating lists the built-in and registered planners that have a space; looking up also
    accepts ``package.module:Class``, and raises the ConfigError of :func:`default_space` for a
    plug-in planner without a space (``in`` answers False for it).
    """

    def __getitem__(self, planner: str) -> tuple[Param, ...]:
        if not is_plugin_spec(planner) and planner not in PLANNERS:
            raise KeyError(planner)
        return default_space(planner)

    def __contains__(self, planner: object) -> bool:
        if not isinstance(planner, str) or (not is_plugin_spec(planner) and planner not in PLANNERS):
            return False
        return _default_space_or_none(planner) is not None

    def __iter__(self) -> Iterator[str]:
        return iter([name for name in PLANNERS if name in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"DEFAULT_SPACES({', '.join(self)})"


DEFAULT_SPACES = SpaceTable()
"""The default search space of every planner (see :class:`SpaceTable` and :func:`default_space`)."""


# ----------------------------------------------------------------------------- help


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(space: Sequence[Param]) -> str:
    """A short table of ``space``: one line per parameter with its kind, values and notes."""
    rows = [("option", "kind", "values", "notes")]
    for p in space:
        notes = []
        if p.fixed:
            kind, values = "fixed", _fmt(p.choices[0])
        elif p.kind == "categorical":
            kind, values = "choice", ", ".join(_fmt(c) for c in p.choices)
        else:
            kind = p.kind + (" log" if p.log else "")
            values = f"{_fmt(p.low)} .. {_fmt(p.high)}"
            if p.zero:
                notes.append(f"or 0 ({ZERO_SHARE:.0%} of the prior)")
            if p.fraction_of:
                notes.append(f"fraction of {p.fraction_of}")
        rows.append((p.name, kind, values, "; ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        ("  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths)) + "  " + r[3]).rstrip() for r in rows
    )
