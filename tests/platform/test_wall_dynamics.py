"""Wall's own dynamics as a world model (``model: exact`` on Wall): the simulator's step in torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmplan.jobs.experiment import ExperimentConfig
from wmplan.platform.envs import make_env, pack_actions
from wmplan.platform.envs.wall import wall_step, wall_valid
from wmplan.platform.envs.wall_dynamics import WallDynamics, wall_step_torch
from wmplan.platform.episode import EpisodeSpec, run_episodes
from wmplan.platform.planners import make_planner
from wmplan.platform.registry import EXACT_MODEL, default_model_is_exact, has_exact_model, load_model, make_task, task_class


def free_positions_and_actions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(4.5, 59.5, (n, 2))
    act = rng.uniform(-1.8, 1.8, (n, 2))
    act[::7, 0] = 0.0  # steps along one axis: the slab test's "not moving" branch
    act[::11, 1] = 0.0
    keep = wall_valid(pos)
    return pos[keep], act[keep]


def test_the_torch_step_is_the_simulators_step_with_finite_gradients() -> None:
    pos, act = free_positions_and_actions(50_000, seed=0)
    p = torch.tensor(pos, requires_grad=True)
    a = torch.tensor(act, requires_grad=True)
    out = wall_step_torch(p, a)
    np.testing.assert_array_equal(out.detach().numpy(), wall_step(pos, act))
    blocked = np.linalg.norm(wall_step(pos, act) - np.clip(pos + 2 * act, 4.5, 59.5), axis=1) > 1e-9
    assert 0.01 < blocked.mean() < 0.5  # the batch hits the wall and the border, and mostly moves freely
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(p.grad).all()  # type: ignore[arg-type]
    free = ~blocked & np.all((pos + 2 * act > 4.5) & (pos + 2 * act < 59.5), axis=1)  # neither wall nor border
    np.testing.assert_allclose(a.grad.numpy()[free], 2.0)  # type: ignore[union-attr]  # a free step moves 2a


def test_a_model_step_is_frameskip_simulator_steps_in_its_own_normalised_space() -> None:
    env = make_env("wall")
    model = load_model(EXACT_MODEL, task=make_task("wall"))
    assert isinstance(model, WallDynamics) and (model.state_dim, model.action_dim) == (2, 10)
    rng = np.random.default_rng(1)
    starts, _ = free_positions_and_actions(64, seed=2)
    env_actions = rng.uniform(-1.8, 1.8, (len(starts), 3 * env.frameskip, 2))
    finals, ok = env.final_states(starts, env_actions)
    assert ok.all()
    z = model.encode(torch.tensor(starts, dtype=torch.float32))
    assert z.abs().max() < 2.0  # unit scale: a learned model's normalisation, not pixels
    for packed in torch.tensor(pack_actions(env_actions, env.frameskip), dtype=torch.float32).unbind(1):
        z = model.step(z, packed)
    np.testing.assert_allclose(model.decode(z).numpy(), finals, atol=1e-3)


def test_wall_plans_its_learned_model_unless_asked_for_its_dynamics() -> None:
    assert has_exact_model(task_class("wall")) and not default_model_is_exact(task_class("wall"))
    assert default_model_is_exact(task_class("linear"))
    assert not ExperimentConfig(task="wall").model_is_exact  # model: auto is the learned checkpoint
    config = ExperimentConfig(task="wall", model=EXACT_MODEL)
    assert config.model_is_exact and config.model_sha256() is None and "exact" in config.model_label()


def test_cem_on_walls_dynamics_predicts_what_the_simulator_does() -> None:
    env = make_env("wall")
    model = load_model(EXACT_MODEL, task=make_task("wall"))
    specs = [EpisodeSpec("wall", 5, 0, 7, np.array([15.0, 45.0]), np.array([22.0, 30.0])),  # same side
             EpisodeSpec("wall", 5, 1, 8, np.array([20.0, 28.0]), np.array([44.0, 32.0]))]  # through the door
    planner = make_planner("cem", horizon=5, iterations=10, samples=200, elites=20)
    records = run_episodes(env, model, planner, specs, planner_name="cem", plan_seed=0)
    for r in records:
        assert r.model_success == r.success
        assert r.model_final_distance == pytest.approx(r.final_distance, abs=1e-3)
    assert all(r.success for r in records)
