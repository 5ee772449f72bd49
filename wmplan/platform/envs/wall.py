"""WallSingle: DINO-WM's ``DotWall``, a dot in a 65x65 room split by a wall with one door.

Geometry (pixel units of DINO-WM's 65x65 image; ``x`` is the column, ``y`` the row):

- border walls on rows/columns 4 and 60; the dot is kept in ``[4.5, 59.5]^2``;
- a vertical wall centred at ``wall_x`` (default 32) covering ``|x - wall_x| <= 3``, except for a
  door ``|y - door_y| <= 4`` (default ``door_y`` 30). A position is *valid* when it is inside the
  borders and not in the wall's interior ``|x - wall_x| < 3, |y - door_y| > 4`` (faces and the
  door, edges included, are free; a blocked dot never rests on a face anyway, see below).

Dynamics (:func:`wall_step`, vectorised and pure): the dot moves by ``2 * action`` along a straight
segment. A segment that would enter the wall stops at the first contact and is set back *along its
own path* to where it is 0.5 px off the face it hit (a side face, or the door's top or bottom edge
when it hits that from inside the door), or to its start if that was already closer. DINO-WM's
``check_wall_intersect`` instead shifts the contact point by a fixed 0.5 px off the face; keeping
the result on the path makes every step a straight move through free space (a perpendicular
shift could make the straight line from the start cut a corner of the door). The border is
handled by clamping the target into the border box *before* the wall test, so the whole path stays
in the (convex) box. The contact test is an exact segment-versus-rectangle test, so the wall cannot
be crossed at any speed, from anywhere, including segments that start inside the door or pass
over the whole wall in one step.

Goals: ``random`` (DINO-WM's opposite-side pairs), ``replay`` (held-out data, as every task) and
``door``: replayed goals on the other side of the wall with the straight line to them blocked
(:meth:`WallEnv.door_start_goal`), the pairs where a straight push fails and the door must be found.

Env actions are clipped to ``[-1.8, 1.8]`` per coordinate: DINO-WM's data draw step lengths from a
normal truncated to ``[0.2, 1.8]`` in a random heading, so every data action lies in that box (and
one env step moves at most ``2 * 1.8 * sqrt(2)`` px).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from wmplan.platform.envs.base import (
    GOAL_MODES,
    Env,
    PixelRecipe,
    Policy,
    Segment,
    StartGoal,
    box_path_distance,
    downsample,
    supersample_grid,
)
from wmplan.platform.envs.wall_geometry import (
    _BIG,
    ACTION_BOUND,
    BORDER_HI,
    BORDER_LO,
    DOOR_HALF_HEIGHT,
    NUDGE,
    POS_HI,
    POS_LO,
    STEP_SCALE,
    WALL_HALF_WIDTH,
)

if TYPE_CHECKING:  # torch is imported when Wall's exact dynamics are built, not when envs is imported
    import torch

    from wmplan.platform.envs.wall_dynamics import WallDynamics

__all__ = [
    "WallEnv", "wall_step", "wall_valid", "wall_crossings", "door_pairs", "IMG_SIZE", "SUCCESS_THRESHOLD",
    "DOOR", "MIN_DOOR_WINDOWS",
]

IMG_SIZE = 65
"""Side of DINO-WM's wall image, in pixels; positions are in this image's pixel units."""
DOT_STD = 1.7
"""Standard deviation of the rendered dot, in pixels."""
PADDING = 2 * DOT_STD
"""Margin DINO-WM keeps between sampled states and the walls."""
SUCCESS_THRESHOLD = 4.5
"""Success: ``||goal - pos|| < 4.5`` (pixels)."""

DOOR = "door"
"""Wall's own goal mode: replayed goals behind the wall (:meth:`WallEnv.door_start_goal`)."""
MIN_DOOR_WINDOWS = 10
"""Goal mode ``door`` refuses held-out data with fewer qualifying windows than this at a horizon."""


def wall_valid(pos: np.ndarray, wall_x: Any = 32.0, door_y: Any = 30.0) -> np.ndarray:
    """Whether positions ``[..., 2]`` are valid: inside ``[4.5, 59.5]^2`` and not in the wall."""
    pos = np.asarray(pos, dtype=np.float64)
    x, y = pos[..., 0], pos[..., 1]
    wall_x = np.asarray(wall_x, dtype=np.float64)
    door_y = np.asarray(door_y, dtype=np.float64)
    in_box = (x >= POS_LO) & (x <= POS_HI) & (y >= POS_LO) & (y <= POS_HI)
    in_wall = (np.abs(x - wall_x) < WALL_HALF_WIDTH) & (np.abs(y - door_y) > DOOR_HALF_HEIGHT)
    return in_box & ~in_wall


def _push_out(p: np.ndarray, wl: np.ndarray, wr: np.ndarray, db: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """Move positions that lie in the wall's interior to the nearest point 0.5 px off a face."""
    x, y = p[:, 0], p[:, 1]
    inside = (x > wl) & (x < wr) & ((y < db) | (y > dt))
    if not inside.any():
        return p
    below = y < db
    cand_x = np.stack([wl - NUDGE, wr + NUDGE], axis=-1)  # [N, 2] candidates along x
    dist_x = np.abs(cand_x - x[:, None])
    cand_y = np.where(below, db + NUDGE, dt - NUDGE)  # into the door along y
    dist_y = np.abs(cand_y - y)
    best_x = np.take_along_axis(cand_x, dist_x.argmin(axis=1)[:, None], axis=1)[:, 0]
    use_y = dist_y < dist_x.min(axis=1)
    out = p.copy()
    out[:, 0] = np.where(inside & ~use_y, best_x, x)
    out[:, 1] = np.where(inside & use_y, cand_y, y)
    return out


def _slab(p: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parameter interval ``(t_in, t_out)`` where ``p + t d`` is within ``[lo, hi]`` on one axis.

    A coordinate that does not move counts as inside only if strictly inside, so a path that
    slides exactly along a face (or sits still on one) is not a contact.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - p) / d
        t2 = (hi - p) / d
    moving = d != 0
    strictly_in = (p > lo) & (p < hi)
    t_in = np.where(moving, np.minimum(t1, t2), np.where(strictly_in, -np.inf, np.inf))
    t_out = np.where(moving, np.maximum(t1, t2), np.where(strictly_in, np.inf, -np.inf))
    return t_in, t_out


def wall_step(pos: np.ndarray, action: np.ndarray, wall_x: Any = 32.0, door_y: Any = 30.0) -> np.ndarray:
    """One DotWall step for a batch: positions ``[N, 2]`` and actions ``[N, 2]`` to positions ``[N, 2]``.

    Pure and vectorised; ``wall_x`` and ``door_y`` are scalars or ``[N]`` arrays. Actions are used
    as given (any size): clipping to the env's bounds is :class:`WallEnv`'s job. A start inside the
    wall is first moved to the nearest free point.
    """
    pos = np.asarray(pos, dtype=np.float64)
    action = np.asarray(action, dtype=np.float64)
    single = pos.ndim == 1
    p = np.atleast_2d(pos)
    a = np.atleast_2d(action)
    p, a = np.broadcast_arrays(p, a)
    n = p.shape[0]
    wx = np.broadcast_to(np.asarray(wall_x, dtype=np.float64), (n,))
    dy = np.broadcast_to(np.asarray(door_y, dtype=np.float64), (n,))
    wl, wr = wx - WALL_HALF_WIDTH, wx + WALL_HALF_WIDTH
    db, dt = dy - DOOR_HALF_HEIGHT, dy + DOOR_HALF_HEIGHT

    p = _push_out(np.clip(p, POS_LO, POS_HI), wl, wr, db, dt)
    q = np.clip(p + STEP_SCALE * a, POS_LO, POS_HI)
    d = q - p

    # First contact with either wall block (closed boxes [wl, wr] x [-BIG, db] and [wl, wr] x [dt, BIG]).
    tx_in, tx_out = _slab(p[:, 0], d[:, 0], wl, wr)
    t_hit = np.full(n, np.inf)
    hit_x_face = np.zeros(n, dtype=bool)
    for ylo, yhi in ((np.full(n, -_BIG), db), (dt, np.full(n, _BIG))):
        ty_in, ty_out = _slab(p[:, 1], d[:, 1], ylo, yhi)
        t_in = np.maximum(tx_in, ty_in)
        t_out = np.minimum(tx_out, ty_out)
        hit = (t_in < t_out) & (t_out > 0) & (t_in <= 1)
        t = np.maximum(t_in, 0.0)
        first = hit & (t < t_hit)
        t_hit = np.where(first, t, t_hit)
        hit_x_face = np.where(first, tx_in >= ty_in, hit_x_face)

    # Set back along the path to where it is NUDGE px off the face it hit (or to the start, if that
    # was closer): the result stays on the path, so every step is a straight move in free space.
    blocked = np.isfinite(t_hit)
    d_perp = np.abs(np.where(hit_x_face, d[:, 0], d[:, 1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        t_back = np.maximum(t_hit - NUDGE / d_perp, 0.0)
    t = np.where(blocked, t_back, 1.0)
    out = p + t[:, None] * d
    out = np.clip(out, POS_LO, POS_HI)
    return out[0] if single else out


def wall_crossings(positions: np.ndarray, wall_x: float = 32.0, door_y: float = 30.0) -> np.ndarray:
    """Which paths pass through the wall: ``positions [N, T, 2]`` (x, y) to ``[N]`` bool.

    A path passes through the wall when it goes from one side of the wall band
    (``|x - wall_x| > 3``) to the other and a segment between consecutive positions on the way
    meets the centre line ``x = wall_x`` outside the door (``|y - door_y| > 4``). Positions inside
    the band do not count as a side; going through the door is not a crossing.
    """
    p = np.asarray(positions, dtype=np.float64)
    x, y = p[..., 0] - wall_x, p[..., 1]
    side = np.where(np.abs(x) > WALL_HALF_WIDTH, np.sign(x), 0.0)
    last_side = side[:, 0]
    through = np.zeros(len(p), dtype=bool)
    crossed = np.zeros(len(p), dtype=bool)
    for i in range(p.shape[1] - 1):
        x0, x1, y0, y1 = x[:, i], x[:, i + 1], y[:, i], y[:, i + 1]
        meets = x0 * x1 < 0
        with np.errstate(divide="ignore", invalid="ignore"):
            y_c = y0 + (0.0 - x0) / (x1 - x0) * (y1 - y0)
        through |= meets & (np.abs(y_c - door_y) > DOOR_HALF_HEIGHT)
        s1 = side[:, i + 1]
        outside = s1 != 0
        crossed |= outside & (last_side != 0) & (s1 != last_side) & through
        through = np.where(outside, False, through)
        last_side = np.where(outside, s1, last_side)
    return crossed


def door_pairs(start: np.ndarray, goal: np.ndarray, wall_x: float = 32.0, door_y: float = 30.0) -> np.ndarray:
    """Which start/goal pairs lie on opposite sides of the wall with the straight line between them
    blocked by it: ``start [..., 2]``, ``goal [..., 2]`` (x, y, pixels) to ``[...]`` bool.

    A side is ``x < wall_x - 3`` or ``x > wall_x + 3`` (a position in the wall band, e.g. in the
    door, is on neither). The straight line crosses the band between its two faces; it is blocked
    unless it is inside the door (``|y - door_y| <= 4``) at both faces, that is, unless the whole
    part of it inside the band passes through the door opening (``y`` is linear along the line).
    """
    p = np.asarray(start, dtype=np.float64)
    q = np.asarray(goal, dtype=np.float64)
    px, py, qx, qy = p[..., 0], p[..., 1], q[..., 0], q[..., 1]
    wl, wr = wall_x - WALL_HALF_WIDTH, wall_x + WALL_HALF_WIDTH
    opposite = ((px < wl) & (qx > wr)) | ((px > wr) & (qx < wl))
    with np.errstate(divide="ignore", invalid="ignore"):  # opposite sides: qx != px
        y_l = py + (wl - px) / (qx - px) * (qy - py)
        y_r = py + (wr - px) / (qx - px) * (qy - py)
    through_door = (np.abs(y_l - door_y) <= DOOR_HALF_HEIGHT) & (np.abs(y_r - door_y) <= DOOR_HALF_HEIGHT)
    return opposite & ~through_door


class WallEnv(Env):
    """DINO-WM's WallSingle task: state = dot position ``(x, y)`` in pixels, action = 2-D displacement."""

    name: ClassVar[str] = "wall"
    state_dim: ClassVar[int] = 2
    success_coords: ClassVar[slice] = slice(0, 2)
    success_threshold: ClassVar[float] = SUCCESS_THRESHOLD
    proprio_coords: ClassVar[slice | None] = slice(0, 2)
    """The dot position itself (DINO-WM's Wall proprio): the whole state."""
    world_extent: ClassVar[tuple[float, float]] = (-0.5, IMG_SIZE - 0.5)
    """:meth:`render` shows the 65x65 pixel grid's continuous extent, row = ``y``."""
    goal_modes: ClassVar[tuple[str, ...]] = (*GOAL_MODES, DOOR)
    """``random``, ``replay`` and ``door`` (replayed goals behind the wall: :meth:`door_start_goal`)."""
    default_trajectory_steps: ClassVar[int] = 400
    """Long enough to replay goals 40 model steps (200 env steps) away from 201 offsets of each
    held-out trajectory (a 200-step trajectory would hold exactly one such segment)."""
    default_trajectories: ClassVar[int] = 250
    """250 x 400 steps: the 100,000 transitions of the earlier 1000 x 100 default."""
    pixel_recipe: ClassVar[PixelRecipe] = PixelRecipe(trajectories=50, predictor_steps=4000, kind="jepa", proprio=True,
                                                      policy="uniform", env_step_predictor=True, activation="relu")
    """20,000 frames of uniform actions; a JEPA whose ReLU predictor takes one env action at a time,
    with the dot's position as proprio (DINO-WM's): open-loop CEM at H = 5 reaches DINO-WM's 74%
    (docs/RESULTS.md), where the visual kind on the walk's frames reached 22-52%."""
    exact_model_is_default: ClassVar[bool] = False
    """``model: auto`` is Wall's learned model; its own dynamics only when asked for (``model: exact``)."""

    def __init__(self, wall_x: float = 32.0, door_y: float = 30.0, seed: int | None = None) -> None:
        super().__init__(seed)
        if not (POS_LO + WALL_HALF_WIDTH + 2 * PADDING <= wall_x <= POS_HI - WALL_HALF_WIDTH - 2 * PADDING):
            raise ValueError(f"wall: wall_x={wall_x} leaves no room on one side of the wall")
        if not (POS_LO + DOOR_HALF_HEIGHT <= door_y <= POS_HI - DOOR_HALF_HEIGHT):
            raise ValueError(f"wall: door_y={door_y} puts the door outside the room")
        self.wall_x = float(wall_x)
        self.door_y = float(door_y)
        self.action_low = np.full(2, -ACTION_BOUND)
        self.action_high = np.full(2, ACTION_BOUND)
        self._background: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}

    def exact_model(self, *, device: str | torch.device = "cpu") -> WallDynamics:
        """This room's own dynamics as a world model
        (:class:`~wmplan.platform.envs.wall_dynamics.WallDynamics`), on ``device``: ``model: exact``."""
        from wmplan.platform.envs.wall_dynamics import WallDynamics

        return WallDynamics(wall_x=self.wall_x, door_y=self.door_y, frameskip=self.frameskip).to(device)

    def _sample_state(self, rng: np.random.Generator) -> np.ndarray:
        return self.sample_start_goal(rng)[0]

    def _set_state(self, state: np.ndarray) -> np.ndarray:
        if not wall_valid(state, self.wall_x, self.door_y):
            raise ValueError(f"wall: state {state} is outside the room or inside the wall")
        return state.copy()

    def _step(self, action: np.ndarray) -> np.ndarray:
        assert self._state is not None
        return wall_step(self._state, action, self.wall_x, self.door_y)

    def final_states(self, starts: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Env.final_states`, vectorised: every row steps at once with :func:`wall_step`.

        Bit for bit what the default row-by-row loop gives: a start that is not finite, outside the
        room or in the wall, or a row with a non-finite action, is not ok (its final is its start);
        actions are clipped to ``[-1.8, 1.8]`` as :meth:`step` clips them. A subclass that changes
        how a state is set or stepped gets the default loop.
        """
        cls = type(self)
        if (cls._step, cls._set_state, cls.reset, cls.step, cls.rollout) != (
            WallEnv._step, WallEnv._set_state, Env.reset, Env.step, Env.rollout
        ):
            return super().final_states(starts, actions)
        starts, actions = self._final_states_inputs(starts, actions)
        ok = (
            np.all(np.isfinite(starts), axis=1)
            & wall_valid(starts, self.wall_x, self.door_y)
            & np.all(np.isfinite(actions), axis=(1, 2))
        )
        safe = np.array([POS_LO, POS_LO])  # a valid position stepped in place of a bad row's start
        pos = np.where(ok[:, None], starts, safe)
        env_actions = np.clip(np.where(ok[:, None, None], actions, 0.0), self.action_low, self.action_high)
        for t in range(env_actions.shape[1]):
            pos = wall_step(pos, env_actions[:, t], self.wall_x, self.door_y)
        finals = np.where(ok[:, None], pos, starts)
        return finals, ok

    def sample_start_goal(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Start and goal on opposite sides of the wall (DINO-WM's ``generate_random_state``).

        ``x`` uniform in ``[7.4, wall_x - 6.4]`` on the left and its mirror on the right, ``y`` in
        ``[7.4, 56.6]``; the left/right order is swapped half of the time.
        """
        lo = BORDER_LO + PADDING  # DINO-WM: border_wall_loc - 1 + padding = 7.4
        hi = IMG_SIZE - 1 - lo  # 56.6
        left_x = rng.uniform(lo, self.wall_x - WALL_HALF_WIDTH - PADDING)
        right_x = rng.uniform(self.wall_x + WALL_HALF_WIDTH + PADDING, hi)
        start_y, goal_y = rng.uniform(lo, hi, size=2)
        if rng.uniform() < 0.5:
            left_x, right_x = right_x, left_x
        return np.array([left_x, start_y]), np.array([right_x, goal_y])

    @classmethod
    def needs_dataset_for_goals(cls, goal_mode: str | None = None) -> bool:
        """``replay`` and ``door`` replay held-out data; ``random`` needs none."""
        return (goal_mode or cls.default_goal_mode) in ("replay", DOOR)

    def draw_start_goal(
        self,
        rng: np.random.Generator,
        *,
        horizon: int,
        goal_mode: str,
        segments: Sequence[Segment] = (),
    ) -> StartGoal:
        """:meth:`Env.draw_start_goal`, plus goal mode ``door`` (:meth:`door_start_goal`)."""
        if goal_mode == DOOR:
            return self.door_start_goal(rng, segments, horizon=horizon)
        return super().draw_start_goal(rng, horizon=horizon, goal_mode=goal_mode, segments=segments)

    def door_windows(self, segments: Sequence[Segment], *, horizon: int) -> list[tuple[int, int]]:
        """Every ``(segment index, offset)`` whose recorded state at ``offset`` and the recorded state
        ``frameskip * horizon`` env steps later form a :func:`door_pairs` pair, in order."""
        steps = self.frameskip * horizon
        found: list[tuple[int, int]] = []
        for i, (states, actions) in enumerate(segments):
            n = len(actions) - steps + 1
            if n <= 0:
                continue
            ok = door_pairs(states[:n, :2], states[steps : steps + n, :2], self.wall_x, self.door_y)
            found += [(i, int(o)) for o in np.flatnonzero(ok)]
        return found

    def door_start_goal(self, rng: np.random.Generator, segments: Sequence[Segment], *, horizon: int) -> StartGoal:
        """A replayed goal ``horizon`` model steps away on the other side of the wall, with the
        straight start-goal line blocked by the wall (goal mode ``door``): the planner must find the
        door, and a straight push toward the goal fails.

        The windows of ``frameskip * horizon`` env steps in ``segments`` whose recorded start and
        end form a :func:`door_pairs` pair are found first (:meth:`door_windows`); one is drawn
        uniformly with ``rng`` and replayed from its start as goal mode ``replay`` does. A replay
        that does not end in such a pair (it reproduces the recording here, so this does not
        happen with wmplan's data) is rejected and another window drawn. Deterministic given
        ``rng``. Changes the env's state.

        Raises:
            ValueError: fewer than :data:`MIN_DOOR_WINDOWS` windows qualify (the message says how
                many were found among how many windows).
        """
        steps = self.frameskip * horizon
        windows = self.door_windows(segments, horizon=horizon)
        if len(windows) < MIN_DOOR_WINDOWS:
            total = sum(max(0, len(actions) - steps + 1) for _, actions in segments)
            raise ValueError(
                f"{self.name}: goal mode {DOOR!r} at horizon {horizon} needs at least {MIN_DOOR_WINDOWS} held-out "
                f"windows of frameskip * horizon = {steps} env steps whose start and end lie on opposite sides "
                f"of the wall with the straight line between them blocked; found {len(windows)} among the "
                f"{total} windows of the {len(segments)} segments (use more or longer held-out trajectories)"
            )
        left = list(windows)
        while left:
            k, offset = left.pop(int(rng.integers(len(left))))
            states, actions = segments[k]
            start = self.reset(state=states[offset])
            goal = self.rollout(actions[offset : offset + steps])[-1]
            if door_pairs(start, goal, self.wall_x, self.door_y):
                return StartGoal(start=start, goal=goal, source=(k, offset))
        raise ValueError(
            f"{self.name}: none of the {len(windows)} door windows at horizon {horizon} replays to a door pair "
            f"(the segments' states are not what their actions reach)"
        )

    def data_policy(self, rng: np.random.Generator, *, steps: int) -> Policy:
        """DINO-WM's wall data: heading a von Mises random walk (kappa 5), step length a normal
        (mean 1.0, std 0.4) truncated to ``[0.2, 1.8]`` by redrawing."""
        heading = [rng.uniform(-math.pi, math.pi)]

        def act(state: np.ndarray, t: int) -> np.ndarray:
            heading[0] = rng.vonmises(heading[0], 5.0)
            length = 0.0
            while not 0.2 <= length <= 1.8:
                length = rng.normal(1.0, 0.4)
            return length * np.array([math.cos(heading[0]), math.sin(heading[0])])

        return act

    def obstacle_crossings(self, paths: np.ndarray) -> np.ndarray:
        """Paths ``[N, T, D]`` whose positions pass through this env's wall (:func:`wall_crossings`)."""
        return wall_crossings(np.asarray(paths)[..., :2], self.wall_x, self.door_y)

    def path_distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Shortest-path lengths (pixels) between positions ``a`` and ``b`` ``[N, 2]`` (or ``[2]``):
        the straight line where the wall does not block it, otherwise the way through the door
        (around its corners); ``[N]``. The wall's two blocks are the obstacles (faces free, as in
        :func:`wall_valid`)."""
        wl, wr = self.wall_x - WALL_HALF_WIDTH, self.wall_x + WALL_HALF_WIDTH
        blocks = np.array([[wl, wr, -_BIG, self.door_y - DOOR_HALF_HEIGHT], [wl, wr, self.door_y + DOOR_HALF_HEIGHT, _BIG]])
        return box_path_distance(np.asarray(a)[..., :2], np.asarray(b)[..., :2], blocks)

    def render(self, size: int = 64) -> np.ndarray:
        """DINO-WM's picture: white room, black walls, the dot a red Gaussian (std 1.7 px).

        Drawn on the 65x65 pixel grid's continuous extent and area-averaged to ``size`` pixels;
        row = ``y``, column = ``x``. At ``size=65`` each pixel is DINO-WM's pixel.
        """
        assert self._state is not None, "call reset() before render()"
        if size not in self._background:
            f = max(1, -(-3 * IMG_SIZE // size)) if size != IMG_SIZE else 1
            u = supersample_grid(size, *self.world_extent, f)
            ux, uy = np.meshgrid(u, u, indexing="xy")  # [H, W]: column = x, row = y
            wall = (np.abs(ux - self.wall_x) <= WALL_HALF_WIDTH + 0.5) & (
                np.abs(uy - self.door_y) > DOOR_HALF_HEIGHT + 0.5
            )
            for c in (BORDER_LO, BORDER_HI):
                wall |= (np.abs(ux - c) <= 0.5) | (np.abs(uy - c) <= 0.5)
            self._background[size] = (ux, uy, wall, f)
        ux, uy, wall, f = self._background[size]
        x, y = self._state
        dot = np.exp(-((ux - x) ** 2 + (uy - y) ** 2) / (2 * DOT_STD**2))
        img = np.empty(wall.shape + (3,))
        img[..., 0] = 255.0
        img[..., 1] = img[..., 2] = 255.0 * (1.0 - dot)
        img[wall] = 0.0
        return downsample(img, f)
