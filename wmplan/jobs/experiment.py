"""The description of an experiment run: a frozen, validated config read from YAML or TOML.

Everything is checked before anything starts (no Ray, no tracking): an unknown key, task, planner
or planner option, a bad value, or a missing checkpoint is a :class:`ConfigError` naming it. The
settings shared with studies and sweeps (task, model, actors, output, ...) are
:class:`wmplan.config.Settings`; the ``--set`` grammar is :func:`wmplan.config.apply_overrides`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from wmplan.config import BY_PLANNER, Settings, load
from wmplan.platform.episode import snapshot_schedule
from wmplan.platform.errors import ConfigError
from wmplan.platform.options import require
from wmplan.platform.planners import fit_budget, make_planner, planner_class

__all__ = ["ExperimentConfig", "load_config"]


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig(Settings):
    """One experiment: a task, a world model, planners with their options, horizons and episodes."""

    WHAT: ClassVar[str] = "experiment config"

    name: str = "wmplan"
    """Experiment name (the MLflow experiment the run is recorded under)."""
    planners: dict[str, dict[str, Any]] = field(default_factory=lambda: {"cem": {}, "gd": {}, "grasp": {}}, metadata=BY_PLANNER)
    """Planners, each with its options (horizon is set per run from 'horizons'): a built-in or registered name, or
    package.module:Class."""
    horizons: list[int] = field(default_factory=lambda: [5])
    """Horizons in model steps (one model step = the task's frameskip in env steps, 5 for wmplan's tasks)."""
    episodes: int = 50
    """Episodes per planner and horizon; every planner sees the same start/goal pairs."""
    mode: Literal["open_loop", "mpc"] = "open_loop"
    """Execution: open loop, or MPC with a fixed replan budget."""
    replan_every: int = 1
    """Model steps executed between MPC replans."""
    executor: Literal["ray", "local"] = "ray"
    """Where the episodes are planned: 'ray', on a pool of Ray actors; 'local', in this process by the same actor
    class, one batch after another (no Ray; actors and address are not used)."""
    max_attempts: int = 3
    """Tries per batch when actors die under it."""
    snapshots: int = 20
    """Open loop: also execute the plan after this many evenly spaced iterations (success against budget, and time
    to success: the first snapshot whose plan succeeds; 20: every 5% of the budget; 0: off)."""
    budget: int = 0
    """Model transitions per planner call (forward, plus backward where gradients are taken), the same for every
    planner: each planner's iterations are fitted to it (GRASP's end on a sync); 0: the iterations its options give."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(isinstance(self.planners, Mapping) and bool(self.planners),
                f"planners must map at least one planner name to its options, got {self.planners!r}")
        require(isinstance(self.horizons, list) and bool(self.horizons) and all(isinstance(h, int) and h >= 1 for h in self.horizons),
                f"horizons must be a non-empty list of integers >= 1, got {self.horizons}")
        require(len(set(self.horizons)) == len(self.horizons), f"horizons must not repeat, got {self.horizons}")
        require(self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}")
        require(self.replan_every >= 1, f"replan_every must be >= 1, got {self.replan_every}")
        require(self.max_attempts >= 1, f"max_attempts must be >= 1, got {self.max_attempts}")
        require(self.snapshots >= 0, f"snapshots must be >= 0, got {self.snapshots}")
        require(self.budget >= 0, f"budget must be >= 0 (0: none), got {self.budget}")
        require(self.executor in ("ray", "local"), f"executor must be ray or local, got {self.executor!r}")
        for name, options in self.planners.items():
            planner_class(name)
            if not isinstance(options, Mapping):
                raise ConfigError(f"planners.{name} must be a mapping of options, got {options!r}")
            if "horizon" in options:
                raise ConfigError(f"planners.{name}: set horizons with the top-level 'horizons' list, not per planner")
            for h in self.horizons:
                make_planner(name, horizon=h, **self.planner_options(name, h))  # every option (and the budget) checked now

    def planner_options(self, planner: str, horizon: int) -> dict[str, Any]:
        """The options ``planner`` runs with at ``horizon``: the config's, with the iterations fitted to the budget."""
        options = dict(self.planners[planner])
        if self.budget:
            options = fit_budget(planner, options, horizon=horizon, budget=self.budget)
        return options

    def snapshot_iterations(self, planner: str, horizon: int) -> list[int]:
        """The planner iterations after which an open-loop plan is also executed."""
        if self.mode != "open_loop" or self.snapshots == 0:
            return []
        return snapshot_schedule(make_planner(planner, horizon=horizon, **self.planner_options(planner, horizon)).options.iterations,
                                 self.snapshots)


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), *, check_model: bool = True) -> ExperimentConfig:
    """Read, override (``--set`` items, :func:`wmplan.config.apply_overrides`) and validate an experiment
    config (no file: the defaults). With ``check_model``, a checkpoint other than 'auto' must exist and fit."""
    config = load(ExperimentConfig, path, list(overrides))
    if check_model and config.model != "auto":
        config.check_model()
    return config
