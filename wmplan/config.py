"""The settings every command shares, one ``--set KEY=VALUE`` grammar, and the flags generated from them.

:class:`Settings` holds what experiments (:class:`wmplan.jobs.experiment.ExperimentConfig`), studies
(:class:`wmplan.tuning.study.TuneConfig`) and sweeps (:class:`wmplan.tuning.sweep.SweepConfig`) have
in common: what is planned on (task, model, what it sees, its data) and where (actors, batch size,
device, cluster, output, tracking). Each command's config is a frozen dataclass that extends it, so
config files stay flat (``task: wall``, ``actors: 4``) and every field has one docstring, which is also
its command-line help.

The grammar (:func:`apply_overrides`), typed by the fields of the config class:

- ``key=value``: a scalar read as the field's type (``episodes=10``, ``tracking=false``); a list
  or tuple comma-separated (``horizons=5,10``, ``planners=cem,grasp``); a mapping of planners from
  their names (``planners=cem,grasp`` keeps the options of the planners named and drops the others,
  here and in every other mapping of planners).
- ``FIELD.PLANNER.OPTION=value`` in a mapping of planners to options (``planners.grasp.iterations=30``,
  a sweep's ``options.grasp.iterations=200``): typed by that planner's ``Options``. A plug-in
  planner's name may hold dots and a colon (``planners.my_pkg.planners:Shooting.samples=64``): the
  option is after the last dot.
- ``FIELD.PLANNER=ITEM`` in a mapping of planners to lists (a sweep's ``space.grasp=-goal_weight``)
  adds one item; so does ``FIELD=ITEM`` for a list whose items may hold commas (a study's ``space``).

:func:`add_flags` gives a command one ``--flag`` per field (the field's docstring and default as
help), and :func:`config_from_args` turns the flags given, the ``--set`` items and an optional config
file into the command's config, all through the grammar. This module imports nothing above
:mod:`wmplan.platform` (and the heavy parts of the platform only when used).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import importlib
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from wmplan.platform.envs import DEFAULT_TASK
from wmplan.platform.errors import ConfigError, unknown_name_error
from wmplan.platform.options import build_options, option_docs, parse_value, require

__all__ = [
    "BY_OPTION",
    "BY_PLANNER",
    "OBS",
    "ONE_PER_ITEM",
    "Settings",
    "add_flags",
    "apply_overrides",
    "config_from_args",
    "files_sha256",
    "flag_overrides",
    "load",
    "read_config_file",
]

C = TypeVar("C")
S = TypeVar("S", bound="Settings")

OBS = ("state", "pixels")
"""What a model named 'auto' sees: env states, or rendered frames (a visual model)."""
BY_PLANNER: Mapping[str, Any] = types.MappingProxyType({"keys": "planner"})
"""Field metadata: a mapping whose keys are planner names (set as ``FIELD.PLANNER...``, pruned to ``planners``)."""
ONE_PER_ITEM: Mapping[str, Any] = types.MappingProxyType({"one_per_item": True})
"""Field metadata: a list whose items may hold commas, so each ``FIELD=ITEM`` (or flag) adds one item."""
BY_OPTION: Mapping[str, Any] = types.MappingProxyType({"keys": "option"})
"""Field metadata: a mapping of a plug-in's option names to values: ``FIELD.NAME=VALUE`` sets one (the value read
as YAML: a number, true/false, a string), ``FIELD=MAPPING`` all of them (a YAML mapping, e.g. ``{checkpoint: DIR}``)."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What is planned on and where: the settings every command (run, plan, tune, bench sweep) shares."""

    WHAT: ClassVar[str] = "config"
    """What a config of this class is called in error messages."""
    ALIASES: ClassVar[Mapping[str, str]] = {}
    """Earlier names of keys, still read from files, flags and --set (old name -> field)."""

    task: str = DEFAULT_TASK
    """Task: a built-in or registered name, or package.module:factory (a user's Env)."""
    model: str = "auto"
    """World model: a checkpoint directory; 'auto': on a task with exact dynamics (the analytic tasks linear,
    pointmass, obstacles) with obs 'state', those dynamics, else checkpoints/TASK (or checkpoints/TASK-pixels), trained
    first when it does not exist; 'exact': the task's own dynamics (no checkpoint, no training); or a plug-in,
    package.module:callable (a user's factory, called in each actor as factory(device=..., **model_options))."""
    model_options: dict[str, Any] = field(default_factory=dict, metadata=BY_OPTION)
    """Keyword options of a plug-in model's factory, e.g. {checkpoint: /shared/ckpt} (model_options.checkpoint=DIR
    sets one); recorded with the run, with the sha256 of the files they name."""
    obs: Literal["state", "pixels"] = "state"
    """What the 'auto' model sees: env states, or rendered frames (a visual model, trained on data with frames);
    'pixels' with a checkpoint of a state model is an error."""
    data: str = ""
    """Data set (default data/TASK.parquet, or data/TASK-pixels.parquet): trains the 'auto' model, and holds the
    held-out trajectories of tasks whose goals replay data."""
    encoder: str = ""
    """A user encoder, package.module:factory, that the model's checkpoint names: code named in a checkpoint runs
    only when it is named here too."""
    proprio_weight: float = 0.0
    """Weight of the proprio term in the planning cost (DINO-WM's alpha: latent MSE + alpha x MSE of the simulator's
    proprioceptive state), for a model of pictures trained with proprio (wmplan train --obs pixels --proprio); 0: off.
    A nonzero weight with a model trained without proprio is an error. Labelled in results tables where it is on."""
    goal_mode: str = ""
    """How start/goal pairs are drawn: one of the task's goal modes (replay: goals H model steps away, reached by
    replaying held-out data, so a longer horizon is a harder problem; door, on Wall: replayed pairs on opposite sides
    of the wall, the straight line blocked); empty: the task's default."""
    seed: int = 0
    """Seed of the episodes (start/goal pairs) and of the planners; a study's held-out pairs use seed + 1000003."""
    actors: int = 2
    """Ray actors, each holding one model replica (and one GPU when the cluster has GPUs)."""
    batch_size: int = 25
    """Episodes per actor call, planned as one batched planner call."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where episodes are planned: 'auto' uses a GPU per actor when the cluster (or this machine) has GPUs."""
    address: str = ""
    """Ray cluster address; empty: the RAY_ADDRESS variable, or else a local Ray started for the run."""
    output: str = "runs"
    """Directory of the results (each run's Parquet tables in its own folder)."""
    tracking: bool = True
    """Record in MLflow (MLFLOW_TRACKING_URI, else mlflow.db and mlartifacts/ in the working directory)."""

    def __post_init__(self) -> None:
        from wmplan.platform.registry import task_class

        task = task_class(self.task)  # an unknown task fails here
        if self.goal_mode and self.goal_mode not in task.goal_modes:
            raise unknown_name_error("goal mode", self.goal_mode, task.goal_modes, where=f"for task {self.task!r}")
        if self.obs not in OBS:
            raise unknown_name_error("obs", self.obs, OBS)
        require(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        require(self.actors >= 1, f"actors must be >= 1, got {self.actors}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(isinstance(self.model_options, Mapping) and all(isinstance(k, str) for k in self.model_options),
                f"model_options must map option names to values, got {self.model_options!r}")
        require(math.isfinite(self.proprio_weight) and self.proprio_weight >= 0,
                f"proprio_weight must be finite and >= 0, got {self.proprio_weight}")
        if self.proprio_weight and (self.model_is_plugin or self.model_is_exact):
            raise ConfigError(f"proprio_weight={self.proprio_weight:g} weighs the proprio of a checkpoint trained with proprio "
                              f"('wmplan train --obs pixels --proprio'); model {self.model!r} is not one: set proprio_weight=0")
        if self.model_is_plugin:
            self.check_model()  # the factory is imported and checked here; each actor calls it
        elif self.model_is_exact:
            self.check_model()
        elif self.model_options:
            what = "the auto model" if self.model == "auto" else f"the checkpoint {self.model!r}"
            raise ConfigError(f"model_options are the options of a plug-in model (model: package.module:callable); "
                              f"{what} takes none")

    @property
    def goal_mode_used(self) -> str:
        """The goal mode episodes are drawn in: ``goal_mode``, else the task's default."""
        from wmplan.platform.registry import task_class

        return self.goal_mode or task_class(self.task).default_goal_mode

    def derive(self, cls: type[S], **changes: Any) -> S:
        """A config of another command with these shared settings (and ``changes`` on top)."""
        return cls(**{**{f.name: getattr(self, f.name) for f in dataclasses.fields(Settings)}, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-compatible values (what run.json and the MLflow records hold)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def model_is_plugin(self) -> bool:
        """Whether ``model`` names a factory (``package.module:callable``, or a name registered with
        :func:`wmplan.platform.registry.register_model`) rather than a checkpoint directory or 'auto'."""
        from wmplan.platform.registry import is_model_factory

        return self.model != "auto" and is_model_factory(self.model)

    @property
    def model_is_exact(self) -> bool:
        """Whether the model is the task's own dynamics: ``model: exact``, or ``model: auto`` with ``obs: state`` on
        a task that plans with them by default (:func:`wmplan.platform.registry.default_model_is_exact`)."""
        from wmplan.platform.registry import EXACT_MODEL, default_model_is_exact, task_class

        if self.model == EXACT_MODEL:
            return True
        return self.model == "auto" and self.obs == "state" and default_model_is_exact(task_class(self.task))

    def model_arguments(self) -> dict[str, Any]:
        """What a process that plans needs to load the model (:class:`wmplan.jobs.actor.PlanActor`'s keywords):
        ``model``, 'exact' (the task's own dynamics), a plug-in spec or registered name, or else the checkpoint
        directory made absolute;
        ``model_options``, the factory's options (a value that names an existing file or directory made
        absolute, as a checkpoint's path is, since an actor need not share the driver's working directory),
        or the checkpoint loader's (the code the user named, and a nonzero ``proprio_weight``); and ``factory``, for a registered name its
        factory (pickled to the actors, which do not share the driver's registrations), else None."""
        from wmplan.platform.registry import EXACT_MODEL, is_plugin_spec, model_factory

        if self.model_is_exact:
            return {"model": EXACT_MODEL, "model_options": {}, "factory": None}
        if self.model_is_plugin:
            factory = None if is_plugin_spec(self.model) else model_factory(self.model, options=self.model_options)
            options = {k: str(Path(v).resolve()) if isinstance(v, str) and v and os.path.exists(v) else v
                       for k, v in self.model_options.items()}
            return {"model": self.model, "model_options": options, "factory": factory}
        loader: dict[str, Any] = {"allow_code": self.allowed_code}
        if self.proprio_weight:
            loader["proprio_weight"] = self.proprio_weight
        return {"model": str(self.checkpoint.resolve()), "model_options": loader, "factory": None}

    def model_sha256(self) -> str | None:
        """What identifies the model's weights in run.json, MLflow and a sweep's sweep.json: the checkpoint's
        sha256 (from its config.json), or for a plug-in model the sha256 of the files its options name
        (:func:`files_sha256`; None when no option names an existing file or directory, and for the task's exact
        dynamics, which have no weights but the task's)."""
        if self.model_is_exact:
            return None
        if self.model_is_plugin:
            return files_sha256(self.model_options)
        from wmplan.platform.models import read_checkpoint_info

        sha: str | None = read_checkpoint_info(self.checkpoint).get("sha256")
        return sha

    def model_training(self) -> dict[str, Any] | None:
        """What the checkpoint cost to build (:func:`wmplan.platform.models.training_summary`: kind, training
        seconds including any rounds, rounds, members); None for a plug-in model or the task's exact dynamics."""
        if self.model_is_exact or self.model_is_plugin:
            return None
        from wmplan.platform.models import read_checkpoint_info, training_summary

        return training_summary(read_checkpoint_info(self.checkpoint))

    def model_label(self) -> str:
        """The model in one line for tables: the checkpoint's path (with ' (auto)'), the plug-in's spec and options, or
        the task's exact dynamics."""
        if self.model_is_exact:
            return f"exact dynamics of task {self.task}" + (" (auto)" if self.model == "auto" else "")
        if self.model_is_plugin:
            options = ", ".join(f"{k}={v}" for k, v in self.model_options.items())
            return f"{self.model}" + (f" ({options})" if options else "")
        proprio = f" (proprio alpha {self.proprio_weight:g})" if self.proprio_weight else ""
        return self.checkpoint.as_posix() + (" (auto)" if self.model == "auto" else "") + proprio

    @property
    def checkpoint(self) -> Path:
        from wmplan.platform.workflow import default_checkpoint

        return default_checkpoint(self.task, obs=self.obs) if self.model == "auto" else Path(self.model)

    @property
    def data_path(self) -> Path:
        from wmplan.platform.workflow import default_data_path

        return Path(self.data) if self.data else default_data_path(self.task, obs=self.obs)

    @property
    def allowed_code(self) -> tuple[str, ...]:
        """The ``package.module:callable`` code the user named, which a checkpoint may ask to run."""
        return (self.encoder,) if self.encoder else ()

    def prepare_model(self, progress: Callable[[str], None] | None = None) -> None:
        """Make sure the checkpoint exists: with ``model: auto``, generate the data and train it
        (a visual model for ``obs: pixels``) when missing; an existing checkpoint is only checked, and a
        plug-in model's factory only resolved (it is loaded in each actor); the task's exact dynamics need nothing."""
        from wmplan.platform.workflow import prepare_model

        if self.model_is_plugin or self.model_is_exact:
            self.check_model()
            return
        prepare_model(self.task, data_path=self.data_path, checkpoint=self.checkpoint, obs=self.obs, progress=progress)
        self.check_model()

    def check_model(self) -> None:
        """Check that the checkpoint exists, fits the task (state and action sizes, frameskip, what it sees) and
        names no code the user did not name, without loading its weights or running anything. The task's exact
        dynamics are checked to exist (and to take no options, and plan on states). A plug-in model is
        checked by resolving its factory (:func:`wmplan.platform.registry.model_factory`: the module imports, the
        callable takes ``device`` and ``model_options``), not by calling it: the model may need a GPU the driver
        does not have.

        Raises:
            ConfigError: there is no checkpoint, or the plug-in does not resolve.
            CheckpointError: naming the mismatch.
        """
        from wmplan.platform.models import (
            check_checkpoint_code,
            check_checkpoint_task,
            read_checkpoint_info,
        )
        from wmplan.platform.registry import EXACT_MODEL, has_exact_model, make_task, model_factory, task_class

        if self.model_is_plugin:
            model_factory(self.model, options=self.model_options)
            return
        if self.model_is_exact:
            if not has_exact_model(task_class(self.task)):
                raise ConfigError(f"model {EXACT_MODEL!r} is the task's own dynamics, but task {self.task!r} has none "
                                  "(its Env has no exact_model); give a checkpoint, a plug-in or model: auto")
            if self.obs != "state":
                raise ConfigError(f"model {EXACT_MODEL!r} plans on the task's states; it cannot see pixels (obs: state)")
            if self.model_options:
                raise ConfigError(f"model {EXACT_MODEL!r} (the task's own dynamics) takes no model_options")
            return

        if not (self.checkpoint / "config.json").exists():
            raise ConfigError(f"model checkpoint {str(self.checkpoint)!r} does not exist (no config.json there); "
                              f"train one with 'wmplan train --env {self.task}' or use model: auto")
        info = read_checkpoint_info(self.checkpoint)
        where = repr(str(self.checkpoint))
        env = make_task(self.task)
        check_checkpoint_task(info, task=self.task, state_dim=env.state_dim, action_dim=env.action_dim,
                              frameskip=env.frameskip, obs="pixels" if self.obs == "pixels" else None, where=where)
        check_checkpoint_code(info, allow_code=self.allowed_code, where=where)
        if self.proprio_weight and not int(info.get("config", {}).get("proprio_dim", 0)):
            raise ConfigError(f"proprio_weight={self.proprio_weight:g} needs a model trained with proprio ('wmplan train --obs pixels "
                              f"--proprio'), but checkpoint {where} was trained without it; set proprio_weight=0 or retrain")


def files_sha256(options: Mapping[str, Any]) -> str | None:
    """The sha256 of the files that ``options`` name, or None when no value names one.

    Each string value that is the path of an existing file or directory (relative to the working
    directory) counts: a file with its bytes, a directory with every file under it. The hash is the
    sha256 of the UTF-8 lines ``OPTION<TAB>RELATIVE_PATH<TAB>SHA256_OF_BYTES\n`` (a file's relative
    path is ``.``; a directory's files in sorted order of their ``/``-separated paths), in option order.
    """
    lines = []
    for name, value in options.items():
        if not isinstance(value, str) or not value or not os.path.exists(value):
            continue
        root = Path(value)
        files = [root] if root.is_file() else sorted((p for p in root.rglob("*") if p.is_file()),
                                                     key=lambda p: p.relative_to(root).as_posix())
        for path in files:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            relative = "." if path == root else path.relative_to(root).as_posix()
            lines.append(f"{name}\t{relative}\t{digest.hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest() if lines else None


def _options_value(current: Any, option: str | None, text: str, key: str, owner: str) -> dict[str, Any]:
    """A mapping of options (:data:`BY_OPTION`) after ``FIELD.OPTION=text`` (one option, read as YAML) or
    ``FIELD=text`` (the whole mapping, a YAML mapping; empty: none)."""
    import yaml

    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    if option is not None:
        return {**dict(current or {}), option: value if text.strip() else text}
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{owner}: {key} takes a mapping, e.g. {key}='{{checkpoint: DIR}}' (or one option: "
                          f"{key}.NAME=VALUE), got {text!r}")
    return {str(k): v for k, v in value.items()}


# -- the grammar ---------------------------------------------------------------------------------------


def _what(cls: type) -> str:
    return str(getattr(cls, "WHAT", cls.__name__))


def _scalar(annotation: Any, text: str, key: str, owner: str) -> Any:
    """``text`` read as one item of a list field (int, float or str)."""
    if annotation in (int, float):
        try:
            return annotation(text)
        except ValueError:
            kind = "integers" if annotation is int else "numbers"
            raise ConfigError(f"{owner}: {key} must be comma-separated {kind}, got {text!r}") from None
    return text


def _planner_option(cls: type, name: str, rest: str, text: str, out: dict[str, Any], owner: str) -> None:
    """``NAME.PLANNER.OPTION=text`` (options) or ``NAME.PLANNER=text`` (an item) in a mapping of planners."""
    from wmplan.platform.planners import planner_class

    value_type = typing.get_args(typing.get_type_hints(cls)[name])[1]
    if typing.get_origin(value_type) in (list, tuple):
        planner_class(rest)  # an unknown planner fails here
        entries = out.setdefault(name, {})
        entries[rest] = [*entries.get(rest, []), text]
        return
    planner, _, option = rest.rpartition(".")
    if not planner or not option:
        raise ConfigError(f"{owner}: planner options are set as {name}.PLANNER.OPTION=VALUE, got {name}.{rest}={text}")
    options = planner_class(planner).Options
    out.setdefault(name, {}).setdefault(planner, {})[option] = parse_value(options, option, text, owner=f"planner {planner!r}")


def _prune(cls: type, out: dict[str, Any]) -> None:
    """Keep in every mapping of planners only the planners that ``planners`` names (their options go with them)."""
    names = list(out["planners"])
    for f in dataclasses.fields(cls):
        if f.metadata.get("keys") == "planner" and isinstance(out.get(f.name), Mapping):
            out[f.name] = {p: out[f.name].get(p, {}) for p in names} if f.name == "planners" else {
                p: v for p, v in out[f.name].items() if p in names}


def apply_overrides(cls: type, values: Mapping[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """``values`` (a copy) with the ``KEY=VALUE`` ``items`` applied in order, typed by the fields of ``cls``.

    Raises:
        ConfigError: an item that is not ``KEY=VALUE``, an unknown key or planner option (with the
            closest valid name), or a value that does not read as the field's type.
    """
    out = copy.deepcopy(dict(values))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    aliases: Mapping[str, str] = getattr(cls, "ALIASES", {})
    owner = _what(cls)
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        name, dot, rest = key.partition(".")
        name = aliases.get(name, name)
        if name not in fields:
            mappings = [f"{n}.PLANNER={'ITEM' if typing.get_origin(typing.get_args(hints[n])[1]) in (list, tuple) else '...'}"
                        for n, f in fields.items() if f.metadata.get("keys") == "planner"]
            hint = f" (by planner: {', '.join(mappings)})".replace("=...", ".OPTION=VALUE") if dot and mappings else ""
            raise unknown_name_error("key", name, fields, where=f"for {owner}{hint}")
        annotation, origin = hints[name], typing.get_origin(hints[name])
        if fields[name].metadata.get("keys") == "option":
            out[name] = _options_value(out.get(name), rest if dot else None, text, name, owner)
        elif dot:
            if fields[name].metadata.get("keys") != "planner":
                raise ConfigError(f"{owner}: {name!r} has no parts to set; give {name}=VALUE, got {item!r}")
            out.setdefault(name, _default(fields[name]))  # the default planners stay
            _planner_option(cls, name, rest, text, out, owner)
        elif fields[name].metadata.get("one_per_item"):
            out[name] = [*out.get(name, ()), text]
        elif origin in (list, tuple):
            out[name] = [_scalar(typing.get_args(annotation)[0], part.strip(), name, owner)
                         for part in text.split(",") if part.strip()]
        elif origin is dict:
            current = out.get(name, _default(fields[name]))
            out[name] = {n.strip(): current.get(n.strip(), {}) for n in text.split(",") if n.strip()}
        else:
            out[name] = parse_value(cls, name, text, owner=owner, item="key")
        if name == "planners":
            _prune(cls, out)
    for name in fields:  # a tuple field read from a file or set item by item
        if typing.get_origin(hints[name]) is tuple and isinstance(out.get(name), list):
            out[name] = tuple(out[name])
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a YAML (or ``.toml``) config file holds.

    Raises:
        ConfigError: the file is missing, is not UTF-8 text, does not parse, or holds no mapping.
    """
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist" if not path.exists() else f"config {str(path)!r} is not a file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          f"give a YAML or TOML file") from None
    if "\x00" in text:
        raise ConfigError(f"config file {str(path)!r} is binary (it holds NUL bytes); give a YAML or TOML file")
    try:
        if path.suffix == ".toml":
            if sys.version_info < (3, 11):
                raise ConfigError(f"config file {str(path)!r}: TOML needs Python 3.11 or later (tomllib); give a YAML file")
            data = importlib.import_module("tomllib").loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"config file {str(path)!r} cannot be parsed: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, got {type(data).__name__}")
    return data


def load(cls: type[C], path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (), *,
         defaults: Mapping[str, Any] | None = None) -> C:
    """The validated config ``cls`` from ``defaults``, then a YAML or TOML file's keys, then ``overrides``."""
    aliases: Mapping[str, str] = getattr(cls, "ALIASES", {})
    values = {**(defaults or {}), **{aliases.get(k, k): v for k, v in (read_config_file(Path(path)) if path else {}).items()}}
    return build_options(cls, apply_overrides(cls, values, overrides), owner=_what(cls), item="key")


# -- the flags -----------------------------------------------------------------------------------------


def _default(f: dataclasses.Field[Any]) -> Any:
    """The field's default (dataclasses.MISSING for a field that has none)."""
    if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return ",".join(value) or "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return repr(value) if value == "" else str(value)


def add_flags(parser: argparse.ArgumentParser, cls: type, *, aliases: Mapping[str, Sequence[str]] | None = None,
              defaults: Mapping[str, Any] | None = None) -> None:
    """Add one ``--flag`` per field of ``cls`` (its docstring and default as help) and ``--set``.

    A flag's value is read by :func:`apply_overrides` as ``FIELD=VALUE``; a bool is ``--flag`` or
    ``--no-flag``. ``aliases`` gives fields further flag names; ``defaults`` the command's own defaults
    (shown in the help; :func:`config_from_args` applies them).
    """
    docs = option_docs(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{_what(cls)} (each also --set KEY=VALUE)")
    old = {new: f"--{old.replace('_', '-')}" for old, new in getattr(cls, "ALIASES", {}).items()}
    for f in dataclasses.fields(cls):
        names = [f"--{f.name.replace('_', '-')}", *(aliases or {}).get(f.name, ()), *([old[f.name]] if f.name in old else [])]
        default = (defaults or {}).get(f.name, _default(f))
        shown = "required" if default is dataclasses.MISSING else f"default: {_shown(default)}"
        text = f"{docs.get(f.name, '')} ({shown})".replace("%", "%%")
        kind: dict[str, Any] = {"metavar": f.name.upper(), "required": default is dataclasses.MISSING}
        if hints[f.name] is bool:
            kind = {"action": argparse.BooleanOptionalAction}
        elif f.metadata.get("one_per_item"):
            kind = {"action": "append", "metavar": "ITEM"}
        elif typing.get_origin(hints[f.name]) is Literal:
            kind = {"choices": typing.get_args(hints[f.name])}
        group.add_argument(*names, dest=f"field_{f.name}", default=None, help=text, **kind)
    parser.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key (repeatable), e.g. horizons=5,10 or planners.grasp.iterations=30")


def flag_overrides(cls: type, args: argparse.Namespace) -> list[str]:
    """The ``FIELD=VALUE`` items of the flags given (by :func:`add_flags`), in field order."""
    items = []
    for f in dataclasses.fields(cls):
        value = getattr(args, f"field_{f.name}", None)
        for one in value if isinstance(value, list) else [] if value is None else [value]:
            items.append(f"{f.name}={str(one).lower() if isinstance(one, bool) else one}")
    return items


def config_from_args(cls: type[C], args: argparse.Namespace, path: str | os.PathLike[str] | None = None, *,
                     defaults: Mapping[str, Any] | None = None) -> C:
    """The config of a command: ``defaults``, the config file ``path``, the flags given, then ``--set``."""
    return load(cls, path, [*flag_overrides(cls, args), *args.set], defaults=defaults)
