"""Analytic world models as tasks: the simulator *is* the model, so planning needs no data and no training.

Three tasks, each stepping a torch model (float32) behind the numpy float64 :class:`Env` interface:

============  =====================================================================  =========
task          dynamics (defaults)                                                    state
============  =====================================================================  =========
``linear``    :meth:`LinearModel.rotation`: radius 1.05, angle 0.3 rad, ``B = I``   2
``pointmass`` :class:`PointMass`: dt 0.2 s, damping 0.2 1/s, 2-D                      4
``obstacles`` :class:`~wmplan.platform.models.analytic.ObstacleField`: 6 obstacles   2
============  =====================================================================  =========

Conventions shared by all three (:class:`AnalyticEnv`): frameskip 1 (one env action is one model
action), actions in the model's bounds (``[-1, 1]^2``), success when the whole state is within 0.1
of the goal (as ``wmplan demo``), and the goal mode ``reachable`` as the default: the goal is where
``H`` model steps of temporally correlated random actions take the start
(:func:`wmplan.platform.problems.far_problems`; on ``obstacles``,
:func:`~wmplan.platform.problems.obstacle_problems`, preferring pairs an obstacle lies between), so
a longer horizon is a harder problem and no data set is needed. ``random`` (two random states) and
``replay`` (recorded data) work as on every task.

**Exact dynamics.** An :class:`Env` may offer its own dynamics as a world model with a method
``exact_model(*, device) -> WorldModel``; these tasks do. A config with ``model: auto`` (and
``obs: state``) or ``model: exact`` then plans with that model (a fresh copy of the very model the
simulator steps), with no checkpoint and no training (:func:`wmplan.platform.registry.load_model`).
A task whose ``auto`` should stay a learned model sets ``exact_model_is_default = False`` (Wall does:
its dynamics answer ``model: exact`` only; :func:`wmplan.platform.registry.default_model_is_exact`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from wmplan.platform.envs.base import GOAL_MODES, Env, Segment, StartGoal, downsample, supersample_grid

if TYPE_CHECKING:  # torch is imported when an analytic task is built, not when envs is imported
    import torch

    from wmplan.platform.models.analytic import ObstacleField
    from wmplan.platform.world_model import WorldModel

__all__ = ["AnalyticEnv", "LinearEnv", "PointMassEnv", "ObstaclesEnv", "REACHABLE", "SUCCESS_THRESHOLD", "CROSSING_DEPTH"]

REACHABLE = "reachable"
"""The analytic tasks' default goal mode: goals ``H`` model steps of correlated random actions away."""
SUCCESS_THRESHOLD = 0.1
"""Success: the whole state within 0.1 (state units) of the goal, as ``wmplan demo`` judges."""
CROSSING_DEPTH = 0.05
"""How far (world units) a path must cut into an obstacle to count as passing through it."""


class AnalyticEnv(Env):
    """A task whose simulator is an analytic torch world model (see the module docstring).

    Subclasses set ``name`` and ``state_dim`` and implement :meth:`exact_model`; the env steps a
    CPU copy of that model. Options of the goal mode ``reachable``:

    Args:
        seed: seed of the env's generator (random states).
        persistence: how slowly the random actions that place a goal change, in ``[0, 1)``
            (:func:`wmplan.platform.problems.correlated_actions`).
    """

    frameskip: ClassVar[int] = 1
    success_threshold: ClassVar[float] = SUCCESS_THRESHOLD
    goal_modes: ClassVar[tuple[str, ...]] = (REACHABLE, *GOAL_MODES)
    default_goal_mode: ClassVar[str] = REACHABLE
    world_extent: ClassVar[tuple[float, float]] = (-4.0, 4.0)
    """The square :meth:`render` shows, in state units of the position ``state[:2]``."""
    y_up: ClassVar[bool] = True

    def __init__(self, seed: int | None = None, *, persistence: float = 0.9) -> None:
        super().__init__(seed)
        if not 0.0 <= persistence < 1.0:
            raise ValueError(f"{self.name}: persistence must be in [0, 1), got {persistence}")
        self.persistence = float(persistence)
        self._model = self.exact_model(device="cpu")
        if (self._model.state_dim, self._model.action_dim) != (self.state_dim, self.action_dim):
            raise ValueError(f"{self.name}: the model's state and action sizes do not match the task's")  # pragma: no cover
        self.action_low = self._model.action_low.detach().double().numpy().copy()
        self.action_high = self._model.action_high.detach().double().numpy().copy()

    @abc.abstractmethod
    def exact_model(self, *, device: str | torch.device = "cpu") -> WorldModel:
        """A fresh torch copy of the dynamics this task steps (float32), on ``device``: what
        ``model: auto`` and ``model: exact`` plan with."""

    def reachable_problems(self, count: int, horizon: int, *, seed: int,
                           model: WorldModel | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` starts and goals ``[count, D]`` ``horizon`` model steps apart (goal mode ``reachable``),
        drawn from ``seed`` alone; rolled out with ``model`` (default: the env's CPU model) and on its device."""
        from wmplan.platform.problems import far_problems

        model = model or self._model
        return far_problems(model, count, horizon, seed=seed, device=model.action_low.device, persistence=self.persistence)

    def draw_start_goal(self, rng: np.random.Generator, *, horizon: int, goal_mode: str,
                        segments: Sequence[Segment] = ()) -> StartGoal:
        """``reachable``: one :meth:`reachable_problems` pair from a seed drawn from ``rng``; else as :class:`Env`."""
        if goal_mode != REACHABLE:
            return super().draw_start_goal(rng, horizon=horizon, goal_mode=goal_mode, segments=segments)
        start, goal = self.reachable_problems(1, horizon, seed=int(rng.integers(2**31 - 1)))
        return StartGoal(start=start[0].double().numpy(), goal=goal[0].double().numpy())

    def _sample_state(self, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(self.state_dim)

    def _set_state(self, state: np.ndarray) -> np.ndarray:
        return state.astype(np.float32).astype(np.float64)  # the simulator holds float32 states

    def _step(self, action: np.ndarray) -> np.ndarray:
        import torch

        assert self._state is not None
        with torch.no_grad():
            s = torch.as_tensor(self._state, dtype=torch.float32)
            a = torch.as_tensor(action, dtype=torch.float32)
            return self._model.step(s[None], a[None])[0].double().numpy()

    def render(self, size: int = 64) -> np.ndarray:
        """White square of ``world_extent`` (``y`` up), obstacles (if any) grey, the point ``state[:2]`` a red dot."""
        assert self._state is not None, "call reset() before render()"
        f = max(1, -(-128 // size))
        u = supersample_grid(size, *self.world_extent, f)
        ux, uy = np.meshgrid(u, u[::-1], indexing="xy")  # row 0 at the top (y = hi)
        img = np.full(ux.shape + (3,), 255.0)
        for (cx, cy), r in self._discs():
            img[(ux - cx) ** 2 + (uy - cy) ** 2 <= r * r] = 150.0
        std = (self.world_extent[1] - self.world_extent[0]) / 60
        x, y = self._state[:2]
        dot = np.exp(-((ux - x) ** 2 + (uy - y) ** 2) / (2 * std**2))
        img[..., 1] *= 1.0 - dot
        img[..., 2] *= 1.0 - dot
        return downsample(img, f)

    def _discs(self) -> list[tuple[tuple[float, float], float]]:
        """Obstacles to draw: ``((x, y), radius)`` each."""
        return []


class LinearEnv(AnalyticEnv):
    """``s' = A s + a``: ``A`` is ``radius`` times a 2-D rotation by ``angle`` (spectral radius ``radius``).

    Args:
        seed: seed of the env's generator.
        radius: spectral radius of ``A`` (> 0; above 1 the dynamics expand).
        angle: rotation per step in radians.
        persistence: see :class:`AnalyticEnv`.
    """

    name: ClassVar[str] = "linear"
    state_dim: ClassVar[int] = 2

    def __init__(self, seed: int | None = None, *, radius: float = 1.05, angle: float = 0.3, persistence: float = 0.9) -> None:
        if not radius > 0 or not math.isfinite(angle):
            raise ValueError(f"linear: need radius > 0 and a finite angle, got radius={radius}, angle={angle}")
        self.radius, self.angle = float(radius), float(angle)
        super().__init__(seed, persistence=persistence)

    def exact_model(self, *, device: str | torch.device = "cpu") -> WorldModel:
        from wmplan.platform.world_model import LinearModel

        return LinearModel.rotation(dim=2, radius=self.radius, angle=self.angle).to(device)


class PointMassEnv(AnalyticEnv):
    """A damped 2-D point mass: state ``[x, y, vx, vy]``, action a force (see :class:`PointMass`).

    Args:
        seed: seed of the env's generator.
        dt: time step in seconds (> 0).
        damping: velocity damping in 1/s (>= 0, below ``1 / dt``).
        persistence: see :class:`AnalyticEnv`.
    """

    name: ClassVar[str] = "pointmass"
    state_dim: ClassVar[int] = 4

    def __init__(self, seed: int | None = None, *, dt: float = 0.2, damping: float = 0.2, persistence: float = 0.9) -> None:
        if not dt > 0 or not 0 <= damping * dt < 1:
            raise ValueError(f"pointmass: need dt > 0 and 0 <= damping * dt < 1, got dt={dt}, damping={damping}")
        self.dt, self.damping = float(dt), float(damping)
        super().__init__(seed, persistence=persistence)

    def exact_model(self, *, device: str | torch.device = "cpu") -> WorldModel:
        from wmplan.platform.world_model import PointMass

        return PointMass(dims=2, dt=self.dt, damping=self.damping).to(device)


class ObstaclesEnv(AnalyticEnv):
    """A 2-D point among circular obstacles behind a smooth barrier (:class:`ObstacleField`): non-convex.

    Random states and goal-mode ``reachable`` starts are free points (outside every obstacle);
    ``reachable`` goals prefer pairs whose straight segment an obstacle blocks
    (:func:`wmplan.platform.problems.obstacle_problems`).

    Args:
        seed: seed of the env's generator.
        obstacles: number of obstacles.
        layout_seed: seed of the obstacle layout (the same layout for every episode).
        speed: world units per unit of action and step.
        sharpness: the barrier's stiffness in 1/world units.
        persistence: see :class:`AnalyticEnv`.
    """

    name: ClassVar[str] = "obstacles"
    state_dim: ClassVar[int] = 2
    world_extent: ClassVar[tuple[float, float]] = (-5.0, 5.0)

    def __init__(self, seed: int | None = None, *, obstacles: int = 6, layout_seed: int = 0, speed: float = 0.2,
                 sharpness: float = 20.0, persistence: float = 0.9) -> None:
        self.obstacles, self.layout_seed, self.speed, self.sharpness = int(obstacles), int(layout_seed), float(speed), float(sharpness)
        super().__init__(seed, persistence=persistence)
        field = self._field(self._model)
        self._centers = field.centers.double().numpy()
        self._radii = field.radii.double().numpy()

    def exact_model(self, *, device: str | torch.device = "cpu") -> WorldModel:
        from wmplan.platform.models.analytic import ObstacleField

        return ObstacleField(obstacles=self.obstacles, layout_seed=self.layout_seed, speed=self.speed,
                             sharpness=self.sharpness).to(device)

    @staticmethod
    def _field(model: object) -> ObstacleField:
        from wmplan.platform.models.analytic import ObstacleField

        if not isinstance(model, ObstacleField):
            raise TypeError(f"obstacles: need an ObstacleField, got {type(model).__name__}")
        return model

    def reachable_problems(self, count: int, horizon: int, *, seed: int,
                           model: WorldModel | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from wmplan.platform.problems import obstacle_problems

        field = self._field(model or self._model)
        return obstacle_problems(field, count, horizon, seed=seed, device=field.centers.device, persistence=self.persistence)

    def _sample_state(self, rng: np.random.Generator) -> np.ndarray:
        half = self._model.extent + 1.0  # type: ignore[attr-defined]
        while True:
            p = rng.uniform(-half, half, size=2)
            if self._radii.size == 0 or np.min(np.linalg.norm(self._centers - p, axis=-1) - self._radii) > 0.1:
                return p

    def obstacle_crossings(self, paths: np.ndarray) -> np.ndarray:
        """Paths ``[N, T, D]`` of which a segment between consecutive positions passes more than
        :data:`CROSSING_DEPTH` into an obstacle (the exact dynamics, sliding along a circle, cut its
        edge by a chord's sagitta, about 0.02)."""
        p = np.asarray(paths, dtype=np.float64)[..., :2]
        if self._radii.size == 0 or p.shape[1] < 2:
            return np.zeros(len(p), dtype=bool)
        a, d = p[:, :-1, None, :], (p[:, 1:] - p[:, :-1])[:, :, None, :]  # [N, T-1, 1, 2]
        t = np.clip(((self._centers - a) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-12), 0.0, 1.0)  # [N, T-1, K]
        gap = np.linalg.norm(a + t[..., None] * d - self._centers, axis=-1) - self._radii
        result: np.ndarray = (gap < -CROSSING_DEPTH).any(axis=(1, 2))
        return result

    def _discs(self) -> list[tuple[tuple[float, float], float]]:
        return [((float(c[0]), float(c[1])), float(r)) for c, r in zip(self._centers, self._radii)]
