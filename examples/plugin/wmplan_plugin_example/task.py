"""The task: wmplan's Wall with the door low in the wall (a variant of a built-in task).

Everything the task knows lives on its :class:`~wmplan.platform.envs.Env` class: this one takes
the Wall's dynamics, success test (4.5 px), start/goal pairs (opposite sides of the wall), data
policy and pictures from :class:`~wmplan.platform.envs.wall.WallEnv`, and changes only where the
door is. Named in configs as ``task: wmplan_plugin_example.task:LowDoorWall`` (the class is its own
factory: ``LowDoorWall(**options)``).
"""

from __future__ import annotations

from typing import ClassVar

from wmplan.platform.envs.wall import WallEnv

__all__ = ["LowDoorWall", "DOOR_Y"]

DOOR_Y = 46.0
"""Row of the door's centre, in the Wall's pixel units (the built-in Wall has it at 30: the middle)."""


class LowDoorWall(WallEnv):
    """The Wall task (a dot in a 65 x 65 px room split by a wall) with its door near the bottom.

    States are the dot's position ``(x, y)`` in pixels (``y`` grows downwards in pictures), env
    actions 2-D displacements in ``[-1.8, 1.8]^2`` (the dot moves twice the action), five env
    actions per model action. A path from one side to the other must go through the door, which
    is 8 px high and centred on ``y = door_y``.

    Args:
        door_y: row of the door's centre, in pixels.
        seed: seed of the generator ``reset`` draws states from.
    """

    name: ClassVar[str] = "low_door_wall"

    def __init__(self, *, door_y: float = DOOR_Y, seed: int | None = None) -> None:
        super().__init__(wall_x=32.0, door_y=door_y, seed=seed)
