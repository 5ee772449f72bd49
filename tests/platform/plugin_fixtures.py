"""A user's own planner, task and world model, named in tests as ``tests.platform.plugin_fixtures:NAME``.

Everything here uses only wmplan's public names, as a plug-in package would. The objects below the
line are deliberately wrong, one fault each, for the registry's error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from wmplan.platform.envs import Env
from wmplan.platform.envs.wall import WallEnv
from wmplan.platform.options import require
from wmplan.platform.planners import Optimized, Planner, PlannerOptions, Problem, randn
from wmplan.platform.world_model import PointMass

RANDOM_SHOOTING = "tests.platform.plugin_fixtures:RandomShooting"


@dataclass(frozen=True, kw_only=True)
class RandomShootingOptions(PlannerOptions):
    """Options of :class:`RandomShooting`."""

    iterations: int = 40
    """Rounds of sampling."""
    samples: int = 256
    """Action sequences drawn per problem and round (sample 0 is the best so far)."""
    std: float = 0.5
    """Standard deviation of the first round's samples around the best plan, unit action space."""
    decay: float = 0.9
    """Factor on the standard deviation after each round."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.samples >= 2, f"samples must be >= 2, got {self.samples}")
        require(self.std > 0, f"std must be > 0, got {self.std}")
        require(0 < self.decay <= 1, f"decay must be in (0, 1], got {self.decay}")


class RandomShooting(Planner[RandomShootingOptions]):
    """Random shooting that climbs: each round samples around the best plan so far and keeps the cheapest."""

    name = "random_shooting"
    Options = RandomShootingOptions
    stochastic_by_default = True
    search_space = {"samples": "16:512:log:int", "std": "0.05:1:log", "decay": "0.5,0.9,1.0"}

    def _optimize(self, problem: Problem, generator: torch.Generator, init_u: Tensor | None) -> Optimized:
        o = self.options
        b, h, a = problem.batch, problem.horizon, problem.action_dim
        best = problem.zeros() if init_u is None else init_u.clone()
        loss = torch.empty(o.iterations, b, device=problem.device)
        distance = torch.empty_like(loss)
        std = o.std
        with torch.no_grad():
            for i in range(o.iterations):
                samples = (best[:, None] + std * randn((b, o.samples, h, a), problem, generator)).clamp(-1.0, 1.0)
                samples[:, 0] = best
                final = problem.final_states(samples)  # [B, N, D]
                cost = problem.cost(final, problem.goal_like(final))  # [B, N]
                cost = torch.where(torch.isfinite(cost), cost, torch.inf)
                lowest, j = cost.min(dim=1)
                best = samples[torch.arange(b, device=problem.device), j]
                loss[i] = lowest
                reached = final[torch.arange(b, device=problem.device), j]
                distance[i] = torch.where(torch.isfinite(lowest), problem.goal_distance(reached), torch.inf)
                problem.snapshot(i + 1, best)
                std *= o.decay
        problem.record_failures(loss[-1])
        return Optimized(u=best, loss=loss, goal_distance=distance)


class Unsearchable(RandomShooting):
    """A plug-in planner without a search space."""

    search_space: dict[str, str] = {}


class BadlySearchable(RandomShooting):
    """A plug-in planner whose search space has a malformed item."""

    search_space = {"std": "1:0.1:log"}


def shifted_wall(*, door_y: float = 30.0, seed: int | None = None) -> WallEnv:
    """The Wall task with its wall moved right (a user's variant of a built-in task)."""
    return WallEnv(wall_x=40.0, door_y=door_y, seed=seed)


class Drift(Env):
    """A user's own task, an ``Env`` subclass that keeps Env's defaults wherever it can.

    A point on the plane ``[0, 10]^2``; an env action ``(ax, ay, throttle)`` in ``[-1, 1]^3`` (three
    values, unlike wmplan's tasks) moves it by ``0.5 * (ax, ay) * (1 + throttle)``, clamped to the
    plane. It sets only what the defaults cannot know: sizes, bounds, its success radius and the
    world square its picture shows; random pairs, the data policy, the goal modes, the plot tracks,
    the trajectory length and the visual recipe are Env's.
    """

    name: ClassVar[str] = "drift"
    state_dim: ClassVar[int] = 2
    action_dim: ClassVar[int] = 3
    success_threshold: ClassVar[float | None] = 0.5
    world_extent: ClassVar[tuple[float, float] | None] = (0.0, 10.0)
    y_up: ClassVar[bool] = True

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__(seed)
        self.action_low = np.full(3, -1.0)
        self.action_high = np.full(3, 1.0)

    def _sample_state(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(1.0, 9.0, size=2)

    def _set_state(self, state: np.ndarray) -> np.ndarray:
        if not np.all((state >= 0.0) & (state <= 10.0)):
            raise ValueError(f"drift: state {state} is off the plane")
        return state.copy()

    def _step(self, action: np.ndarray) -> np.ndarray:
        assert self._state is not None
        return np.clip(self._state + 0.5 * action[:2] * (1.0 + action[2]), 0.0, 10.0)

    def render(self, size: int = 64) -> np.ndarray:
        """White, with the point a black disc of radius ``size / 16`` pixels where :meth:`pixel_coords` puts it."""
        assert self._state is not None, "call reset() before render()"
        c, r = self.pixel_coords(self._state, size=size)
        cols, rows = np.meshgrid(np.arange(size), np.arange(size), indexing="xy")
        img = np.full((size, size, 3), 255, dtype=np.uint8)
        img[(cols - c) ** 2 + (rows - r) ** 2 <= (size / 16) ** 2] = 0
        return img


def point_mass(*, device: torch.device, dims: int = 2, damping: float = 0.5) -> PointMass:
    """A user's world model factory: a damped point mass on ``device``."""
    return PointMass(dims=dims, damping=damping).to(device)


# ------------------------------------------------------------------ one fault each

NOT_A_PLANNER = 3


def a_function() -> None:
    """A callable that is not a planner class."""


class WithoutOptions(Planner[Any]):
    """A planner class without Options."""

    def _optimize(self, problem: Problem, generator: torch.Generator, init_u: Tensor | None) -> Optimized:
        raise NotImplementedError


class WithoutOptimize(Planner[RandomShootingOptions]):
    """A planner class that does not implement ``_optimize``."""

    Options = RandomShootingOptions


class DriftWithoutSuccess(Drift):
    """A user's task that sets neither a success radius nor the world square of its picture."""

    success_threshold = None
    world_extent = None


def not_a_task(*, seed: int | None = None) -> dict[str, Any]:
    """A task factory that returns no Env."""
    return {"seed": seed}


def not_a_model(*, device: torch.device) -> torch.nn.Module:
    """A model factory that returns no world model."""
    return torch.nn.Linear(2, 2).to(device)


def model_without_device() -> PointMass:
    """A model factory that does not take the device."""
    return PointMass()


class HalfPixelModel(PointMass):
    """Declares pictures but has neither ``frame_size`` nor ``encode``."""

    observation = "pixels"


def half_pixel_model(*, device: torch.device) -> HalfPixelModel:
    return HalfPixelModel().to(device)
