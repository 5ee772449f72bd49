"""The paper's conditioning argument, checked numerically on a linear model with spectral radius 1.05.

The shooting loss's Hessian is ``2 M^T M`` with ``M = [A^{T-1} B, ..., B]``: its largest eigenvalue
grows like ``||A||^{2(T-1)}``. The lifted loss's Hessian is block tridiagonal with a largest
eigenvalue bounded independently of ``T``. Both Hessians are computed by autograd through the
planners' own loss functions, not from the formulas.
"""

from __future__ import annotations

import pytest
import torch

from wmplan.platform.planners import rollout, terminal_cost
from wmplan.platform.planners.grasp import lifted_loss
from wmplan.platform.world_model import LinearModel


def _model() -> LinearModel:
    return LinearModel.rotation(dim=2, radius=1.05, angle=0.4).double()


def _largest_eigenvalue(hessian: torch.Tensor) -> float:
    return torch.linalg.eigvalsh((hessian + hessian.T) / 2).max().item()


def shooting_hessian_max(horizon: int) -> float:
    model = _model()
    start, goal = torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        final = rollout(model, start, flat.view(1, horizon, 2))[:, -1]
        return terminal_cost(final, goal).sum()

    return _largest_eigenvalue(torch.autograd.functional.hessian(loss, torch.zeros(horizon * 2, dtype=torch.float64)))


def lifted_hessian_max(horizon: int) -> float:
    model = _model()
    start, goal = torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    n_states = (horizon - 1) * 2

    def loss(flat: torch.Tensor) -> torch.Tensor:
        states = flat[:n_states].view(1, horizon - 1, 2)
        actions = flat[n_states:].view(1, horizon, 2)
        return lifted_loss(model, start, goal, states, actions, goal_weight=1.0, stop_state_grad=False)[0].sum()

    x = torch.zeros(n_states + horizon * 2, dtype=torch.float64)
    return _largest_eigenvalue(torch.autograd.functional.hessian(loss, x))


def test_model_has_spectral_radius_1_05():
    assert torch.linalg.eigvals(_model().A).abs().max().item() == pytest.approx(1.05, rel=1e-6)


def test_shooting_hessian_explodes_while_lifted_stays_bounded():
    shoot = {t: shooting_hessian_max(t) for t in (10, 80)}
    lifted = {t: lifted_hessian_max(t) for t in (10, 80)}
    assert shoot[80] >= 100 * shoot[10], shoot
    assert lifted[80] <= 2 * lifted[10], lifted
    assert lifted[80] >= lifted[10] / 2
    # The lifted bound of GRASP.md, 2 (1 + ||A|| + ||B||)^2 for the summed loss, here per-dimension mean.
    assert lifted[80] <= 2 * (1 + 1.05 + 1.0) ** 2
