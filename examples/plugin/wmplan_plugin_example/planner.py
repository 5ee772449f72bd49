"""The planner: random shooting that climbs, a user's own planner for wmplan.

A planner subclasses :class:`wmplan.platform.planners.Planner` with a frozen options dataclass
deriving from :class:`~wmplan.platform.planners.PlannerOptions` and implements ``_optimize``. It
sees only the :class:`~wmplan.platform.planners.Problem`: the model's transition through
``final_states``, the action bounds through the unit action space ``[-1, 1]^A``, and the planning
cost (:meth:`Problem.cost`: here the model's own, DINO-WM's patch MSE plus its proprioception
term). wmplan does the rest: validation, timing, the final rollout, NaN handling, snapshots.

Named in configs as a ``planners`` key, ``wmplan_plugin_example.planner:RandomShooting``, with its
options below (``--set planners.wmplan_plugin_example.planner:RandomShooting.samples=64``).
``wmplan tune`` searches :attr:`RandomShooting.search_space` unless ``--space`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from wmplan.platform.options import require
from wmplan.platform.planners import Optimized, Planner, PlannerOptions, Problem, randn

__all__ = ["RandomShootingOptions", "RandomShooting"]


@dataclass(frozen=True, kw_only=True)
class RandomShootingOptions(PlannerOptions):
    """Options of :class:`RandomShooting` (and ``horizon``, ``iterations`` of every planner)."""

    iterations: int = 20
    """Rounds of sampling."""
    samples: int = 128
    """Action sequences drawn per problem and round (sample 0 is the best plan so far)."""
    std: float = 0.6
    """Standard deviation of the first round's samples around the best plan, in the unit action space."""
    decay: float = 0.85
    """Factor on the standard deviation after each round."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.samples >= 2, f"samples must be >= 2, got {self.samples}")
        require(self.std > 0, f"std must be > 0, got {self.std}")
        require(0 < self.decay <= 1, f"decay must be in (0, 1], got {self.decay}")


class RandomShooting(Planner[RandomShootingOptions]):
    """Random shooting that climbs: each round draws ``samples`` action sequences ``[H, A]`` around
    the best plan so far (Gaussian, clipped to the bounds), rolls them out in the model, and keeps
    the one of lowest planning cost; the spread shrinks by ``decay`` per round.

    A sampling planner, like the random-shooting baselines of model-based RL (e.g. Nagabandi et
    al. 2018, arXiv 1708.02596); CEM refits a distribution to elites instead of keeping one plan.
    """

    name: ClassVar[str] = "example_random_shooting"
    Options = RandomShootingOptions
    stochastic_by_default: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, str]] = {"samples": "32:256:log:int", "std": "0.2:1.0:log", "decay": "0.7:1.0"}
    """What ``wmplan tune`` searches (the grammar of ``wmplan tune --space``)."""

    def transitions(self, *, warm_start: bool = False) -> int | None:
        """Model transitions per problem of one call: each round rolls out every sample over the horizon."""
        return self.options.iterations * self.options.samples * self.options.horizon

    def _optimize(self, problem: Problem, generator: torch.Generator, init_u: Tensor | None) -> Optimized:
        o = self.options
        b, h, a = problem.batch, problem.horizon, problem.action_dim
        rows = torch.arange(b, device=problem.device)
        best = problem.zeros() if init_u is None else init_u.clone()  # [B, H, A] unit actions
        loss = torch.empty(o.iterations, b, device=problem.device)
        distance = torch.empty_like(loss)
        std = o.std
        with torch.no_grad():
            for i in range(o.iterations):
                samples = (best[:, None] + std * randn((b, o.samples, h, a), problem, generator)).clamp(-1.0, 1.0)
                samples[:, 0] = best  # [B, N, H, A]
                final = problem.final_states(samples)  # [B, N, D]
                cost = problem.cost(final, problem.goal_like(final))  # [B, N]
                cost = torch.where(torch.isfinite(cost), cost, torch.inf)  # NaN never wins
                lowest, j = cost.min(dim=1)
                best = samples[rows, j]
                loss[i] = lowest
                distance[i] = torch.where(torch.isfinite(lowest), problem.goal_distance(final[rows, j]), torch.inf)
                problem.snapshot(i + 1, best)
                std *= o.decay
        problem.record_failures(loss[-1])
        return Optimized(u=best, loss=loss, goal_distance=distance)
