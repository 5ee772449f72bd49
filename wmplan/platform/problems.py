"""Planning problems on analytic models, for demos, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import Tensor

from wmplan.platform.world_model import WorldModel, rollout

__all__ = ["reachable_problems"]


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
