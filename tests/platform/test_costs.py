"""The planning cost looks at what success looks at (:func:`wmplan.platform.costs.success_cost_model`)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from wmplan.platform.costs import SuccessCoordsCost, is_coordinatewise, success_cost_model
from wmplan.platform.envs import make_env
from wmplan.platform.models.state_model import StateModelConfig, StateWorldModel
from wmplan.platform.models.visual import VisualModelConfig, VisualWorldModel
from wmplan.platform.planners.base import Problem, terminal_cost
from wmplan.platform.world_model import (
    PointMass,
    check_world_model,
    from_model_space,
    is_observation_model,
    rollout,
    to_model_space,
)


def _state_model(env: str, state_dim: int) -> StateWorldModel:
    config = StateModelConfig(env=env, state_dim=state_dim, action_dim=10, hidden=16, depth=1)
    model = StateWorldModel(config, seed=0)
    torch.nn.init.normal_(model.net[-1].weight, std=0.1)  # a model that moves, so step is not the identity
    model.set_normalization(torch.linspace(1.0, 2.0, state_dim), torch.linspace(0.5, 3.0, state_dim), torch.zeros(10), torch.ones(10))
    return model


def test_pointmaze_state_model_cost_ignores_velocities() -> None:
    env = make_env("pointmaze")
    model = _state_model("pointmaze", 4)
    assert is_coordinatewise(model)
    wrapped = success_cost_model(env=env, model=model)
    assert isinstance(wrapped, SuccessCoordsCost) and wrapped.inner is model
    final = torch.tensor([[0.3, -0.2, 1.0, -2.0], [0.3, -0.2, 1.0, -2.0]])
    goal = torch.tensor([[0.3, -0.2, -4.0, 3.0], [1.3, 0.8, 1.0, -2.0]])
    # Same position, other velocity: no cost; one unit off in x and y: mean of squares over (x, y).
    torch.testing.assert_close(wrapped.cost(final, goal), torch.tensor([0.0, 1.0]))
    # Planners reach it through Problem.cost (the default would charge the velocities).
    problem = Problem(wrapped, final, goal, horizon=2)
    torch.testing.assert_close(problem.cost(final, goal), torch.tensor([0.0, 1.0]))
    assert terminal_cost(final, goal)[0] > 1.0


def test_the_wrapper_forwards_what_planners_and_episodes_use() -> None:
    env = make_env("pointmaze")
    model = _state_model("pointmaze", 4)
    wrapped = success_cost_model(env=env, model=model)
    assert check_world_model(wrapped) is wrapped and not is_observation_model(wrapped)
    assert (wrapped.state_dim, wrapped.action_dim) == (model.state_dim, model.action_dim) == (4, 10)
    assert wrapped.action_low is model.action_low and wrapped.action_high is model.action_high
    s = torch.tensor([[0.8, 2.8, 1.0, -1.0]])
    torch.testing.assert_close(to_model_space(wrapped, s), model.encode(s))
    torch.testing.assert_close(from_model_space(wrapped, model.encode(s)), s)
    a = torch.full((1, 3, 10), 0.5)
    z = model.encode(s)
    torch.testing.assert_close(rollout(wrapped, z, a), rollout(model, z, a))
    assert not torch.equal(rollout(model, z, a)[:, -1], z)  # the check above compares real moves
    assert wrapped.config is model.config
    assert wrapped.to("cpu") is wrapped and list(wrapped.parameters()) == list(model.parameters())
    wrapped.eval()
    assert not model.training
    # Gradients flow through step and cost to the actions.
    a.requires_grad_(True)
    wrapped.cost(rollout(wrapped, z, a)[:, -1], z).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_wall_keeps_its_model_because_success_covers_the_whole_state() -> None:
    model = _state_model("wall", 2)
    assert success_cost_model(env=make_env("wall"), model=model) is model


def test_a_pixel_model_is_unchanged() -> None:
    config = VisualModelConfig(env="pointmaze", state_dim=4, action_dim=10, frame_size=16, channels=4,
                               latent_channels=2, hidden=16, depth=1, probe_hidden=8)
    model = VisualWorldModel(config, seed=0)
    assert is_observation_model(model) and not is_coordinatewise(model)
    assert success_cost_model(env=make_env("pointmaze"), model=model) is model


class _OwnCost(PointMass):
    coordinatewise_state = True

    def cost(self, final_states: Tensor, goal_states: Tensor) -> Tensor:
        return (final_states - goal_states).abs().sum(-1)


class _Declared(PointMass):
    coordinatewise_state = True


def test_a_model_with_its_own_cost_or_without_the_declaration_is_unchanged() -> None:
    env = make_env("pointmaze")
    own = _OwnCost(dims=2)
    assert success_cost_model(env=env, model=own) is own
    undeclared = PointMass(dims=2)  # an identity map, but it does not say so: never guessed
    assert not is_coordinatewise(undeclared)
    assert success_cost_model(env=env, model=undeclared) is undeclared
    declared = _Declared(dims=2)
    wrapped = success_cost_model(env=env, model=declared)
    assert isinstance(wrapped, SuccessCoordsCost) and wrapped.dims == 2  # other attributes forwarded too


def test_a_declared_model_of_the_wrong_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="declares coordinatewise_state = True but has 6 state coordinates.*has 4"):
        success_cost_model(env=make_env("pointmaze"), model=_Declared(dims=3))
