"""Gradient descent through the rollout (shooting), DINO-WM's gradient baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wmplan.platform.options import require
from wmplan.platform.planners.base import Optimized, Planner, PlannerOptions, Problem, randn


@dataclass(frozen=True, kw_only=True)
class GDOptions(PlannerOptions):
    """Options of gradient descent through the rollout; defaults are DINO-WM's where it has one."""

    iterations: int = 1000
    """Gradient steps."""
    lr: float = 1.0
    """Adam learning rate in the unit action space (DINO-WM: 1)."""
    action_noise: float = 0.003
    """Standard deviation of Gaussian noise added to the actions after each step (0: none)."""
    init_std: float = 1.0
    """Standard deviation of the random normal initial actions, unit action space (0: zeros)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.action_noise >= 0, f"action_noise must be >= 0, got {self.action_noise}")
        require(self.init_std >= 0, f"init_std must be >= 0, got {self.init_std}")


class GD(Planner[GDOptions]):
    """Shooting: Adam on the actions through the full model rollout, on the planning cost of the
    final state (:meth:`Problem.cost`: the model's own, else ``mean_d (s_T - g)^2``).

    Without noise and with zero initialisation (``action_noise=0, init_std=0``) it is deterministic.
    """

    name = "gd"
    Options = GDOptions
    stochastic_by_default = True

    def transitions(self, *, warm_start: bool = False) -> int | None:
        """Per iteration, the rollout's H forward transitions and the H backward ones of its gradient."""
        return 2 * self.options.horizon * self.options.iterations

    def _optimize(self, problem: Problem, generator: torch.Generator, init_u: Tensor | None) -> Optimized:
        o = self.options
        if init_u is not None:
            u = init_u.clone()
        elif o.init_std > 0:
            u = (o.init_std * randn((problem.batch, problem.horizon, problem.action_dim), problem, generator)).clamp(-1.0, 1.0)
        else:
            u = problem.zeros()
        u.requires_grad_(True)
        opt = torch.optim.Adam([u], lr=o.lr)
        loss_trace = torch.empty(o.iterations, problem.batch, device=problem.device)
        dist_trace = torch.empty_like(loss_trace)
        for i in range(o.iterations):
            cost, final = problem.shooting(u)  # one graph under the option compile
            problem.set_grads(cost, [u])
            opt.step()
            with torch.no_grad():
                if o.action_noise > 0:
                    u.add_(o.action_noise * randn(tuple(u.shape), problem, generator))
                u.clamp_(-1.0, 1.0)
            loss_trace[i] = cost.detach()
            dist_trace[i] = problem.goal_distance(final)
            problem.snapshot(i + 1, u)
        return Optimized(u=u.detach(), loss=loss_trace, goal_distance=dist_trace)
