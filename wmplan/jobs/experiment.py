"""The description of an experiment run: a frozen, validated config read from YAML or TOML.

Everything is checked before anything starts (no Ray, no tracking): an unknown key, task, planner
or planner option, a bad value, or a missing checkpoint is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from wmplan.platform.envs import DEFAULT_TASK
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import check_checkpoint_code, check_checkpoint_task, read_checkpoint_info
from wmplan.platform.options import build_options, parse_value, require
from wmplan.platform.planners import make_planner, planner_class
from wmplan.platform.registry import make_task, task_class
from wmplan.platform.workflow import default_checkpoint, default_data_path, prepare_model

__all__ = ["ExperimentConfig", "load_config", "apply_overrides", "read_config_file"]


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One experiment: a task, a world model, planners with their options, horizons and episodes."""

    name: str = "wmplan"
    """Experiment name (the MLflow experiment the run is recorded under)."""
    task: str = DEFAULT_TASK
    """Task: a built-in or registered name, or package.module:factory (a user's Env)."""
    model: str = "auto"
    """World-model checkpoint directory; 'auto': checkpoints/TASK (or checkpoints/TASK-pixels), trained first when it does not exist."""
    obs: Literal["state", "pixels"] = "state"
    """What the 'auto' model sees: env states, or rendered frames (a visual model, data with frames); 'pixels' with a
    checkpoint of a state model is an error."""
    encoder: str = ""
    """A user encoder, package.module:factory, that the model's checkpoint names: code named in a checkpoint runs only
    when it is named here too."""
    data: str = ""
    """Data set (default data/TASK.parquet, or data/TASK-pixels.parquet): trains the 'auto' model, and holds Push-T's goal segments."""
    planners: dict[str, dict[str, Any]] = field(default_factory=lambda: {"cem": {}, "gd": {}, "grasp": {}})
    """Planner name -> its options (horizon is set per run from 'horizons')."""
    horizons: list[int] = field(default_factory=lambda: [5])
    """Horizons in model steps (one model step = 5 env steps)."""
    episodes: int = 50
    """Episodes per planner and horizon; every planner sees the same start/goal pairs."""
    mode: Literal["open_loop", "mpc"] = "open_loop"
    """Execution: open loop, or MPC with a fixed replan budget."""
    replan_every: int = 1
    """Model steps executed between MPC replans."""
    seed: int = 0
    """Seed of the episodes and the planners."""
    actors: int = 2
    """Ray actors, each holding one model replica (and one GPU when the cluster has GPUs)."""
    batch_size: int = 25
    """Episodes per actor call, planned as one batched planner call."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where actors plan: 'auto' uses a GPU per actor when the cluster has GPUs."""
    output: str = "runs"
    """Directory under which each run's results directory is created."""
    address: str = ""
    """Ray cluster address; empty: the RAY_ADDRESS variable, or else a local Ray started for the run."""
    max_attempts: int = 3
    """Tries per batch when actors die under it."""
    snapshots: int = 8
    """Open loop: also execute the plan after this many evenly spaced iterations (success against budget; 0: off)."""
    tracking: bool = True
    """Record the run in MLflow (MLFLOW_TRACKING_URI, else mlflow.db and mlartifacts/ in the working directory)."""

    def __post_init__(self) -> None:
        task_class(self.task)  # an unknown task fails here
        require(isinstance(self.planners, Mapping) and bool(self.planners),
                f"planners must map at least one planner name to its options, got {self.planners!r}")
        require(isinstance(self.horizons, list) and bool(self.horizons) and all(isinstance(h, int) and h >= 1 for h in self.horizons),
                f"horizons must be a non-empty list of integers >= 1, got {self.horizons}")
        require(len(set(self.horizons)) == len(self.horizons), f"horizons must not repeat, got {self.horizons}")
        require(self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}")
        require(self.replan_every >= 1, f"replan_every must be >= 1, got {self.replan_every}")
        require(self.actors >= 1, f"actors must be >= 1, got {self.actors}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(self.max_attempts >= 1, f"max_attempts must be >= 1, got {self.max_attempts}")
        require(self.snapshots >= 0, f"snapshots must be >= 0, got {self.snapshots}")
        for name, options in self.planners.items():
            planner_class(name)
            if not isinstance(options, Mapping):
                raise ConfigError(f"planners.{name} must be a mapping of options, got {options!r}")
            if "horizon" in options:
                raise ConfigError(f"planners.{name}: set horizons with the top-level 'horizons' list, not per planner")
            for h in self.horizons:
                make_planner(name, horizon=h, **options)  # every option checked now

    def snapshot_iterations(self, planner: str, horizon: int) -> list[int]:
        """The planner iterations after which an open-loop plan is also executed."""
        if self.mode != "open_loop" or self.snapshots == 0:
            return []
        total = make_planner(planner, horizon=horizon, **self.planners[planner]).options.iterations
        n = min(self.snapshots, total)
        return sorted({max(1, round(total * (k + 1) / n)) for k in range(n)})

    @property
    def checkpoint(self) -> Path:
        return default_checkpoint(self.task, obs=self.obs) if self.model == "auto" else Path(self.model)

    @property
    def data_path(self) -> Path:
        return Path(self.data) if self.data else default_data_path(self.task, obs=self.obs)

    def prepare_model(self, progress: Callable[[str], None] | None = None) -> None:
        """Make sure the checkpoint exists: with ``model: auto``, generate the data and train it
        (a visual model for ``obs: pixels``) when missing; an existing checkpoint is only checked."""
        prepare_model(self.task, data_path=self.data_path, checkpoint=self.checkpoint, obs=self.obs, progress=progress)
        self.check_model()

    @property
    def allowed_code(self) -> tuple[str, ...]:
        """The ``package.module:callable`` code the user named, which a checkpoint may ask to run."""
        return (self.encoder,) if self.encoder else ()

    def check_model(self) -> None:
        """Check that the checkpoint fits the task (state and action sizes, frameskip, what it sees) and names no
        code the user did not name, without loading its weights or running anything.

        Raises:
            CheckpointError: naming the mismatch.
        """
        info = read_checkpoint_info(self.checkpoint)
        where = repr(str(self.checkpoint))
        env = make_task(self.task)
        check_checkpoint_task(info, task=self.task, state_dim=env.state_dim, action_dim=env.action_dim,
                              frameskip=env.frameskip, obs="pixels" if self.obs == "pixels" else None, where=where)
        check_checkpoint_code(info, allow_code=self.allowed_code, where=where)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


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
            import tomllib

            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"config file {str(path)!r} cannot be parsed: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (``planners.grasp.noise_scale=0.01`` for planner options)."""
    out = json.loads(json.dumps(values))
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        parts = key.split(".")
        if parts[0] == "planners" and len(parts) > 1:
            if len(parts) != 3:
                raise ConfigError(f"planner options are set as planners.NAME.OPTION=VALUE, got {item!r}")
            cls = planner_class(parts[1])
            out.setdefault("planners", {}).setdefault(parts[1], {})[parts[2]] = parse_value(
                cls.Options, parts[2], text, owner=f"planner {parts[1]!r}")
            continue
        if len(parts) != 1:
            raise ConfigError(f"unknown config key {key!r}")
        if key == "horizons":
            try:
                out[key] = [int(h) for h in text.split(",")]
            except ValueError:
                raise ConfigError(f"horizons must be comma-separated integers, got {text!r}") from None
        elif key == "planners":
            out[key] = {name.strip(): out.get("planners", {}).get(name.strip(), {}) for name in text.split(",") if name.strip()}
        else:
            out[key] = parse_value(ExperimentConfig, key, text, owner="experiment config", item="key")
    return out


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] = (), *, check_model: bool = True) -> ExperimentConfig:
    """Read, override and validate an experiment config (no file: the defaults).

    With ``check_model``, a checkpoint other than 'auto' must exist.
    """
    values = read_config_file(Path(path)) if path else {}
    values = apply_overrides(values, list(overrides))
    config = build_options(ExperimentConfig, values, owner="experiment config", item="key")
    if check_model and config.model != "auto" and not (config.checkpoint / "config.json").exists():
        raise ConfigError(f"model checkpoint {config.model!r} does not exist (no config.json there); "
                          f"train one with 'wmplan train --env {config.task}' or use model: auto")
    if check_model and config.model != "auto":
        config.check_model()
    return config
