"""The three task simulators (DINO-WM's WallSingle, PointMaze U-maze and Push-T) and :func:`make_env`.

Each simulator's heavy dependency (``mujoco`` for PointMaze, ``pymunk`` for Push-T) is imported
only when that task is built.
"""

from __future__ import annotations

from typing import Any

from wmplan.platform.envs.base import FRAMESKIP, Env, pack_actions, unpack_actions
from wmplan.platform.errors import unknown_name_error

__all__ = ["Env", "FRAMESKIP", "ENV_NAMES", "make_env", "pack_actions", "unpack_actions"]

ENV_NAMES = ("wall", "pointmaze", "pusht")
"""The valid task names for :func:`make_env`."""


def make_env(name: str, **kwargs: Any) -> Env:
    """Build the task simulator called ``name`` (one of :data:`ENV_NAMES`) with its keyword options.

    Raises :class:`wmplan.platform.errors.ConfigError` for an unknown name, listing the valid ones.
    """
    if name == "wall":
        from wmplan.platform.envs.wall import WallEnv

        return WallEnv(**kwargs)
    if name == "pointmaze":
        from wmplan.platform.envs.pointmaze import PointMazeEnv

        return PointMazeEnv(**kwargs)
    if name == "pusht":
        from wmplan.platform.envs.pusht import PushTEnv

        return PushTEnv(**kwargs)
    raise unknown_name_error("task", name, ENV_NAMES)
