"""The optional proprio term of the planning cost of models of pictures (DINO-WM's ``alpha``): off by
default, a known cost, proprio read from the simulator, and labelled where it is on."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from wmplan.config import Settings
from wmplan.platform.costs import ProprioCost, proprio_cost_model
from wmplan.platform.data import DataConfig, generate_dataset, read_dataset
from wmplan.platform.envs import make_env
from wmplan.platform.episode import make_episode_specs, observe, planning_model, run_episodes, summarize
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import (
    JepaTrainConfig,
    VisualTrainConfig,
    load_world_model,
    read_checkpoint_info,
    save_checkpoint,
    train_jepa_model,
    train_visual_model,
)
from wmplan.platform.planners import make_planner
from wmplan.platform.registry import make_task
from wmplan.platform.workflow import format_summaries
from wmplan.platform.world_model import LinearModel
from wmplan.storage.parquet import records_to_tables

SIZE = 16
TINY = {
    "jepa": dict(steps=8, batch_size=8, channels=4, keypoints=4, projector_hidden=16, latent_dim=8, hidden=16, depth=1, rollout_steps=2,
                 predictor_rollout_steps=2, predictor_steps=8, predictor_batch_size=16, probe_steps=8, sigreg_directions=16),
    "visual": dict(encoder_steps=8, encoder_batch_size=8, probe_steps=8, steps=8, batch_size=8, channels=4, latent_channels=2, hidden=16,
                   depth=1, rollout_steps=2),
}
KINDS = ("jepa", "visual")


def train(kind: str, dataset, **overrides):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if kind == "jepa":
            return train_jepa_model(dataset, JepaTrainConfig(**{**TINY["jepa"], **overrides}))
        return train_visual_model(dataset, VisualTrainConfig(**{**TINY["visual"], **overrides}))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wall_frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("proprio") / "wall.parquet"
    generate_dataset(DataConfig(env="wall", episodes=4, steps=20, val_fraction=0.25, frames=True, frame_size=SIZE), path, workers=1)
    return read_dataset(path)


@pytest.fixture(scope="module")
def models(wall_frames, tmp_path_factory):
    """Per kind: a model trained without proprio and one with it, and their checkpoints."""
    out = {}
    for kind in KINDS:
        for proprio in (False, True):
            model, metrics = train(kind, wall_frames, proprio=proprio)
            path = tmp_path_factory.mktemp(f"{kind}-{proprio}")
            save_checkpoint(model, path, metrics=metrics)
            out[kind, proprio] = (model, path)
    return out


# -- the env's proprio -------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "dim"), [("wall", 2), ("pointmaze", 4), ("pusht", 2)])
def test_env_proprio_is_the_agents_own_state(task, dim):
    env = make_env(task)
    rng = np.random.default_rng(0)
    states = np.stack([env.sample_start_goal(rng)[0] for _ in range(3)])
    p = env.proprio(states)
    assert env.has_proprio() and env.proprio_dim() == dim and p.shape == (3, dim)
    # Wall the dot (x, y); PointMaze the ball's position and velocity, DINO-WM's whole state; Push-T the pusher (x, y)
    np.testing.assert_array_equal(p, states[:, :dim])
    np.testing.assert_array_equal(env.proprio(states[0]), states[0, :dim])
    p[0, 0] += 1.0
    assert states[0, 0] != p[0, 0]  # a copy
    with pytest.raises(ValueError, match=f"must be \\[..., {env.state_dim}\\]"):
        env.proprio(np.zeros((3, env.state_dim + 1)))


def test_a_task_without_proprio_says_so():
    env = make_task("pointmass")
    assert not env.has_proprio() and env.proprio_dim() == 0
    with pytest.raises(ValueError, match="no proprioceptive state"):
        env.proprio(np.zeros((1, env.state_dim)))


# -- off by default -----------------------------------------------------------------------------------


def test_the_setting_is_off_by_default_and_checked():
    assert Settings().proprio_weight == 0.0
    assert {f.name: f.default for f in dataclasses.fields(JepaTrainConfig)}["proprio"] is False
    assert {f.name: f.default for f in dataclasses.fields(VisualTrainConfig)}["proprio"] is False
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="proprio_weight must be finite and >= 0"):
            Settings(proprio_weight=bad)
    with pytest.raises(ConfigError, match="proprio_weight=1 weighs the proprio of a checkpoint"):
        Settings(task="pointmass", model="exact", proprio_weight=1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_trained_without_proprio_refuses_a_weight_naming_the_setting(models, kind):
    model, path = models[kind, False]
    assert model.proprio_dim == 0 and model.proprio_weight == 0.0
    assert "proprio_mean" not in model.state_dict()  # a checkpoint without proprio keeps the tensors it had
    assert read_checkpoint_info(path)["config"]["proprio_dim"] == 0
    with pytest.raises(ConfigError, match="proprio_weight=1 needs a model trained with proprio"):
        model.set_proprio_weight(1.0)
    with pytest.raises(ConfigError, match="proprio_weight=0.5 needs a model trained with proprio"):
        load_world_model(path, proprio_weight=0.5)
    settings = Settings(task="wall", model=str(path), obs="pixels", proprio_weight=1.0)
    with pytest.raises(ConfigError, match="proprio_weight=1 needs a model trained with proprio.*trained without it"):
        settings.check_model()
    assert "proprio_weight" not in Settings(task="wall", model=str(path), obs="pixels").model_arguments()["model_options"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_without_proprio_plans_exactly_as_before(models, kind):
    model, path = models[kind, False]
    env = make_env("wall")
    assert planning_model(env, model) is model  # the planner gets the model itself: the terminal MSE, as before
    loaded = load_world_model(path, proprio_weight=0.0)
    specs = make_episode_specs(env, horizon=2, count=3, seed=1)
    planner = make_planner("cem", horizon=2, iterations=2, samples=16, elites=4)
    a = run_episodes(env, model, planner, specs, planner_name="cem", plan_seed=3)
    b = run_episodes(env, loaded, planner, specs, planner_name="cem", plan_seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.actions, y.actions)
        assert x.proprio_weight == y.proprio_weight == 0.0
    start = torch.as_tensor(np.stack([s.start for s in specs]), dtype=torch.float32)
    assert observe(env, model, start).shape == (3, model.state_dim)  # the latent alone
    with pytest.raises(ValueError, match="trained without proprio"):
        model.encode(np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8), proprio=np.zeros((1, 2)))


def test_a_model_without_proprio_is_not_wrapped():
    model = LinearModel.rotation(dim=4)
    assert proprio_cost_model(model) is model


# -- the cost ----------------------------------------------------------------------------------------


def test_the_cost_adds_exactly_alpha_times_the_proprio_mse():
    inner = LinearModel(torch.eye(5), torch.eye(5))  # a 5-D state read as 3 latent and 2 proprio values
    final = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    goal = torch.tensor([[1.0, 0.0, 3.0, 1.0, 5.0], [0.0, 3.0, 0.0, 0.0, 2.0]])
    # latent MSE: (0 + 4 + 0) / 3 and (0 + 9 + 0) / 3; proprio MSE: (9 + 0) / 2 and (0 + 4) / 2
    for alpha, want in ((0.0, [4 / 3, 3.0]), (1.0, [4 / 3 + 4.5, 3.0 + 2.0]), (2.5, [4 / 3 + 2.5 * 4.5, 3.0 + 2.5 * 2.0])):
        cost = ProprioCost(inner, proprio_dim=2, weight=alpha).cost(final, goal)
        torch.testing.assert_close(cost, torch.tensor(want))
    view = ProprioCost(inner, proprio_dim=2, weight=1.0)
    assert view.step is not None and view.state_dim == 5 and torch.equal(view.action_low, inner.action_low)
    with pytest.raises(ValueError, match="proprio_dim must be in"):
        ProprioCost(inner, proprio_dim=5, weight=1.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        ProprioCost(inner, proprio_dim=2, weight=-1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_with_proprio_plans_on_latent_plus_alpha_proprio(models, kind):
    model, path = models[kind, True]
    env = make_env("wall")
    d = model.state_dim - 2
    assert model.proprio_dim == 2 and model.latent_dim == d and model.proprio_weight == 0.0  # 0 unless a run sets it
    final, goal = torch.randn(4, d + 2), torch.randn(4, d + 2)
    latent = (final[:, :d] - goal[:, :d]).pow(2).mean(-1)
    proprio = (final[:, d:] - goal[:, d:]).pow(2).mean(-1)
    torch.testing.assert_close(planning_model(env, model).cost(final, goal), latent)  # alpha 0: the proprio does not count
    weighted = load_world_model(path, proprio_weight=1.5)
    assert weighted.proprio_weight == 1.5
    torch.testing.assert_close(planning_model(env, weighted).cost(final, goal), latent + 1.5 * proprio)
    assert Settings(task="wall", model=str(path), obs="pixels", proprio_weight=1.5).model_arguments()["model_options"] == {
        "allow_code": (), "proprio_weight": 1.5}


# -- the proprio comes from the simulator ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_start_and_goal_proprio_are_the_simulators(models, kind):
    model, _ = models[kind, True]
    env = make_env("wall")
    specs = make_episode_specs(env, horizon=2, count=4, seed=2)
    states = np.stack([s.start for s in specs] + [s.goal for s in specs])
    z = observe(env, model, torch.as_tensor(states, dtype=torch.float32))
    d = model.latent_dim
    assert z.shape == (8, d + 2)
    p = z[:, d:] * model.proprio_std + model.proprio_mean  # back to env units
    torch.testing.assert_close(p, torch.as_tensor(env.proprio(states), dtype=torch.float32))
    frames = np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="give proprio"):
        model.encode(frames)
    shifted = model.encode(frames, proprio=np.array([[10.0, 20.0]]))
    torch.testing.assert_close(shifted[0, :d], model.encode(frames, proprio=np.array([[30.0, 40.0]]))[0, :d])  # the picture's part


@pytest.mark.parametrize("kind", KINDS)
def test_training_with_proprio_fits_its_statistics_and_round_trips(models, wall_frames, kind):
    model, path = models[kind, True]
    states = np.concatenate([t.states for t in wall_frames.split("train")])
    torch.testing.assert_close(model.proprio_mean, torch.as_tensor(states[:, :2].mean(0), dtype=torch.float32))
    assert read_checkpoint_info(path)["config"]["proprio_dim"] == 2
    loaded = load_world_model(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# -- labelled where it is on ------------------------------------------------------------------------------


def test_the_weight_is_in_the_records_and_the_table(models):
    model, path = models["jepa", True]
    env = make_env("wall")
    specs = make_episode_specs(env, horizon=2, count=3, seed=1)
    planner = make_planner("cem", horizon=2, iterations=2, samples=16, elites=4)
    on = run_episodes(env, load_world_model(path, proprio_weight=1.0), planner, specs, planner_name="cem")
    off = run_episodes(env, model, planner, specs, planner_name="cem")
    assert [r.proprio_weight for r in on] == [1.0] * 3 and [r.to_row()["proprio_weight"] for r in off] == [0.0] * 3
    table = records_to_tables("r1", on)["episodes"]
    assert table.column("proprio_weight").to_pylist() == [1.0] * 3
    s_on, s_off = summarize(on), summarize(off)
    assert s_on["proprio_weight"] == 1.0 and s_off["proprio_weight"] == 0.0
    assert math.isnan(summarize([*on, *off])["proprio_weight"])  # mixed
    shown = format_summaries({("cem", 2): s_on, ("cem", 5): s_off}).splitlines()
    assert shown[0].endswith("| proprio alpha |") and shown[2].endswith("| 1 |") and shown[3].endswith("| 0 |")
    plain = format_summaries({("cem", 5): s_off}).splitlines()
    assert "proprio" not in plain[0] and plain[0].endswith("| failed |")
    label = Settings(task="wall", model=str(path), obs="pixels", proprio_weight=1.0)
    assert label.model_label().endswith("(proprio alpha 1)") and label.to_dict()["proprio_weight"] == 1.0
