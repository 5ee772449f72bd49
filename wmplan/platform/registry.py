"""Names to things: planners, tasks and world models by built-in name or ``package.module:callable``.

Every command names its planner, task and world model with a string. A string is either

- a *built-in name*: wmplan's own (``"grasp"``, ``"wall"``) or one registered with
  :func:`register_planner`, :func:`register_task` or :func:`register_model` (the Python
  equivalent of naming a plug-in), or
- a *plug-in spec* ``package.module:callable`` (``callable`` may be a dotted attribute path),
  imported with :mod:`importlib` in whichever process needs it (the driver and every Ray actor),
  so the package must be installed there.

What the spec names, for each kind:

========  ========================================================================================
planner   a :class:`~wmplan.platform.planners.base.Planner` subclass with a frozen ``Options``
          dataclass deriving from :class:`~wmplan.platform.planners.base.PlannerOptions`
task      a callable ``factory(**options) -> Env`` (:class:`wmplan.platform.envs.Env`), e.g. an
          ``Env`` subclass
model     a callable ``factory(*, device, **options) -> model`` returning a world model
          (:class:`~wmplan.platform.world_model.WorldModel`; checked, and checked as an
          :class:`~wmplan.platform.world_model.ObservationModel` when it declares pictures)
========  ========================================================================================

For a model, :data:`EXACT_MODEL` (``"exact"``) names the task's own dynamics, for a task whose
:class:`~wmplan.platform.envs.Env` offers them (a method ``exact_model(*, device) -> WorldModel``,
as the analytic tasks of :mod:`wmplan.platform.envs.analytic` do; see :func:`has_exact_model`); a
string that is neither that, a registered name nor a plug-in spec is a checkpoint directory
(:func:`wmplan.platform.models.load_world_model`).

Imports are cached (one import per spec and process), and each plug-in is checked on first use:
anything wrong (a module that cannot be imported, a missing attribute, the wrong kind of object,
an option the factory does not take) is a :class:`~wmplan.platform.errors.ConfigError` that
names the spec.

Safety: the registry resolves only the names its callers hand it, and callers hand it only names a
user gave (command line, experiment config, a Python call). No name read out of a data file (a
checkpoint, a Parquet file, an MLflow run) is ever passed here, so code named in a data file is
never imported.

>>> planner_class("grasp").__name__
'GRASP'
>>> make_task("wall").name
'wall'
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import os
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from wmplan.platform.envs import ENV_NAMES, Env, env_class, make_env
from wmplan.platform.errors import ConfigError, unknown_name_error

if TYPE_CHECKING:  # torch is imported where models are: resolving a task never loads it (data workers)
    import torch

    from wmplan.platform.planners.base import Planner
    from wmplan.platform.world_model import WorldModel

__all__ = [
    "KINDS", "Kind", "PlannerTable", "PLANNERS", "is_plugin_spec", "names",
    "register_planner", "register_task", "register_model", "unregister",
    "planner_class", "make_task", "task_class", "is_model_factory", "model_factory", "load_model",
    "EXACT_MODEL", "has_exact_model", "default_model_is_exact",
]

Kind = Literal["planner", "task", "model"]
KINDS: tuple[Kind, ...] = ("planner", "task", "model")
"""The kinds of thing the registry resolves."""

PlannerT = TypeVar("PlannerT", bound="type[Planner[Any]]")

_SPEC = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_NAME = re.compile(r"^[A-Za-z_][\w\-]*$")

EXACT_MODEL = "exact"
"""The model name that means the task's own dynamics (:func:`has_exact_model`), loaded with no checkpoint."""

_planners: dict[str, type[Planner[Any]]] = {}
_tasks: dict[str, Callable[..., Env]] = {}
_models: dict[str, Callable[..., WorldModel]] = {}
_builtin_planners: set[str] = set()


def is_plugin_spec(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` has the form ``package.module:callable`` (rather than a built-in name or a path)."""
    return isinstance(name, str) and _SPEC.match(name) is not None


_BUILTIN_PLANNER_SPECS = {
    "grasp": "wmplan.platform.planners.grasp:GRASP",
    "gd": "wmplan.platform.planners.gd:GD",
    "cem": "wmplan.platform.planners.cem:CEM",
    "latco": "wmplan.platform.planners.latco:LatCo",
    "mppi": "wmplan.platform.planners.mppi:MPPI",
}
"""wmplan's own planners, named like plug-ins: the registry imports them on first use (it sits below
the planners package, which imports it)."""


def _ensure_builtin_planners() -> None:
    if _builtin_planners:
        return
    for spec in _BUILTIN_PLANNER_SPECS.values():
        module, attr = spec.split(":")
        register_planner(getattr(importlib.import_module(module), attr))


def names(kind: Kind) -> tuple[str, ...]:
    """The built-in and registered names of ``kind``, sorted."""
    if kind == "planner":
        _ensure_builtin_planners()
        return tuple(sorted(_planners))
    if kind == "task":
        return tuple(sorted({*ENV_NAMES, *_tasks}))
    if kind == "model":
        return tuple(sorted(_models))
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


# ----------------------------------------------------------------------------- registration


def _check_name(kind: Kind, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"a {kind} name is a word (letters, digits, '_', '-'), not {name!r}; "
                          "use 'package.module:callable' to name code")


def register_planner(cls: PlannerT) -> PlannerT:
    """Make the planner class ``cls`` available under ``cls.name``; returns ``cls`` (usable as a decorator).

    Registering the same class again is a no-op.

    Raises:
        ConfigError: ``cls`` is not a usable planner class (see :func:`planner_class`), it has no
            ``name``, or the name belongs to another planner.
    """
    where = f"planner class {getattr(cls, '__qualname__', cls)!r}"
    _check_planner(cls, where)
    name = cls.__dict__.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{where} needs its own class attribute name (a str) to be registered")
    _check_name("planner", name)
    if _planners.get(name, cls) is not cls:
        raise ConfigError(f"planner name {name!r} is taken by {_planners[name].__qualname__}")
    _planners[name] = cls
    if cls.__module__.startswith("wmplan.platform.planners."):
        _builtin_planners.add(name)
    return cls


def register_task(name: str, factory: Callable[..., Env]) -> None:
    """Make ``factory(**options) -> Env`` available as task ``name``.

    Raises:
        ConfigError: ``name`` is not a word, is wmplan's own task or is taken, or ``factory`` is
            not callable.
    """
    _check_name("task", name)
    if not callable(factory):
        raise ConfigError(f"task {name!r}: the factory must be callable, got {type(factory).__name__}")
    if name in ENV_NAMES or _tasks.get(name, factory) is not factory:
        raise ConfigError(f"task name {name!r} is taken")
    _tasks[name] = factory


def register_model(name: str, factory: Callable[..., WorldModel]) -> None:
    """Make ``factory(*, device, **options) -> WorldModel`` available as model ``name``.

    A registered name wins over a checkpoint directory of the same name (give a path with a
    ``/`` to mean the directory).

    Raises:
        ConfigError: ``name`` is not a word or is taken, or ``factory`` is not callable.
    """
    _check_name("model", name)
    if not callable(factory):
        raise ConfigError(f"model {name!r}: the factory must be callable, got {type(factory).__name__}")
    if name == EXACT_MODEL or _models.get(name, factory) is not factory:
        raise ConfigError(f"model name {name!r} is taken")
    _models[name] = factory


def unregister(kind: Kind, name: str) -> None:
    """Forget a registered name (tests and interactive sessions); wmplan's own names stay.

    Raises:
        ConfigError: ``name`` is not registered, or is wmplan's own.
    """
    table: dict[str, Any] = _planners if kind == "planner" else _tasks if kind == "task" else _models
    if kind == "planner":
        _ensure_builtin_planners()
    if name in _builtin_planners or (kind == "task" and name in ENV_NAMES):
        raise ConfigError(f"{kind} {name!r} is wmplan's own and cannot be unregistered")
    if name not in table:
        raise unknown_name_error(f"registered {kind}", name, table)
    del table[name]


# ----------------------------------------------------------------------------- importing plug-ins


@functools.cache
def _import(spec: str) -> object:
    """The object ``spec`` = ``package.module:attr.path`` names (cached per process)."""
    module_name, _, path = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} of {spec!r} ({exc}); is its package installed on this "
            "machine (or on PYTHONPATH, or in the job's runtime environment)?"
        ) from None
    obj: object = module
    for i, attr in enumerate(path.split(".")):
        if not hasattr(obj, attr):
            owner = module_name + "".join("." + a for a in path.split(".")[:i])
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(attr, public, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{spec!r}: {owner!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, attr)
    return obj


def _plugin(kind: Kind, spec: str) -> object:
    try:
        return _import(spec)
    except ConfigError as exc:
        raise ConfigError(f"{kind} {exc}") from None


def _what(obj: object) -> str:
    """How to name ``obj`` in a message: ``the class X``, ``the function 'f'``, ``an int``."""
    if inspect.isclass(obj):
        return f"the class {obj.__qualname__}"
    if inspect.isroutine(obj):
        return f"the {type(obj).__name__} {getattr(obj, '__qualname__', obj)!r}"
    kind = type(obj).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


# ----------------------------------------------------------------------------- planners


def _check_planner(obj: object, where: str) -> None:
    from wmplan.platform.planners.base import Planner, PlannerOptions

    if not (inspect.isclass(obj) and issubclass(obj, Planner)):
        raise ConfigError(f"{where} is {_what(obj)}, not a subclass of wmplan.platform.planners.Planner")
    options = getattr(obj, "Options", None)
    if not (inspect.isclass(options) and dataclasses.is_dataclass(options) and issubclass(options, PlannerOptions)):
        raise ConfigError(
            f"{where} needs a class attribute Options: a frozen dataclass deriving from "
            f"wmplan.platform.planners.PlannerOptions (got {_what(options)})"
        )
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise ConfigError(f"{where} is abstract: it does not implement {missing}")
    space = getattr(obj, "search_space", {})
    if not isinstance(space, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in space.items()):
        raise ConfigError(f"{where}: search_space must map option names to spec strings, got {space!r}")


@functools.cache
def _plugin_planner(spec: str) -> type[Planner[Any]]:
    obj = _plugin("planner", spec)
    _check_planner(obj, f"planner {spec!r}")
    return cast("type[Planner[Any]]", obj)  # checked: a Planner subclass


def planner_class(spec: str) -> type[Planner[Any]]:
    """The planner class of a built-in name or a ``package.module:Class`` spec.

    Raises:
        ConfigError: an unknown name (listing the valid ones), or a spec that cannot be imported
            or does not name a usable planner class (a non-abstract ``Planner`` subclass with an
            ``Options`` dataclass deriving from ``PlannerOptions``).
    """
    if is_plugin_spec(spec):
        return _plugin_planner(spec)
    _ensure_builtin_planners()
    try:
        return _planners[spec]
    except (KeyError, TypeError):
        raise unknown_name_error("planner", str(spec), _planners) from None


class PlannerTable(Mapping[str, "type[Planner[Any]]"]):
    """Every planner by name, read-only: iterating lists the built-in and registered names, and
    looking up also accepts ``package.module:Class`` (``spec in PLANNERS`` imports and checks it:
    a broken spec raises its ConfigError rather than answering False)."""

    def __getitem__(self, name: str) -> type[Planner[Any]]:
        if not is_plugin_spec(name):
            _ensure_builtin_planners()
            if name not in _planners:
                raise KeyError(name)
        return planner_class(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(names("planner"))

    def __len__(self) -> int:
        return len(names("planner"))

    def __repr__(self) -> str:
        return f"PLANNERS({', '.join(names('planner'))})"


PLANNERS = PlannerTable()
"""Every planner by name (see :class:`PlannerTable`)."""


# ----------------------------------------------------------------------------- factories


def _bind(factory: Callable[..., Any], options: Mapping[str, Any], where: str) -> None:
    """Check that ``factory`` takes ``options`` as keywords; ConfigError naming an unknown one."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: let the call judge
        return
    params = signature.parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        valid = [p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        for key in options:
            if key not in valid:
                raise unknown_name_error("option", key, valid, where=f"for {where}")
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _task_factory(spec: str) -> Callable[..., Env]:
    if spec in _tasks:
        return _tasks[spec]
    obj = _plugin("task", spec)
    if not callable(obj):
        raise ConfigError(f"task {spec!r} is {_what(obj)}, not a callable that returns an Env")
    return cast("Callable[..., Env]", obj)  # its result is checked when called


def make_task(spec: str, /, **options: Any) -> Env:
    """The task simulator of a built-in name or a ``package.module:factory`` spec, built with ``options``.

    Raises:
        ConfigError: an unknown name (listing the valid ones), a spec that cannot be imported, an
            option the factory does not take, or a factory that does not return an ``Env``.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"a task is named by a string, got {type(spec).__name__}")
    if spec in ENV_NAMES:
        try:
            return make_env(spec, **options)
        except TypeError as exc:  # an option the simulator does not take
            raise ConfigError(f"task {spec!r}: {exc}") from exc
    if spec not in _tasks and not is_plugin_spec(spec):
        raise unknown_name_error("task", spec, names("task"))
    factory = _task_factory(spec)
    _bind(factory, options, f"task {spec!r}")
    env = factory(**options)
    if not isinstance(env, Env):
        raise ConfigError(f"task {spec!r} returned {_what(env)}, not an Env (wmplan.platform.envs.Env)")
    return env


@functools.cache
def _plugin_task_class(spec: str) -> type[Env]:
    return type(make_task(spec))


def task_class(spec: str) -> type[Env]:
    """The :class:`~wmplan.platform.envs.Env` class of a task, for what the class knows
    (``frameskip``, ``default_trajectory_steps``, ``pixel_recipe``, ``needs_dataset_for_goals``, ...);
    what a config calls to check a task name.

    A built-in name gives its class without building a simulator. Any other name is built once
    with its default options (:func:`make_task`) to learn its class: once per process for a
    ``package.module:factory`` spec (cached), on every call for a registered name (which may be
    registered again).

    Raises:
        ConfigError: as :func:`make_task`.
    """
    if isinstance(spec, str) and spec in ENV_NAMES:
        return env_class(spec)
    if isinstance(spec, str) and is_plugin_spec(spec):
        return _plugin_task_class(spec)
    return type(make_task(spec))


def has_exact_model(task: Env | type[Env]) -> bool:
    """Whether a task (its :class:`~wmplan.platform.envs.Env` or its class) offers its own dynamics as a
    world model: a method ``exact_model(*, device) -> WorldModel``, what model :data:`EXACT_MODEL` loads."""
    return callable(getattr(task, "exact_model", None))


def default_model_is_exact(task: Env | type[Env]) -> bool:
    """Whether ``model: auto`` (with ``obs: state``) plans a task with its own dynamics: a task that has them
    (:func:`has_exact_model`) and does not say otherwise (``exact_model_is_default = False``, as Wall, whose
    ``auto`` is its learned model and whose dynamics are there to measure planners' ceilings)."""
    return has_exact_model(task) and bool(getattr(task, "exact_model_is_default", True))


def is_model_factory(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a model factory (a registered name or ``package.module:callable``)
    rather than a checkpoint directory."""
    return isinstance(spec, str) and (spec in _models or is_plugin_spec(spec))


def _returns_no_model(factory: Callable[..., Any]) -> str | None:
    """The class a factory is declared to return when that class has no ``step`` method (so its
    result cannot be a world model); None when it may be one or says nothing (no annotation)."""
    if inspect.isclass(factory):
        returned: object = factory
    else:
        try:
            returned = typing.get_type_hints(factory).get("return")
        except Exception:  # noqa: BLE001 - an annotation that does not resolve here says nothing
            return None
    if not inspect.isclass(returned) or callable(getattr(returned, "step", None)):
        return None
    return returned.__qualname__


def _bound_model_factory(spec: str, options: Mapping[str, Any]) -> Callable[..., Any]:
    """The callable ``spec`` names, checked to take ``device`` and ``options`` as keywords."""
    factory = _models.get(spec) or _plugin("model", spec)
    if not callable(factory):
        raise ConfigError(f"model {spec!r} is {_what(factory)}, not a callable that returns a world model")
    if "device" in options:
        raise ConfigError(f"model {spec!r}: give device as load_model's own argument, not as an option")
    import torch

    _bind(factory, {"device": torch.device("cpu"), **options}, f"model {spec!r}")
    return factory


def model_factory(spec: str, *, options: Mapping[str, Any] | None = None) -> Callable[..., WorldModel]:
    """The factory of a registered model name or a ``package.module:callable`` spec, checked without calling it.

    What a driver checks before anything starts (the model itself is loaded where it plans, e.g.
    in each Ray actor): the module imports, the attribute is callable, it takes ``device`` and
    every key of ``options`` as keywords, and, when it is a class or declares its return type,
    that type has a ``step`` method.

    Raises:
        ConfigError: naming the spec and what is wrong.
    """
    if not is_model_factory(spec):
        raise ConfigError(f"model {spec!r} is neither a registered model name nor a package.module:callable spec")
    factory = _bound_model_factory(spec, options or {})
    wrong = _returns_no_model(factory)
    if wrong is not None:
        raise ConfigError(f"model {spec!r} returns {wrong} (as declared), which has no step method: not a world model "
                          "(wmplan.platform.world_model.WorldModel)")
    return cast("Callable[..., WorldModel]", factory)


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    options: Mapping[str, Any] | None = None,
    task: Env | None = None,
) -> WorldModel:
    """The world model of a registered name, a ``package.module:factory`` spec, a checkpoint directory,
    or the task's own dynamics.

    Args:
        spec: :data:`EXACT_MODEL`, the exact dynamics of ``task`` (``task.exact_model(device=device)``;
            no options); a registered model name; ``package.module:factory``, called as
            ``factory(device=device, **options)``; or else a checkpoint directory (or its
            config.json), loaded with :func:`wmplan.platform.models.load_world_model` with
            ``options`` as its keywords (e.g. ``allow_code``).
        device: where the model must live.
        options: keyword options of the factory or the checkpoint loader.
        task: the task planned on; needed only by :data:`EXACT_MODEL`.

    Returns:
        A checked world model on ``device`` (also checked as an observation model when it
        declares ``observation = 'pixels'``).

    Raises:
        ConfigError: a spec that cannot be imported, an option the factory does not take, or a
            result that is not a world model or lives on another device.
        wmplan.platform.models.CheckpointError: for a missing or broken checkpoint.
    """
    import torch

    from wmplan.platform.world_model import check_world_model, is_observation_model

    options = dict(options or {})
    device = torch.device(device)
    if spec == EXACT_MODEL:
        if task is None or not has_exact_model(task):
            what = "no task was given" if task is None else f"task {task.name!r} has no exact dynamics (exact_model)"
            raise ConfigError(f"model {EXACT_MODEL!r} is the task's own dynamics, but {what}; give a checkpoint or a plug-in")
        if options:
            raise ConfigError(f"model {EXACT_MODEL!r} (the task's own dynamics) takes no options, got {', '.join(options)}")
        model = cast(Any, task).exact_model(device=device)  # checked by has_exact_model
        where = f"the exact dynamics of task {task.name!r}"
    elif isinstance(spec, str) and is_model_factory(spec):
        model = _bound_model_factory(spec, options)(device=device, **options)
        where = f"model {spec!r}"
    else:
        from wmplan.platform.models import load_world_model

        _bind(load_world_model, {"path": spec, "device": device, **options}, "a checkpoint")
        model = load_world_model(spec, device=device, **options)
        where = f"checkpoint {str(spec)!r}"
    try:
        checked = check_world_model(model)
        is_observation_model(checked)
    except TypeError as exc:
        raise ConfigError(f"{where} returned {_what(model)}, which is not a usable world model: {exc}") from None
    actual = checked.action_low.device
    if actual.type != device.type or (device.index is not None and actual.index not in (None, device.index)):
        raise ConfigError(f"{where} returned a model on {actual}, but it was asked for {device}")
    return checked
