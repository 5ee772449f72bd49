"""Rounds of plan / execute / retrain: problems from a stream no evaluation draws from, executed
transitions aggregated (and written with their round beside the untouched data set), the model's
error on them falling, and the rounds recorded in the checkpoint."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from wmplan.cli import main
from wmplan.platform.data import DataConfig, Trajectory, generate_dataset, read_dataset, write_trajectories
from wmplan.platform.episode import make_episode_specs
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import (
    EnsembleTrainConfig,
    TrainConfig,
    describe_training,
    read_checkpoint_info,
    train_ensemble_model,
    train_state_model,
    training_summary,
)
from wmplan.platform.models.rounds import (
    RoundsConfig,
    aggregated_data_path,
    round_specs,
    run_rounds,
    train_rounds,
)
from wmplan.platform.models.training import one_step_mse, transition_windows
from wmplan.platform.registry import make_task
from wmplan.platform.workflow import episode_specs

TINY = dict(steps=40, batch_size=32, lr=3e-3, hidden=16, depth=1, rollout_steps=2, seed=0)
ROUNDS = dict(rounds=1, episodes=6, planners=("cem",), horizon=2, steps=150, lr=3e-3, repeat=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def wall_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "wall.parquet"
    generate_dataset(DataConfig(env="wall", episodes=8, steps=40, seed=0), path, workers=1)
    return path


@pytest.fixture(scope="module")
def wall_data(wall_path):
    return read_dataset(wall_path)


def _pairs(specs):
    return {(tuple(np.round(s.start, 9)), tuple(np.round(s.goal, 9))) for s in specs}


@pytest.mark.parametrize("goal_mode", ["random", "replay"])
def test_round_problems_are_never_evaluation_problems(wall_data, goal_mode):
    env = make_task("wall")
    horizon = 2
    rounds = []
    for r in (1, 2):
        rounds += round_specs(env, horizon=horizon, count=40, seed=0, round_index=r, dataset=wall_data, goal_mode=goal_mode)
    evaluation = []
    for seed in [*range(20), 1_000_003, 1_000_004]:  # `wmplan run --seed S` and a study's held-out set (seed + 1000003)
        evaluation += episode_specs(env, horizon=horizon, count=40, seed=seed, dataset=wall_data, goal_mode=goal_mode)
    assert not {s.seed for s in rounds} & {s.seed for s in evaluation}
    assert not _pairs(rounds) & _pairs(evaluation)
    if goal_mode == "random":
        assert len(_pairs(rounds)) == len(rounds)  # nor do rounds repeat their own problems
    else:  # rounds replay the training split, evaluation the validation split
        train = [t for t in wall_data.trajectories if t.split == "train"]
        val = [t for t in wall_data.trajectories if t.split == "val"]
        for s in rounds:
            assert any(np.any(np.all(np.isclose(t.states, s.start), axis=1)) for t in train)
            assert not any(np.any(np.all(np.isclose(t.states, s.start), axis=1)) for t in val)


def test_round_problems_draw_as_evaluation_does(wall_data):
    """Same task distribution (Wall: start and goal on opposite sides of the wall), another stream."""
    env = make_task("wall")
    specs = round_specs(env, horizon=5, count=30, seed=3, round_index=1, dataset=None, goal_mode="random")
    sides = [(s.start[0] - 32) * (s.goal[0] - 32) < 0 for s in specs]
    assert all(sides)
    assert make_episode_specs(env, horizon=5, count=1, seed=3)[0].seed != specs[0].seed


def _train(kind: str, data):
    if kind == "ensemble":
        return train_ensemble_model(data, EnsembleTrainConfig(**TINY, members=3))[0], EnsembleTrainConfig(**TINY, members=3)
    return train_state_model(data, TrainConfig(**TINY))[0], TrainConfig(**TINY)


@pytest.mark.parametrize("kind", ["state", "ensemble"])
def test_a_round_aggregates_the_executed_transitions_and_learns_them(wall_data, kind):
    env = make_task("wall")
    model, config = _train(kind, wall_data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_rounds(wall_data, model, config, RoundsConfig(**ROUNDS), env=env)

    original = [t for t in result.trajectories if t.round == 0]
    added = [t for t in result.trajectories if t.round == 1]
    assert len(original) == len(wall_data.trajectories)
    assert len(added) == ROUNDS["episodes"]
    assert len({t.episode for t in result.trajectories}) == len(result.trajectories)
    for t in added:  # the simulator's own transitions: replaying the actions from the start gives the states
        assert t.split == "train" and t.actions.shape == (ROUNDS["horizon"] * env.frameskip, 2)
        sim = make_task("wall")
        sim.reset(state=t.states[0])
        np.testing.assert_allclose(sim.rollout(t.actions), t.states, atol=1e-9)

    # the model's one-step error on the executed transitions falls after the round's fine-tuning
    s, a = transition_windows(added, env.frameskip, 1)

    def mse(m):
        return one_step_mse(m, m.encode(torch.as_tensor(s, dtype=torch.float32)), torch.as_tensor(a, dtype=torch.float32))

    assert mse(result.model) < mse(model)
    r = result.record["per_round"][0]
    assert r["mse_round_data_after"] < r["mse_round_data_before"]
    assert r["mse_round_data_before"] == pytest.approx(mse(model), rel=1e-5)
    assert set(r["planners"]) == {"cem"} and 0.0 <= r["planners"]["cem"]["success"] <= 1.0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the given model untouched
    assert type(result.model) is type(model)


def test_rounds_write_labelled_data_beside_the_untouched_original_and_record_the_cost(wall_path, wall_data, tmp_path):
    env = make_task("wall")
    model, config = _train("state", wall_data)
    digest = hashlib.sha256(wall_path.read_bytes()).hexdigest()
    checkpoint = tmp_path / "wall-r2"
    out = aggregated_data_path(wall_path, checkpoint)
    assert out.parent == wall_path.parent and out != wall_path
    _, metrics = train_rounds(wall_data, model, {"train_seconds": 1.5}, config, RoundsConfig(**{**ROUNDS, "rounds": 2}),
                              checkpoint=checkpoint, data_out=out, env=env)

    assert hashlib.sha256(wall_path.read_bytes()).hexdigest() == digest
    aggregated = read_dataset(out)
    assert sorted({t.round for t in aggregated.trajectories}) == [0, 1, 2]
    assert aggregated.meta["aggregated_from"] == str(wall_path)
    first = [t for t in aggregated.trajectories if t.round == 0]
    assert [t.episode for t in first] == [t.episode for t in wall_data.trajectories]
    for t, u in zip(first, wall_data.trajectories):
        assert t.split == u.split
        np.testing.assert_array_equal(t.states, u.states)
        np.testing.assert_array_equal(t.actions, u.actions)
    assert [t.split for t in aggregated.trajectories if t.round > 0] == ["train"] * 2 * ROUNDS["episodes"]
    assert all(t.round == 0 for t in read_dataset(wall_path).trajectories)  # a plain data set reads as round 0

    record = read_checkpoint_info(checkpoint)["metrics"]
    rounds = record["rounds"]
    assert rounds["count"] == 2 and rounds["episodes"] == ROUNDS["episodes"] and rounds["planners"] == ["cem"]
    assert [r["round"] for r in rounds["per_round"]] == [1, 2]
    assert all({"success", "model_success"} <= set(r["planners"]["cem"]) for r in rounds["per_round"])
    assert record["first_train_seconds"] == 1.5
    assert record["total_seconds"] == pytest.approx(1.5 + rounds["seconds"])
    assert record["rounds_data"] == str(out)
    assert record["evaluation"] is not None
    summary = training_summary(read_checkpoint_info(checkpoint))  # what eval-model and run records show
    assert summary["kind"] == "state_mlp" and summary["rounds"] == 2 and summary["first_training_seconds"] == 1.5
    assert summary["training_seconds"] == pytest.approx(1.5 + rounds["seconds"])
    assert summary["round_transitions"] == rounds["added_transitions"] > 0
    assert describe_training(summary).startswith("state_mlp, trained in ") and "(2 s, then 2 rounds adding " in describe_training(summary)


def test_write_trajectories_refuses_bad_input(tmp_path, wall_data):
    t = wall_data.trajectories[0]
    with pytest.raises(ValueError, match="unique"):
        write_trajectories(tmp_path / "x.parquet", [t, t], meta=wall_data.meta)
    bad = Trajectory(episode=99, split="train", states=t.states[:, :1], actions=t.actions)
    with pytest.raises(ValueError, match="states"):
        write_trajectories(tmp_path / "x.parquet", [bad], meta=wall_data.meta)


@pytest.mark.parametrize(("options", "message"), [
    ({"planners": ("cem", "nope")}, "nope"),
    ({"planners": ("cem", "cem")}, "repeat"),
    ({"rounds": -1}, "rounds"),
    ({"episodes": 0}, "episodes"),
    ({"repeat": 0}, "repeat"),
])
def test_rounds_config_names_the_problem(options, message):
    with pytest.raises(ConfigError, match=message):
        RoundsConfig(**options)


def test_train_command_with_rounds(wall_path, tmp_path, capsys):
    out = tmp_path / "ckpt"
    data_out = tmp_path / "agg.parquet"
    status = main(["train", "--env", "wall", "--data", str(wall_path), "--out", str(out), "--steps", "20", "--hidden", "16",
                   "--depth", "1", "--rollout-steps", "2", "--rounds", "1", "--round-episodes", "3", "--round-planners", "cem",
                   "--round-steps", "20", "--round-horizon", "2", "--round-data", str(data_out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "rounds: 1 x 3 problems per planner (cem, H = 2)" in printed
    assert read_checkpoint_info(out)["metrics"]["rounds"]["count"] == 1
    assert {t.round for t in read_dataset(data_out).trajectories} == {0, 1}
    # a round flag without --rounds is a usage error naming it
    assert main(["train", "--env", "wall", "--data", str(wall_path), "--out", str(out), "--round-episodes", "3"]) == 2
    assert "--rounds" in capsys.readouterr().err
