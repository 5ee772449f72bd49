"""The state ensemble: bootstrapped members, the held-out judge, the disagreement penalty, data-support
bounds, its checkpoint, and the exploitation gap in every results table."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from wmplan.platform.data import DataConfig, generate_dataset, read_dataset
from wmplan.platform.envs import make_env, pack_actions
from wmplan.platform.episode import EpisodeSpec, run_episodes, summarize_rows
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import (
    DisagreementPenalty,
    EnsembleModelConfig,
    EnsembleTrainConfig,
    EnsembleWorldModel,
    TrainConfig,
    WorstMember,
    load_ensemble,
    load_world_model,
    read_checkpoint_info,
    save_checkpoint,
    train_ensemble_model,
    train_state_model,
)
from wmplan.platform.models.training import data_action_bounds
from wmplan.platform.planners import make_planner
from wmplan.platform.workflow import default_train_config, format_summaries
from wmplan.platform.world_model import rollout
from wmplan.storage.tracking import group_metrics

FS = 5
TINY = dict(steps=30, batch_size=32, lr=3e-3, hidden=16, depth=1, rollout_steps=2, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def wall_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "wall.parquet"
    generate_dataset(DataConfig(env="wall", episodes=8, steps=40, seed=0), path, workers=1)
    return read_dataset(path)


@pytest.fixture(scope="module")
def ensemble(wall_data):
    return train_ensemble_model(wall_data, EnsembleTrainConfig(**TINY, members=3))


def config(**kw) -> EnsembleModelConfig:
    return EnsembleModelConfig(**{"env": "wall", "state_dim": 2, "action_dim": 2 * FS, "frameskip": FS,
                                  "env_action_low": (-1.8, -1.8), "env_action_high": (1.8, 1.8), "hidden": 8, "depth": 1,
                                  "members": 3, **kw})


def randomised(model: EnsembleWorldModel, seed: int = 0) -> EnsembleWorldModel:
    """Members with random (non-zero) last layers, so that they disagree."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.members.weights:
            w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    return model.requires_grad_(False)


# -- members, bootstrap and the judge --------------------------------------------------------------------------


def test_bootstrapped_members_differ(ensemble):
    model, metrics = ensemble
    z, a = torch.randn(64, 2), torch.rand(64, 2 * FS) * 2 - 1
    preds = model.predictions(z, a, slice(None))  # [3, 64, 2]
    assert preds.shape == (3, 64, 2)
    for i in range(3):
        for j in range(i):
            assert not torch.allclose(preds[i], preds[j], atol=1e-4)
    first = [w[0] for w in model.members.weights]
    assert all(not torch.equal(w[0], w[1]) for w in model.members.weights) and first
    assert metrics["members"] == 3 and metrics["planning_members"] == 2 and metrics["bootstrap"] is True
    assert metrics["val_mse_after"] < metrics["val_mse_before"]
    # step is the planning members' mean; the judge (the last member) is not in it
    assert torch.allclose(model.step(z, a), preds[:2].mean(0), atol=1e-6)
    assert torch.allclose(model.judge_step(z, a), preds[2], atol=1e-6)


def test_the_judge_is_never_used_in_planning():
    """A judge that answers NaN: every planner's plan stays finite, and in-model success is the judge's (NaN -> not a success)."""
    model = randomised(EnsembleWorldModel(config(), seed=0))
    with torch.no_grad():
        model.members.biases[-1][2].fill_(math.nan)  # the last member: the judge
    start, goal = torch.zeros(4, 2), torch.full((4, 2), 0.5)
    for name, options in [("cem", dict(iterations=3, samples=16, elites=4)), ("gd", dict(iterations=3)),
                          ("grasp", dict(iterations=4, sync_interval=2, sync_steps=1))]:
        planned = model.planning_model()
        result = make_planner(name, horizon=2, **options).plan(planned, planned.encode(start), planned.encode(goal), seed=0)
        assert torch.isfinite(result.states).all() and not result.failed.any(), name
    assert torch.isnan(model.judge_rollout(start, torch.zeros(4, 2, 2 * FS))[:, -1]).all()

    env = make_env("wall")
    specs = [EpisodeSpec("wall", 2, i, i, np.array([12.0, 20.0]), np.array([20.0, 30.0])) for i in range(2)]
    records = run_episodes(env, model, make_planner("gd", horizon=2, iterations=3), specs, planner_name="gd", plan_seed=0)
    for r in records:
        assert not r.failed and r.executed_states.shape[0] == 2 * FS + 1  # planned and executed
        assert not r.model_success and r.model_final_distance == math.inf  # judged by the NaN judge


class NothingMovesJudge(torch.nn.Module):
    """Exact wall-blind dynamics for planning; a judge that says nothing moves."""

    def __init__(self) -> None:
        super().__init__()
        self.state_dim, self.action_dim = 2, 2 * FS
        self.register_buffer("action_low", torch.full((2 * FS,), -1.8))
        self.register_buffer("action_high", torch.full((2 * FS,), 1.8))

    def step(self, state, action):
        return state + 2 * action.reshape(*action.shape[:-1], FS, 2).sum(-2)

    def judge_rollout(self, start, actions):
        return start.unsqueeze(-2).expand(*start.shape[:-1], actions.shape[-2] + 1, start.shape[-1])


@pytest.mark.parametrize("mode", ["open_loop", "mpc"])
def test_episodes_judge_in_model_success_with_judge_rollout(mode):
    env = make_env("wall")
    specs = [EpisodeSpec("wall", 3, 0, 1, np.array([12.0, 20.0]), np.array([20.0, 40.0]))]
    planner = make_planner("gd", horizon=3, iterations=150, lr=0.1, action_noise=0.0, init_std=0.0)
    (r,) = run_episodes(env, NothingMovesJudge(), planner, specs, planner_name="gd", plan_seed=0, mode=mode)
    assert r.success  # the plan reaches the goal in the simulator
    assert not r.model_success  # but the judge saw nothing move
    # the judge's prediction: the start of the last planner call (open loop: the episode's start; MPC with a
    # replan every model step: the real state one model step before the end)
    last_start = specs[0].start if mode == "open_loop" else r.executed_states[-1 - FS]
    assert r.model_final_distance == pytest.approx(float(np.linalg.norm(specs[0].goal - last_start)), rel=1e-4)


# -- the disagreement penalty ------------------------------------------------------------------------------------


def test_disagreement_penalty_accumulates_and_changes_the_cost():
    model = randomised(EnsembleWorldModel(config(disagreement_weight=2.0), seed=1))
    view = model.planning_model()
    assert isinstance(view, DisagreementPenalty) and view.state_dim == 3
    s = view.encode(torch.tensor([[10.0, 20.0]]))
    assert s[0, 2] == 0
    actions = torch.rand(1, 3, 2 * FS) - 0.5
    expected_u, z = 0.0, s[:, :2]
    for t in range(3):
        preds = model.planning_predictions(z, actions[:, t])
        expected_u += float((preds - preds.mean(0)).pow(2).sum(-1).mean(0))
        z = preds.mean(0)
        s = view.step(s, actions[:, t])
    assert float(s[0, 2]) == pytest.approx(expected_u, rel=1e-5) and expected_u > 0
    assert torch.allclose(s[:, :2], z)  # the state part is the planning mean
    goal = view.encode(torch.tensor([[30.0, 30.0]]))
    mse = (s[:, :2] - goal[:, :2]).pow(2).mean(-1)
    assert torch.allclose(view.cost(s, goal), mse + 2.0 * s[:, 2])
    assert not torch.allclose(view.cost(s, goal), mse)
    zero = DisagreementPenalty(model, weight=0.0)
    assert torch.allclose(zero.cost(s, goal), mse)  # weight 0: the plain MSE, the coordinate ignored
    assert EnsembleWorldModel(config(disagreement_weight=0.0)).planning_model().state_dim == 2  # no extra coordinate at 0
    assert torch.allclose(view.decode(s), model.decode(z))


def test_penalty_cost_looks_at_the_given_coordinates_only():
    model = randomised(EnsembleWorldModel(config(), seed=2))
    view = DisagreementPenalty(model, weight=0.0, coords=slice(0, 1))
    final, goal = torch.tensor([[1.0, 5.0, 0.3]]), torch.tensor([[0.0, -5.0, 0.0]])
    assert float(view.cost(final, goal)) == pytest.approx(1.0)


# -- the worst member ----------------------------------------------------------------------------------------------


def test_worst_member_view_rolls_each_member_out_and_costs_the_worst():
    model = randomised(EnsembleWorldModel(config(members=4, planning="worst"), seed=4))  # 3 planning members + the judge
    view = model.planning_model(coords=slice(0, 2))
    assert isinstance(view, WorstMember) and view.state_dim == 3 * 2
    start = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    s = view.encode(start)
    assert s.shape == (2, 6) and torch.allclose(view.decode(s), start, atol=1e-4)
    actions = torch.rand(2, 3, 2 * FS) - 0.5
    own = [model.encode(start)] * 3  # each planning member from its own state, never the mean
    for t in range(3):
        own = [model.predictions(z, actions[:, t], slice(m, m + 1))[0] for m, z in enumerate(own)]
        s = view.step(s, actions[:, t])
    expected = torch.stack(own, dim=-2)  # [2, P, D]
    torch.testing.assert_close(s.reshape(2, 3, 2), expected)
    mean_path = model.encode(start)
    for t in range(3):
        mean_path = model.step(mean_path, actions[:, t])
    assert not torch.allclose(expected.mean(-2), mean_path, atol=1e-3)  # not the mean model's rollout
    goal = view.encode(torch.tensor([[12.0, 22.0], [28.0, 38.0]]))
    per_member = (expected - goal.reshape(2, 3, 2)).pow(2).mean(-1)  # [2, P]
    torch.testing.assert_close(view.cost(s, goal), per_member.amax(-1))
    assert (view.cost(s, goal) > per_member.mean(-1)).all()  # members disagree: the worst costs more than their mean
    judged = view.judge_rollout(view.encode(start), actions)  # the held-out member, repeated for every member
    torch.testing.assert_close(view.decode(judged), model.decode(model.judge_rollout(model.encode(start), actions)))
    with pytest.raises(ConfigError, match="unknown ensemble planning 'best'"):
        config(planning="best")


def test_gradient_planners_work_on_the_worst_member_view():
    model = randomised(EnsembleWorldModel(config(planning="worst"), seed=5))
    view = model.planning_model()
    start = view.encode(torch.zeros(4, 2))
    goal = view.encode(torch.full((4, 2), 3.0))
    for name, options in [("gd", dict(iterations=30, lr=0.5)), ("grasp", dict(iterations=12, sync_interval=4, sync_steps=2))]:
        planner = make_planner(name, horizon=3, **options)
        result = planner.plan(view, start, goal, seed=0)
        assert torch.isfinite(result.actions).all()
        first = view.cost(rollout(view, start, torch.zeros_like(result.actions))[..., -1, :], goal)
        final = view.cost(rollout(view, start, result.actions)[..., -1, :], goal)
        assert (final < first).all(), name  # the worst member's distance fell from doing nothing


# -- data-support bounds ---------------------------------------------------------------------------------------


def test_data_bounds_are_the_percentiles_of_the_packed_actions():
    rng = np.random.default_rng(0)
    trajs = [SimpleNamespace(states=rng.normal(size=(31, 2)), actions=rng.uniform([-0.5, -1.0], [1.0, 0.25], size=(30, 2)))
             for _ in range(4)]
    low, high = data_action_bounds(trajs, FS, 0.5, (-1.8, -1.8), (1.8, 1.8))
    packed = np.concatenate([pack_actions(t.actions[np.arange(26)[:, None] + np.arange(FS)[None]], FS) for t in trajs])
    assert np.allclose(low, np.percentile(packed, 0.5, axis=0)) and np.allclose(high, np.percentile(packed, 99.5, axis=0))
    low0, high0 = data_action_bounds(trajs, FS, 0.0, (-1.8, -1.8), (1.8, 1.8))
    assert np.allclose(low0, packed.min(0)) and np.allclose(high0, packed.max(0))
    clipped_low, _ = data_action_bounds(trajs, FS, 0.0, (-0.2, -1.8), (1.8, 1.8))
    assert np.allclose(clipped_low[0::2], -0.2)  # never outside the env's bounds


def test_trained_models_record_and_use_data_bounds(wall_data, ensemble):
    model, metrics = ensemble
    expected = data_action_bounds(wall_data.split("train"), FS, 0.5, (-1.8, -1.8), (1.8, 1.8))
    assert model.config.action_low == pytest.approx(expected[0]) and model.config.action_high == pytest.approx(expected[1])
    assert torch.allclose(model.action_low, torch.tensor(expected[0], dtype=torch.float32))
    assert metrics["action_bounds"]["source"] == "data" and metrics["action_bounds"]["low"] == pytest.approx(expected[0])
    assert float(model.action_high.max()) < 1.8  # inside the task's box
    single, single_metrics = train_state_model(wall_data, TrainConfig(**TINY, action_bounds="data"))
    assert torch.allclose(single.action_low, model.action_low) and single_metrics["action_bounds"]["source"] == "data"
    default, default_metrics = train_state_model(wall_data, TrainConfig(**{**TINY, "steps": 1}))
    assert float(default.action_high.max()) == pytest.approx(1.8) and default_metrics["action_bounds"]["source"] == "env"
    with pytest.raises(ConfigError, match="action_percentile"):
        TrainConfig(action_percentile=50)


@pytest.mark.parametrize("name, options", [("cem", dict(iterations=4, samples=32, elites=4)), ("gd", dict(iterations=10, lr=1.0)),
                                           ("grasp", dict(iterations=6, sync_interval=3, sync_steps=2))])
def test_planners_stay_inside_the_data_bounds(name, options):
    low = tuple([-0.3, -1.0] * FS)
    high = tuple([0.2, 0.5] * FS)
    model = randomised(EnsembleWorldModel(config(action_low=low, action_high=high), seed=3))
    view = model.planning_model()
    start = view.encode(torch.zeros(5, 2))
    goal = view.encode(torch.full((5, 2), 50.0))  # far away: the plan pushes against the bounds
    result = make_planner(name, horizon=3, **options).plan(view, start, goal, seed=0)
    assert (result.actions >= torch.tensor(low) - 1e-6).all() and (result.actions <= torch.tensor(high) + 1e-6).all()
    assert (result.actions.amax((0, 1)) > torch.tensor(high) - 0.2).any()  # it did push against them


# -- checkpoints and loading ---------------------------------------------------------------------------------------


def test_checkpoint_round_trip(ensemble, tmp_path):
    model, metrics = ensemble
    save_checkpoint(model, tmp_path / "ens", metrics=metrics)
    info = read_checkpoint_info(tmp_path / "ens")
    assert info["kind"] == "state_ensemble" and info["config"]["members"] == 3
    assert info["config"]["action_low"] == pytest.approx(list(model.config.action_low))
    assert info["metrics"]["action_bounds"]["source"] == "data"
    loaded = load_world_model(tmp_path / "ens")
    assert isinstance(loaded, EnsembleWorldModel) and loaded.config == model.config
    z, a = torch.randn(9, 2), torch.rand(9, 2 * FS) - 0.5
    assert torch.equal(loaded.predictions(z, a, slice(None)), model.predictions(z, a, slice(None)))
    assert torch.equal(loaded.action_low, model.action_low)
    reweighted = load_ensemble(checkpoint=str(tmp_path / "ens"), disagreement_weight=0.0, judge=False)
    assert reweighted.config.disagreement_weight == 0.0 and reweighted.config.planning_members == 3
    with pytest.raises(ConfigError, match="disagreement_weight"):
        load_ensemble(checkpoint=str(tmp_path / "ens"), disagreement_weight=-1.0)


def test_configs_check_their_options():
    with pytest.raises(ConfigError, match="members"):
        config(members=1)
    with pytest.raises(ConfigError, match="action_low/high"):
        config(action_low=(0.0,), action_high=(1.0,))
    with pytest.raises(ConfigError, match="members"):
        EnsembleTrainConfig(members=1)
    assert isinstance(default_train_config("wall", members=4), EnsembleTrainConfig)
    assert EnsembleTrainConfig().action_bounds == "data" and TrainConfig().action_bounds == "env"


# -- the exploitation gap -------------------------------------------------------------------------------------------


def rows(real: list[bool], in_model: list[bool]) -> list[dict]:
    return [dict(success=s, model_success=m, failed=False, planning_time_s=1.0) for s, m in zip(real, in_model)]


def test_the_gap_is_in_model_minus_real_success_in_every_table():
    episodes = rows([True, False, False, False], [True, True, True, False])  # real 25%, in-model 75%
    summary = summarize_rows(episodes)
    assert summary["exploitation_gap"] == pytest.approx(0.5)
    assert group_metrics(episodes)["exploitation_gap"] == pytest.approx(0.5)
    table = format_summaries({("gd", 5): summary, ("cem", 5): summarize_rows(rows([True, True], [True, False]))})
    header, _, gd, cem = table.splitlines()
    column = header.split("|").index(" gap (points) ")
    assert gd.split("|")[column].strip() == "+50.0"
    assert cem.split("|")[column].strip() == "-50.0"
    assert math.isnan(summarize_rows([])["exploitation_gap"])
