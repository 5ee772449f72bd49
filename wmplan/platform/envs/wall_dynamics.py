"""Wall's own dynamics in torch: :func:`~wmplan.platform.envs.wall.wall_step` as a world model.

``model: exact`` on Wall plans with :class:`WallDynamics`: the simulator's step, not a learned
approximation of it. What a planner reaches with it is that planner's ceiling on Wall (no model
error is left), the measurement that tells a model's shortfall from a planner's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wmplan.platform.envs.wall_geometry import (
    _BIG,
    ACTION_BOUND,
    DOOR_HALF_HEIGHT,
    NUDGE,
    POS_HI,
    POS_LO,
    STEP_SCALE,
    WALL_HALF_WIDTH,
)

__all__ = ["WallDynamics", "wall_step_torch"]


def _slab_torch(p: Tensor, d: Tensor, lo: Tensor | float, hi: Tensor | float) -> tuple[Tensor, Tensor]:
    """:func:`wmplan.platform.envs.wall._slab` in torch (no division by a zero step: its quotient is replaced, not used)."""
    moving = d != 0
    safe = torch.where(moving, d, torch.ones_like(d))
    t1, t2 = (lo - p) / safe, (hi - p) / safe
    strictly_in = (p > lo) & (p < hi)
    inf = torch.full_like(p, math.inf)
    t_in = torch.where(moving, torch.minimum(t1, t2), torch.where(strictly_in, -inf, inf))
    t_out = torch.where(moving, torch.maximum(t1, t2), torch.where(strictly_in, inf, -inf))
    return t_in, t_out


def wall_step_torch(pos: Tensor, action: Tensor, wall_x: float = 32.0, door_y: float = 30.0) -> Tensor:
    """:func:`wall_step` in torch: positions ``[..., 2]`` and actions ``[..., 2]`` to positions ``[..., 2]``.

    The same arithmetic (equal to :func:`wall_step` in float64 on valid starts), differentiable almost
    everywhere: a free step moves by ``2 a``, a blocked one stops ``0.5`` px off the face it hit, which
    depends on the action through the contact time. Starts are clipped to the room but not pushed out
    of the wall (a model's states are free positions).
    """
    wl, wr = wall_x - WALL_HALF_WIDTH, wall_x + WALL_HALF_WIDTH
    db, dt = door_y - DOOR_HALF_HEIGHT, door_y + DOOR_HALF_HEIGHT
    p = pos.clamp(POS_LO, POS_HI)
    d = (p + STEP_SCALE * action).clamp(POS_LO, POS_HI) - p
    tx_in, tx_out = _slab_torch(p[..., 0], d[..., 0], wl, wr)
    t_hit = torch.full_like(tx_in, math.inf)
    hit_x_face = torch.zeros_like(tx_in, dtype=torch.bool)
    for ylo, yhi in ((-_BIG, db), (dt, _BIG)):
        ty_in, ty_out = _slab_torch(p[..., 1], d[..., 1], ylo, yhi)
        t_in, t_out = torch.maximum(tx_in, ty_in), torch.minimum(tx_out, ty_out)
        hit = (t_in < t_out) & (t_out > 0) & (t_in <= 1)
        t = t_in.clamp_min(0.0)
        first = hit & (t < t_hit)
        t_hit = torch.where(first, t, t_hit)
        hit_x_face = torch.where(first, tx_in >= ty_in, hit_x_face)
    blocked = torch.isfinite(t_hit)
    d_perp = torch.where(hit_x_face, d[..., 0], d[..., 1]).abs()
    moves = blocked & (d_perp > 0)  # a step that hits a face it does not move toward stays at its start (t_back 0)
    t_back = (torch.where(moves, t_hit, 0.0) - NUDGE / torch.where(moves, d_perp, 1.0)).clamp_min(0.0)
    t = torch.where(blocked, t_back, 1.0)
    return (p + t[..., None] * d).clamp(POS_LO, POS_HI)


class WallDynamics(nn.Module):
    """Wall's own dynamics as a world model (``model: exact`` on Wall): :func:`wall_step_torch` applied
    ``frameskip`` times per model step, in float64.

    Implements :class:`~wmplan.platform.world_model.WorldModel` like a learned state model of Wall: packed
    actions ``[..., 2 * frameskip]`` within ``[-1.8, 1.8]``, and states normalised to unit scale
    (``z = (s - 32) / (55 / sqrt 12)``, the room's uniform distribution; :meth:`encode` / :meth:`decode`), so
    planners' learning rates and terminal costs mean on it what they mean on a learned model. What a
    planner reaches with it is that planner's ceiling on Wall: no model error is left.
    """

    observation = "state"
    action_low: Tensor
    action_high: Tensor
    state_mean: Tensor
    state_std: Tensor

    def __init__(self, *, wall_x: float = 32.0, door_y: float = 30.0, frameskip: int = 5) -> None:
        super().__init__()
        self.wall_x, self.door_y, self.frameskip = float(wall_x), float(door_y), int(frameskip)
        self.state_dim, self.action_dim = 2, 2 * self.frameskip
        self.register_buffer("action_low", torch.full((self.action_dim,), -ACTION_BOUND))
        self.register_buffer("action_high", torch.full((self.action_dim,), ACTION_BOUND))
        self.register_buffer("state_mean", torch.full((2,), (POS_LO + POS_HI) / 2))
        self.register_buffer("state_std", torch.full((2,), (POS_HI - POS_LO) / math.sqrt(12.0)))

    def encode(self, env_state: Tensor) -> Tensor:
        """Env positions ``[..., 2]`` (px) to model states ``[..., 2]``."""
        env_state = torch.as_tensor(env_state, dtype=self.state_mean.dtype, device=self.state_mean.device)
        return (env_state - self.state_mean) / self.state_std

    def decode(self, z: Tensor) -> Tensor:
        """Model states ``[..., 2]`` to env positions ``[..., 2]`` (px)."""
        return self.state_mean + self.state_std * z

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """``frameskip`` env steps: ``state [..., 2]`` (model space), ``action [..., 2 * frameskip]`` (env units)."""
        pos = self.decode(state).double()
        env_actions = action.double().reshape(*action.shape[:-1], self.frameskip, 2)
        for k in range(self.frameskip):
            pos = wall_step_torch(pos, env_actions[..., k, :], self.wall_x, self.door_y)
        return self.encode(pos.to(state.dtype))
