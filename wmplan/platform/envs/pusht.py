"""Push-T on pymunk, with the physics of gym-pusht / diffusion policy and DINO-WM's conventions.

Written directly on ``pymunk`` (6.x) rather than through ``gym-pusht``, whose OpenCV and pygame
need a display library; the physics is the same:

- a 512x512 world, gravity 0, ``space.damping = 0`` (quasi-static: a body stops when nothing
  pushes it), four static border segments ``(5, 5)-(506, 506)`` of radius 2;
- the agent: a kinematic circle of radius 15 driven by a PD controller (``kp = 100``, ``kv = 20``)
  towards a target, 10 physics substeps of 0.01 s per env step (10 Hz control);
- the block: a T of two 30-px-thick boxes (a 120x30 bar and a 30x90 stem), mass 1, centre of
  gravity at the midpoint of the two boxes' centroids (body-local ``(0, 45)``), moment of inertia
  as gym-pusht computes it (twice the bar's); all shapes have pymunk's default friction 0.

DINO-WM conventions: state ``[agent_x, agent_y, block_x, block_y, block_angle, agent_vx, agent_vy]``
with the angle in ``[0, 2 pi)``; **relative actions**: ``step(a)`` drives the agent towards
``agent_position + 100 * a`` (clipped to the window ``[0, 512]^2``), where ``a`` is the raw
(un-normalised) relative action, clipped to ``[-1, 1]^2``. DINO-WM's models see actions
normalised with :data:`ACTION_MEAN` and :data:`ACTION_STD` (see :func:`normalize_action`).

Resetting to a state sets the block's angle *before* its position: pymunk rotates a body about
its centre of gravity, which is not the T's origin, so setting the angle last would move the
block (gym-pusht's order). The space is rebuilt on every reset and, unlike DINO-WM's
``_set_state``, no physics step is taken afterwards, so ``reset(state=s)`` returns exactly ``s``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from wmplan.platform.envs.base import Env, PixelRecipe, Policy, _as_batch, _result, downsample, supersample_grid

__all__ = [
    "PushTEnv",
    "ACTION_MEAN",
    "ACTION_STD",
    "ACTION_SCALE",
    "normalize_action",
    "denormalize_action",
    "T_BAR",
    "T_STEM",
]

WINDOW = 512.0
"""Side of the world (and of gym-pusht's window), in pixels."""
ACTION_SCALE = 100.0
"""Relative actions: PD target = agent position + 100 * action."""
ACTION_MEAN = np.array([-0.0087, 0.0068])
"""Mean of DINO-WM's Push-T relative actions (its normalisation statistics)."""
ACTION_STD = np.array([0.2019, 0.2002])
"""Standard deviation of DINO-WM's Push-T relative actions."""
K_P, K_V = 100.0, 20.0
"""PD gains of the agent's controller."""
DT = 0.01
"""Physics substep, seconds."""
SUBSTEPS = 10
"""Physics substeps per env step (10 Hz control)."""
AGENT_RADIUS = 15.0
"""Radius of the agent's circle."""
_SCALE, _LENGTH = 30.0, 4.0
_HALF_BAR = _LENGTH * _SCALE / 2  # 60
T_BAR = np.array([(-_HALF_BAR, _SCALE), (_HALF_BAR, _SCALE), (_HALF_BAR, 0.0), (-_HALF_BAR, 0.0)])
"""Body-local vertices of the T's bar (gym-pusht's ``vertices1``)."""
_TOP = _LENGTH * _SCALE  # 120
T_STEM = np.array([(-_SCALE / 2, _SCALE), (-_SCALE / 2, _TOP), (_SCALE / 2, _TOP), (_SCALE / 2, _SCALE)])
"""Body-local vertices of the T's stem (gym-pusht's ``vertices2``)."""
WALLS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))
"""End points of the four static border segments (radius 2)."""
WALL_RADIUS = 2.0
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
"""gym-pusht's fixed target region, drawn in green in its pictures (not the planning goal)."""
POS_THRESHOLD = 20.0
"""Success: ``||goal[:4] - state[:4]|| < 20`` (agent and block positions together)."""
ANGLE_THRESHOLD = np.pi / 9
"""Success: wrapped block-angle difference ``< pi / 9``."""

# Colours of gym-pusht's pygame drawing.
_WHITE = np.array([255.0, 255.0, 255.0])
_LIGHT_GRAY = np.array([211.0, 211.0, 211.0])
_LIGHT_GREEN = np.array([144.0, 238.0, 144.0])
_SLATE_GRAY = np.array([119.0, 136.0, 153.0])
_ROYAL_BLUE = np.array([65.0, 105.0, 225.0])


def normalize_action(action: np.ndarray) -> np.ndarray:
    """Raw relative action to DINO-WM's normalised units: ``(a - ACTION_MEAN) / ACTION_STD``."""
    return (np.asarray(action) - ACTION_MEAN) / ACTION_STD


def denormalize_action(action: np.ndarray) -> np.ndarray:
    """DINO-WM's normalised action back to the raw relative action ``step`` takes."""
    return np.asarray(action) * ACTION_STD + ACTION_MEAN


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def block_polygons(x: float, y: float, angle: float) -> list[np.ndarray]:
    """World vertices of the T's two boxes for the block's body pose ``(x, y, angle)``."""
    return [_rotate(v, angle) + (x, y) for v in (T_BAR, T_STEM)]


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def agent_overlaps_block(state: np.ndarray, margin: float = 0.0) -> bool:
    """Whether the agent's circle (plus ``margin``) overlaps the T in ``state``."""
    p = np.asarray(state[:2], dtype=np.float64)
    for poly in block_polygons(state[2], state[3], state[4]):
        if _inside_convex(poly, p[None, None, 0], p[None, None, 1])[0, 0]:
            return True
        edges = [_segment_distance(p, poly[i], poly[(i + 1) % 4]) for i in range(4)]
        if min(edges) < AGENT_RADIUS + margin:
            return True
    return False


def _inside_convex(poly: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Which grid points lie in the convex polygon ``poly`` ``[V, 2]`` (either winding)."""
    pos = np.ones(gx.shape, dtype=bool)
    neg = np.ones(gx.shape, dtype=bool)
    for i in range(len(poly)):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % len(poly)]
        cross = (x1 - x0) * (gy - y0) - (y1 - y0) * (gx - x0)
        pos &= cross >= 0
        neg &= cross <= 0
    return pos | neg


class PushTEnv(Env):
    """DINO-WM's Push-T task on pymunk; see the module docstring for the physics and units."""

    name: ClassVar[str] = "pusht"
    state_dim: ClassVar[int] = 7
    success_coords: ClassVar[slice] = slice(0, 4)
    """Agent and block positions (the angle is judged apart, see :meth:`is_success`)."""
    success_threshold: ClassVar[float] = POS_THRESHOLD
    proprio_coords: ClassVar[slice | None] = slice(0, 2)
    """The agent's (pusher's) position (DINO-WM's Push-T proprio), not the block's."""
    default_goal_mode: ClassVar[str] = "replay"
    """DINO-WM's Push-T protocol: goals replay held-out data segments (random pairs are far apart)."""
    world_extent: ClassVar[tuple[float, float]] = (0.0, WINDOW)
    """:meth:`render` shows the 512x512 window, row = ``y``."""
    pixel_recipe: ClassVar[PixelRecipe] = PixelRecipe(trajectories=1000, predictor_steps=12000, kind="jepa", proprio=True)
    """1000 trajectories (DINO-WM's 1k point); the JEPA kind with the pusher's position as proprio:
    open-loop CEM 50% at H = 5 with DINO-WM's proprio weight 1 (DINO-WM at 1k trajectories: 48%);
    from pixels alone (weight 0) 3%, the visual kind 7%. ``--kind visual`` still uses the predictor
    steps (12,000: it needs more than Wall's)."""

    def __init__(self, seed: int | None = None, damping: float = 0.0, draw_target: bool = True) -> None:
        super().__init__(seed)
        self.damping = float(damping)
        self.draw_target = draw_target
        self.action_low = np.full(2, -1.0)
        self.action_high = np.full(2, 1.0)
        self._background: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
        self.space: Any = None
        self.agent: Any = None
        self.block: Any = None
        self._build()  # pymunk is imported only here, so the other tasks work without it

    def __getstate__(self) -> dict[str, Any]:
        # pymunk's own pickling restores a body's position before its centre of gravity, which
        # moves the T; pickle the state vector instead and rebuild (like reset(state=...), this
        # drops pymunk's contact cache).
        d = self.__dict__.copy()
        d.update(space=None, agent=None, block=None)
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._build()
        if self._state is not None:
            self._state = self._set_state(self._state)

    # -- physics ------------------------------------------------------------------------------------

    def _build(self) -> None:
        """A fresh space as gym-pusht's ``_setup`` makes it."""
        import pymunk as pm

        space = pm.Space()
        space.gravity = (0.0, 0.0)
        space.damping = self.damping
        space.add(*(pm.Segment(space.static_body, a, b, WALL_RADIUS) for a, b in WALLS))
        agent = pm.Body(body_type=pm.Body.KINEMATIC)
        space.add(agent, pm.Circle(agent, AGENT_RADIUS))
        bar = [tuple(v) for v in T_BAR]
        stem = [tuple(v) for v in T_STEM]
        inertia = 2 * pm.moment_for_poly(1.0, vertices=bar)  # gym-pusht uses the bar's moment twice
        block = pm.Body(1.0, inertia)
        shape1, shape2 = pm.Poly(block, bar), pm.Poly(block, stem)
        block.center_of_gravity = (shape1.center_of_gravity + shape2.center_of_gravity) / 2
        space.add(block, shape1, shape2)
        self.space, self.agent, self.block = space, agent, block

    def _read(self) -> np.ndarray:
        a, b, v = self.agent.position, self.block.position, self.agent.velocity
        return np.array([a.x, a.y, b.x, b.y, self.block.angle % (2 * np.pi), v.x, v.y], dtype=np.float64)

    def _set_state(self, state: np.ndarray) -> np.ndarray:
        self._build()
        ax, ay, bx, by, angle, vx, vy = (float(v) for v in state)
        self.agent.velocity = (vx, vy)
        self.agent.position = (ax, ay)
        self.block.angle = angle  # the angle first: see the module docstring
        self.block.position = (bx, by)
        self.block.velocity = (0.0, 0.0)
        self.block.angular_velocity = 0.0
        self.space.reindex_shapes_for_body(self.agent)
        self.space.reindex_shapes_for_body(self.block)
        out = self._read()
        out[4] = angle % (2 * np.pi)  # report the angle as given (mod 2 pi), not as read back
        return out

    def _step(self, action: np.ndarray) -> np.ndarray:
        import pymunk as pm

        pos = self.agent.position
        target = np.clip(np.array([pos.x, pos.y]) + ACTION_SCALE * action, 0.0, WINDOW)
        target_v = pm.Vec2d(float(target[0]), float(target[1]))
        for _ in range(SUBSTEPS):
            acc = K_P * (target_v - self.agent.position) + K_V * (pm.Vec2d(0, 0) - self.agent.velocity)
            self.agent.velocity += acc * DT
            self.space.step(DT)
        return self._read()

    # -- task ---------------------------------------------------------------------------------------

    def _sample_state(self, rng: np.random.Generator) -> np.ndarray:
        """DINO-WM's random state (integer positions, as its ``randint``), with zero velocity.

        Agent in ``[50, 450)^2``, block in ``[100, 400)^2``, angle ``randn * 2 pi - pi`` (stored mod
        ``2 pi``). Unlike DINO-WM, states whose agent overlaps the block are redrawn.
        """
        while True:
            agent = rng.integers(50, 450, size=2).astype(np.float64)
            block = rng.integers(100, 400, size=2).astype(np.float64)
            angle = (rng.standard_normal() * 2 * np.pi - np.pi) % (2 * np.pi)
            state = np.array([*agent, *block, angle, 0.0, 0.0])
            if not agent_overlaps_block(state):
                return state

    def is_success(self, state: np.ndarray, goal: np.ndarray) -> Any:
        """``||goal[:4] - state[:4]|| < 20`` and wrapped angle difference ``< pi / 9``."""
        s, g, single = _as_batch(state, goal)
        pos_ok = np.linalg.norm(s[:, self.success_coords] - g[:, self.success_coords], axis=-1) < POS_THRESHOLD
        diff = np.abs(s[:, 4] - g[:, 4]) % (2 * np.pi)
        angle_ok = np.minimum(diff, 2 * np.pi - diff) < ANGLE_THRESHOLD
        return _result(pos_ok & angle_ok, single)

    def data_policy(self, rng: np.random.Generator, *, steps: int) -> Policy:
        """A scripted pusher: head for a point near the block, chosen anew every few steps, plus noise.

        Random actions barely move the block (about 2% of steps); aiming at points around (and
        through) the block pushes it in varied directions (about 50%).
        """
        target = np.zeros(2)
        next_switch = [0]

        def act(state: np.ndarray, t: int) -> np.ndarray:
            if t >= next_switch[0]:
                angle = rng.uniform(-math.pi, math.pi)
                radius = rng.uniform(0.0, 70.0)
                target[:] = state[2:4] + radius * np.array([math.cos(angle), math.sin(angle)])
                next_switch[0] = t + int(rng.integers(4, 16))
            action = (target - state[:2]) / ACTION_SCALE + rng.normal(0.0, 0.1, size=2)
            return np.clip(action, self.action_low, self.action_high)

        return act

    def plot_tracks(self, states: np.ndarray) -> dict[str, np.ndarray]:
        """The agent's positions ``states[:, :2]`` and the block's ``states[:, 2:4]``."""
        states = np.asarray(states, dtype=np.float64).reshape(-1, np.shape(states)[-1])
        return {"agent": states[:, :2], "block": states[:, 2:4]}

    # -- picture ------------------------------------------------------------------------------------

    def render(self, size: int = 64) -> np.ndarray:
        """gym-pusht's picture drawn with numpy: white floor, grey borders, the green target
        region (if ``draw_target``), the slate-grey T over the blue agent; row = ``y``, column = ``x``.
        """
        assert self._state is not None, "call reset() before render()"
        if size not in self._background:
            f = max(1, -(-256 // size))
            u = supersample_grid(size, *self.world_extent, f)
            gx, gy = np.meshgrid(u, u, indexing="xy")
            bg = np.broadcast_to(_WHITE, gx.shape + (3,)).copy()
            if self.draw_target:
                for poly in block_polygons(*GOAL_POSE):
                    bg[_inside_convex(poly, gx, gy)] = _LIGHT_GREEN
            for a, b in WALLS:
                pts = np.stack([gx, gy], axis=-1)
                near = _segment_distance(pts, np.asarray(a, float), np.asarray(b, float)) <= WALL_RADIUS
                bg[near] = _LIGHT_GRAY
            self._background[size] = (gx, gy, bg, f)
        gx, gy, bg, f = self._background[size]
        img = bg.copy()
        n = gx.shape[0]
        step = WINDOW / n

        def window(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice]:
            c0, r0 = np.clip(np.floor(lo / step) - 1, 0, n).astype(int)
            c1, r1 = np.clip(np.ceil(hi / step) + 1, 0, n).astype(int)
            return slice(r0, r1), slice(c0, c1)

        ax, ay, bx, by, angle = self._state[:5]
        centre = np.array([ax, ay])
        win = window(centre - AGENT_RADIUS, centre + AGENT_RADIUS)
        img[win][(gx[win] - ax) ** 2 + (gy[win] - ay) ** 2 <= AGENT_RADIUS**2] = _ROYAL_BLUE
        for poly in block_polygons(bx, by, angle):
            win = window(poly.min(axis=0), poly.max(axis=0))
            img[win][_inside_convex(poly, gx[win], gy[win])] = _SLATE_GRAY
        return downsample(img, f)
