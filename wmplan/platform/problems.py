"""Planning problems on analytic models, for demos, tests and benchmarks.

- :func:`reachable_problems`: goals where uniformly random in-bound actions take random starts
  (the demo's original problems; short random walks, so goals stay near their starts);
- :func:`far_problems`: goals where temporally correlated actions take the starts, so a goal
  ``H`` steps away is far (about ``H`` steps of travel at long horizons, not ``sqrt(H)``): the
  analytic tasks' default goal mode, where a longer horizon is a harder problem;
- :func:`obstacle_problems`: :func:`far_problems` on an
  :class:`~wmplan.platform.models.analytic.ObstacleField`, from free starts, preferring pairs whose
  straight segment is blocked by an obstacle.

Every goal is reached exactly by rolling the model out from its start, so a perfect planner
reaches it; everything is drawn from ``seed`` on the CPU, so a problem does not depend on the device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from wmplan.platform.world_model import WorldModel, rollout

if TYPE_CHECKING:
    from wmplan.platform.models.analytic import ObstacleField

__all__ = ["reachable_problems", "correlated_actions", "far_problems", "obstacle_problems"]


def reachable_problems(model: WorldModel, batch: int, horizon: int, *, seed: int = 0, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``batch`` start states and goals that are reachable in ``horizon`` steps.

    Starts are standard normal; each goal is where the model takes its start under uniformly
    random in-bound actions, so a perfect planner reaches every goal exactly.

    Returns:
        ``(start [B, D], goal [B, D])`` on ``device``.
    """
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(batch, model.state_dim, generator=g)
    u = torch.rand(batch, horizon, model.action_dim, generator=g)
    low, high = model.action_low.cpu(), model.action_high.cpu()
    start, actions = start.to(device), (low + u * (high - low)).to(device)
    with torch.no_grad():
        goal = rollout(model, start, actions)[:, -1]
    return start, goal


def correlated_actions(model: WorldModel, batch: int, horizon: int, *, generator: torch.Generator,
                       persistence: float = 0.9) -> Tensor:
    """In-bound action sequences ``[B, H, A]`` (CPU) that change slowly.

    A stationary AR(1) process per action coordinate, ``z_t = p z_{t-1} + sqrt(1 - p^2) e_t`` with
    standard normal ``z_0`` and ``e_t`` (``p``: ``persistence``, in ``[0, 1)``; 0 gives independent
    steps), mapped to the bounds by ``mid + half * clamp(z, -1, 1)``.
    """
    if not 0.0 <= persistence < 1.0:
        raise ValueError(f"persistence must be in [0, 1), got {persistence}")
    noise = torch.randn(batch, horizon, model.action_dim, generator=generator)
    z = torch.empty_like(noise)
    if horizon:
        z[:, 0] = noise[:, 0]
    keep, fresh = persistence, (1.0 - persistence**2) ** 0.5
    for t in range(1, horizon):
        z[:, t] = keep * z[:, t - 1] + fresh * noise[:, t]
    low, high = model.action_low.detach().cpu().float(), model.action_high.detach().cpu().float()
    return (low + high) / 2 + (high - low) / 2 * z.clamp(-1.0, 1.0)


def far_problems(model: WorldModel, batch: int, horizon: int, *, seed: int = 0, device: torch.device | str = "cpu",
                 persistence: float = 0.9, start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``batch`` starts and goals ``horizon`` steps of :func:`correlated_actions` away.

    Args:
        model: the world model the goals are rolled out with.
        batch: ``B``, problems.
        horizon: ``H``, model steps from each start to its goal.
        seed: everything is drawn from it (CPU generator).
        device: where the problems (and the rollout) live.
        persistence: how slowly the actions change (see :func:`correlated_actions`).
        start: ``[B, D]`` starts; None: standard normal.

    Returns:
        ``(start [B, D], goal [B, D])`` on ``device``.
    """
    g = torch.Generator().manual_seed(seed)
    if start is None:
        start = torch.randn(batch, model.state_dim, generator=g)
    actions = correlated_actions(model, batch, horizon, generator=g, persistence=persistence)
    start = start.to(device)
    with torch.no_grad():
        goal = rollout(model, start, actions.to(device))[:, -1]
    return start, goal


def obstacle_problems(model: ObstacleField, batch: int, horizon: int, *, seed: int = 0, device: torch.device | str = "cpu",
                      persistence: float = 0.9, candidates: int = 8) -> tuple[Tensor, Tensor]:
    """``batch`` problems on an obstacle field, blocked ones first.

    Draws ``candidates * batch`` free starts (:meth:`ObstacleField.free_points`) and their
    :func:`far_problems` goals; keeps the candidates whose straight start-goal segment passes
    through an obstacle (:meth:`ObstacleField.blocked`), in the order drawn, and fills up with the
    others when fewer than ``batch`` are blocked.

    Returns:
        ``(start [B, 2], goal [B, 2])`` on ``device``.
    """
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    n = candidates * batch
    g = torch.Generator().manual_seed(seed)
    starts = model.free_points(n, generator=g)
    start, goal = far_problems(model, n, horizon, seed=int(torch.randint(2**31 - 1, (), generator=g)),
                               device=device, persistence=persistence, start=starts)
    blocked = model.blocked(start, goal).cpu()
    order = torch.cat([torch.nonzero(blocked).flatten(), torch.nonzero(~blocked).flatten()])[:batch].to(start.device)
    return start[order], goal[order]
