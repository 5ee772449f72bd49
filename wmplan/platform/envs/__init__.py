"""The task simulators (DINO-WM's WallSingle, PointMaze U-maze and Push-T; the analytic models as
tasks, :mod:`wmplan.platform.envs.analytic`) and :func:`make_env`.

Each simulator's heavy dependency (``mujoco`` for PointMaze, ``pymunk`` for Push-T) is imported
only when that task is built. Everything wmplan knows about a task is on its :class:`Env` class
(see :mod:`wmplan.platform.envs.base`); the rest of wmplan asks the env, or the class
:func:`wmplan.platform.registry.task_class` finds for any task name (built-in, registered or
``package.module:factory``).
"""

from __future__ import annotations

import importlib
from typing import Any

from wmplan.platform.envs.base import (
    FRAMESKIP,
    GOAL_MODES,
    Env,
    PixelRecipe,
    Policy,
    Segment,
    StartGoal,
    pack_actions,
    unpack_actions,
)
from wmplan.platform.errors import unknown_name_error

__all__ = [
    "Env", "FRAMESKIP", "GOAL_MODES", "PixelRecipe", "Policy", "Segment", "StartGoal",
    "ENV_NAMES", "DEFAULT_TASK", "DEFAULT_ANALYTIC_TASK", "make_env", "env_class", "pack_actions", "unpack_actions",
]

_BUILTIN: dict[str, str] = {
    "wall": "wmplan.platform.envs.wall:WallEnv",
    "pointmaze": "wmplan.platform.envs.pointmaze:PointMazeEnv",
    "pusht": "wmplan.platform.envs.pusht:PushTEnv",
    "linear": "wmplan.platform.envs.analytic:LinearEnv",
    "pointmass": "wmplan.platform.envs.analytic:PointMassEnv",
    "obstacles": "wmplan.platform.envs.analytic:ObstaclesEnv",
}

ENV_NAMES: tuple[str, ...] = tuple(_BUILTIN)
"""wmplan's own task names (:func:`make_env`); the registry adds registered and plug-in tasks."""

DEFAULT_TASK = "wall"
"""The task a config plans on when it names none."""

DEFAULT_ANALYTIC_TASK = "linear"
"""The analytic task (one with exact dynamics) ``wmplan demo`` plans on when it names none."""


def env_class(name: str) -> type[Env]:
    """The :class:`Env` subclass of wmplan's own task ``name`` (one of :data:`ENV_NAMES`), without building it.

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
    """
    if name not in _BUILTIN:
        raise unknown_name_error("task", name, ENV_NAMES)
    module, _, attr = _BUILTIN[name].partition(":")
    cls: type[Env] = getattr(importlib.import_module(module), attr)
    return cls


def make_env(name: str, **kwargs: Any) -> Env:
    """Build wmplan's own task simulator called ``name`` (one of :data:`ENV_NAMES`) with its keyword options.

    A user's task goes through :func:`wmplan.platform.registry.make_task`, which also takes these names.

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
    """
    return env_class(name)(**kwargs)
