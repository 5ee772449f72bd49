"""PointMaze (U-maze): d4rl's ``maze2d-umaze`` rebuilt for the ``mujoco`` package, as DINO-WM uses it.

The model is d4rl's ``point_maze`` MJCF written out as a string: a sphere of radius 0.1 on two
slide joints (``ball_x``, ``ball_y``, damping 1) whose body starts at world ``(1.2, 1.2)``, so
``qpos`` is the ball's world position minus 1.2; unit wall boxes at world ``(i + 1, j + 1)`` for
each ``#`` on line ``i``, column ``j`` of the layout; timestep 0.01, Euler integrator, gravity 0;
two motors of gear 100 with control clipped to ``[-1, 1]``. One env step clips the velocity to
``+-5`` (d4rl's ``clip_velocity``, before simulating) and then runs ``mj_step`` 5 times
(DINO-WM's frame_skip 5). State = ``[qpos(2), qvel(2)]``.

In ``qpos`` coordinates the free cells are centred at 0.8, 1.8 and 2.8; the ball's centre stays
in about ``[0.4, 3.2]^2`` outside the middle wall block ``x in [1.3, 2.3], y <= 2.3`` (plus the
ball radius 0.1). Rendering is a top-down numpy drawing (no GL).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from wmplan.platform.envs.base import Env, PixelRecipe, box_path_distance, downsample, supersample_grid

__all__ = ["PointMazeEnv", "U_MAZE", "maze_xml", "maze_valid", "SUCCESS_THRESHOLD"]

U_MAZE = "#####\\#GOO#\\###O#\\#OOO#\\#####"
"""d4rl's U-maze layout: lines separated by a backslash; ``#`` wall, ``O`` free, ``G`` goal."""
BODY_OFFSET = 1.2
"""World position of the ball's body at ``qpos = 0`` (d4rl's ``particle`` body ``pos``)."""
BALL_RADIUS = 0.1
"""Radius of the ball's collision sphere."""
MARKER_RADIUS = 0.2
"""Radius of the visible marker (d4rl's ``particle_site``); used for rendering only."""
VELOCITY_LIMIT = 5.0
"""d4rl clips ``qvel`` to ``+-5`` before each step."""
SAMPLE_VELOCITY = 5.23
"""Random states draw each velocity uniformly in ``+-5.23`` (the range seen in rollouts)."""
SUCCESS_THRESHOLD = 0.5
"""Success: ``||pos - goal|| < 0.5``."""


def _parse(layout: str) -> np.ndarray:
    """The layout as a bool array ``[lines, columns]``, True for walls."""
    rows = layout.split("\\")
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


def maze_xml(layout: str = U_MAZE) -> str:
    """d4rl's ``point_maze`` MJCF for ``layout`` (without its textures, which only rendering used)."""
    walls = _parse(layout)
    boxes = "\n".join(
        f'    <geom name="wall_{i}_{j}" type="box" pos="{i + 1.0} {j + 1.0} 0" size="0.5 0.5 0.2" '
        f'conaffinity="1" rgba=".7 .5 .3 1"/>'
        for i, j in zip(*np.nonzero(walls))
    )
    return f"""<mujoco model="point_maze">
  <compiler inertiafromgeom="true" angle="radian"/>
  <option timestep="0.01" gravity="0 0 0" iterations="20" integrator="Euler"/>
  <default>
    <joint damping="1" limited="false"/>
    <geom friction=".5 .1 .1" density="1000" margin="0.002" condim="1" contype="2" conaffinity="1"/>
  </default>
  <worldbody>
    <geom name="ground" size="40 40 0.25" pos="0 0 -0.1" type="plane" contype="1" conaffinity="0"/>
    <body name="particle" pos="{BODY_OFFSET} {BODY_OFFSET} 0">
      <geom name="particle_geom" type="sphere" size="{BALL_RADIUS}" rgba="0 0 1 0" contype="1"/>
      <site name="particle_site" pos="0 0 0" size="{MARKER_RADIUS}" rgba="0.3 0.6 0.3 1"/>
      <joint name="ball_x" type="slide" pos="0 0 0" axis="1 0 0"/>
      <joint name="ball_y" type="slide" pos="0 0 0" axis="0 1 0"/>
    </body>
{boxes}
  </worldbody>
  <actuator>
    <motor joint="ball_x" ctrlrange="-1 1" ctrllimited="true" gear="100"/>
    <motor joint="ball_y" ctrlrange="-1 1" ctrllimited="true" gear="100"/>
  </actuator>
</mujoco>
"""


def _wall_boxes_qpos(layout: str = U_MAZE) -> np.ndarray:
    """Wall cells as ``[K, 4]`` rows ``(x_lo, x_hi, y_lo, y_hi)`` in qpos coordinates."""
    i, j = np.nonzero(_parse(layout))
    cx, cy = i + 1.0 - BODY_OFFSET, j + 1.0 - BODY_OFFSET
    return np.stack([cx - 0.5, cx + 0.5, cy - 0.5, cy + 0.5], axis=-1)


def maze_valid(qpos: np.ndarray, margin: float = 0.0, layout: str = U_MAZE) -> np.ndarray:
    """Whether ball centres ``[..., 2]`` (qpos) are at least ``margin`` away from every wall cell."""
    q = np.asarray(qpos, dtype=np.float64)[..., None, :]  # [..., 1, 2]
    b = _wall_boxes_qpos(layout)  # [K, 4]
    dx = np.maximum(np.maximum(b[:, 0] - q[..., 0], q[..., 0] - b[:, 1]), 0.0)
    dy = np.maximum(np.maximum(b[:, 2] - q[..., 1], q[..., 1] - b[:, 3]), 0.0)
    inside = (q[..., 0] > b[:, 0]) & (q[..., 0] < b[:, 1]) & (q[..., 1] > b[:, 2]) & (q[..., 1] < b[:, 3])
    dist = np.where(inside, -1.0, np.hypot(dx, dy))
    return np.all(dist >= margin, axis=-1) if margin > 0 else np.all(~inside, axis=-1)


def sample_umaze_qpos(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random ball position in the U-maze corridor, 0.1 clear of the reachable edge.

    ``x in [0.5, 1.1]`` or ``[2.5, 3.1]`` with ``y in [0.5, 3.1]`` (the two arms), or
    ``x in (1.1, 2.5)`` with ``y in [2.5, 3.1]`` (the bend), chosen by area.
    """
    # (x_lo, x_hi, y_lo, y_hi) of three rectangles, picked with probability proportional to area.
    rects = np.array([[0.5, 1.1, 0.5, 3.1], [2.5, 3.1, 0.5, 3.1], [1.1, 2.5, 2.5, 3.1]])
    area = (rects[:, 1] - rects[:, 0]) * (rects[:, 3] - rects[:, 2])
    r = rects[rng.choice(3, p=area / area.sum())]
    return np.array([rng.uniform(r[0], r[1]), rng.uniform(r[2], r[3])])


class PointMazeEnv(Env):
    """DINO-WM's PointMaze task (d4rl ``maze2d-umaze``): state ``[x, y, vx, vy]``, action = motor controls."""

    name: ClassVar[str] = "pointmaze"
    state_dim: ClassVar[int] = 4
    success_coords: ClassVar[slice] = slice(0, 2)
    """Success and goal distances look at the ball's position, not its velocity."""
    success_threshold: ClassVar[float] = SUCCESS_THRESHOLD
    proprio_coords: ClassVar[slice | None] = slice(0, 4)
    """The ball's position and velocity ``[qpos, qvel]``: DINO-WM's PointMaze proprio is the whole
    4-D state (``datasets/point_maze_dset.py``: ``proprios = states.clone()``), given to its predictor
    beside the frames. A single frame shows no velocity, and the ball's random start velocity (up to
    5.23 per axis) moves it about 0.26 per env step; DINO-WM plans PointMaze with ``alpha = 0``, so
    the velocity informs the prediction, not the cost (with ``alpha > 0`` the cost also asks for the
    goal state's velocity)."""
    world_extent: ClassVar[tuple[float, float]] = (-0.7, 4.3)
    """:meth:`render` shows qpos ``[-0.7, 4.3]^2``: the whole 5x5 layout including its outer walls."""
    y_up: ClassVar[bool] = True
    default_trajectory_steps: ClassVar[int] = 400
    """Long enough to replay goals 40 model steps (200 env steps) away from 201 offsets of each
    held-out trajectory (a 200-step trajectory would hold exactly one such segment)."""
    default_trajectories: ClassVar[int] = 250
    """250 x 400 steps: the 100,000 transitions of the earlier 1000 x 100 default."""
    pixel_recipe: ClassVar[PixelRecipe] = PixelRecipe(trajectories=250, predictor_steps=4000, kind="jepa", proprio=True)
    """The JEPA kind with the ball's position and velocity beside the latent: open-loop CEM 84% at
    H = 5 (DINO-WM 80%), where the same model without the velocity reached 25% (docs/RESULTS.md)."""
    # Random states (start, goal: Env.sample_start_goal) and the data policy (uniform random
    # actions: Env.data_policy) are the defaults of Env.

    def __init__(self, seed: int | None = None) -> None:
        import mujoco  # imported here so that the other tasks work without it

        super().__init__(seed)
        self.model = mujoco.MjModel.from_xml_string(maze_xml(U_MAZE))
        self.data = mujoco.MjData(self.model)
        self.action_low = np.full(2, -1.0)
        self.action_high = np.full(2, 1.0)
        self._walls = _wall_boxes_qpos(U_MAZE)
        self._background: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}

    def _sample_state(self, rng: np.random.Generator) -> np.ndarray:
        qvel = rng.uniform(-SAMPLE_VELOCITY, SAMPLE_VELOCITY, size=2)
        return np.concatenate([sample_umaze_qpos(rng), qvel])

    def _set_state(self, state: np.ndarray) -> np.ndarray:
        if not maze_valid(state[:2]):
            raise ValueError(f"pointmaze: position {state[:2]} is inside a wall")
        import mujoco as mj

        mj.mj_resetData(self.model, self.data)
        self.data.qpos[:] = state[:2]
        self.data.qvel[:] = state[2:]
        mj.mj_forward(self.model, self.data)
        return self._read()

    def _read(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def _step(self, action: np.ndarray) -> np.ndarray:
        import mujoco as mj

        self.data.qvel[:] = np.clip(self.data.qvel, -VELOCITY_LIMIT, VELOCITY_LIMIT)
        self.data.ctrl[:] = action
        mj.mj_step(self.model, self.data, self.frameskip)
        return self._read()

    def path_distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Shortest-path lengths (qpos units) between ball positions ``a`` and ``b`` ``[N, D]`` (or
        ``[D]``; velocities are ignored) along the maze's corridors: ``[N]``. The obstacles are the
        wall cells grown by the ball's radius (its centre keeps 0.1 off a wall), so a position
        closer than that to a wall has no path (``inf``)."""
        grown = self._walls + np.array([-BALL_RADIUS, BALL_RADIUS, -BALL_RADIUS, BALL_RADIUS])
        return box_path_distance(np.asarray(a)[..., :2], np.asarray(b)[..., :2], grown)

    _VIEW_LO, _VIEW_HI = world_extent
    _FLOOR = np.array([51.0, 77.0, 102.0])  # d4rl's ground colour (0.2, 0.3, 0.4)
    _WALL = np.array([178.0, 128.0, 77.0])  # d4rl's wall material (0.7, 0.5, 0.3)
    _BALL = np.array([77.0, 153.0, 77.0])  # d4rl's particle site (0.3, 0.6, 0.3)

    def render(self, size: int = 64) -> np.ndarray:
        """Top-down view of the maze: columns along ``x``, rows along ``y`` with ``y`` up.

        Floor, walls and the ball's marker (radius 0.2, as d4rl shows it) in d4rl's colours,
        anti-aliased by supersampling.
        """
        assert self._state is not None, "call reset() before render()"
        if size not in self._background:
            f = max(1, -(-256 // size))
            u = supersample_grid(size, self._VIEW_LO, self._VIEW_HI, f)
            gx, gy = np.meshgrid(u, u[::-1], indexing="xy")  # row 0 = top = largest y
            b = self._walls
            wall = np.zeros(gx.shape, dtype=bool)
            for x0, x1, y0, y1 in b:
                wall |= (gx >= x0) & (gx <= x1) & (gy >= y0) & (gy <= y1)
            self._background[size] = (gx, gy, np.where(wall[..., None], self._WALL, self._FLOOR), f)
        gx, gy, bg, f = self._background[size]
        x, y = self._state[:2]
        n = gx.shape[0]
        step = (self._VIEW_HI - self._VIEW_LO) / n
        # Only the samples near the ball can change: draw it in that window of the background.
        c0 = int(np.clip(np.floor((x - MARKER_RADIUS - self._VIEW_LO) / step) - 1, 0, n))
        c1 = int(np.clip(np.ceil((x + MARKER_RADIUS - self._VIEW_LO) / step) + 1, 0, n))
        r0 = int(np.clip(np.floor((self._VIEW_HI - y - MARKER_RADIUS) / step) - 1, 0, n))
        r1 = int(np.clip(np.ceil((self._VIEW_HI - y + MARKER_RADIUS) / step) + 1, 0, n))
        img = bg.copy()
        win = (slice(r0, r1), slice(c0, c1))
        ball = ((gx[win] - x) ** 2 + (gy[win] - y) ** 2) <= MARKER_RADIUS**2
        img[win][ball] = self._BALL
        return downsample(img, f)
