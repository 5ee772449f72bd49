"""The Wall room's geometry and step size, shared by its simulator (:mod:`~wmplan.platform.envs.wall`) and its
torch dynamics (:mod:`~wmplan.platform.envs.wall_dynamics`); positions are in pixels of DINO-WM's 65x65 image."""

from __future__ import annotations

__all__ = ["BORDER_LO", "BORDER_HI", "NUDGE", "POS_LO", "POS_HI", "WALL_HALF_WIDTH", "DOOR_HALF_HEIGHT", "STEP_SCALE",
           "ACTION_BOUND"]

BORDER_LO, BORDER_HI = 4.0, 60.0
"""Rows/columns of the border walls."""
NUDGE = 0.5
"""How far a blocked dot is set back off the face it hit (and off the borders)."""
POS_LO, POS_HI = BORDER_LO + NUDGE, BORDER_HI - NUDGE
"""The box the dot is kept in."""
WALL_HALF_WIDTH = 3.0
"""The wall covers ``|x - wall_x| <= 3`` (DINO-WM: ``wall_width // 2`` with width 6)."""
DOOR_HALF_HEIGHT = 4.0
"""The door covers ``|y - door_y| <= 4`` (DINO-WM: ``door_space``)."""
STEP_SCALE = 2.0
"""``p' = p + 2 * action``."""
ACTION_BOUND = 1.8
"""Env actions are clipped to ``[-1.8, 1.8]^2`` (the largest step length in DINO-WM's data)."""
_BIG = 1e9  # the wall blocks extend to +-_BIG in y; the path never leaves the border box
