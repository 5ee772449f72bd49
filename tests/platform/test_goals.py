"""Horizon as difficulty: replayed goals H model steps away on Wall and PointMaze, and Wall's
``door`` goals (replayed goals behind the wall, the straight line to them blocked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wmplan.platform.data import DataConfig, Dataset, generate_dataset, read_dataset
from wmplan.platform.envs import make_env
from wmplan.platform.envs.wall import MIN_DOOR_WINDOWS, STEP_SCALE, WALL_HALF_WIDTH, door_pairs, wall_step
from wmplan.platform.episode import make_episode_specs
from wmplan.platform.workflow import default_data_config, episode_specs

LONGEST_H = 40


def _data(tmp_path_factory: pytest.TempPathFactory, env: str, *, episodes: int, steps: int, seed: int) -> Dataset:
    path = tmp_path_factory.mktemp(f"goals-{env}") / "d.parquet"
    config = DataConfig(env=env, episodes=episodes, steps=steps, seed=seed, val_fraction=0.5)
    return read_dataset(generate_dataset(config, path, workers=1))


@pytest.fixture(scope="module")
def wall_data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return _data(tmp_path_factory, "wall", episodes=16, steps=5 * LONGEST_H + 40, seed=0)


@pytest.fixture(scope="module")
def maze_data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return _data(tmp_path_factory, "pointmaze", episodes=40, steps=5 * LONGEST_H + 40, seed=0)


def _segments(data: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(t.states, t.actions) for t in data.split("val")]


# -- default data long enough for H = 40 -----------------------------------------------------------


@pytest.mark.parametrize("env", ["wall", "pointmaze"])
def test_default_data_replays_goals_40_model_steps_away_with_the_same_transitions(env: str) -> None:
    config = default_data_config(env)
    task = make_env(env)
    # Every held-out trajectory holds many H = 40 segments (frameskip x 40 = 200 env steps), not one.
    assert config.steps_per_episode >= 2 * task.frameskip * LONGEST_H
    assert config.episodes * config.steps_per_episode == 100_000  # the earlier 1000 x 100
    assert round(config.episodes * config.val_fraction) >= 20
    pixels = default_data_config(env, obs="pixels")
    assert pixels.frames and pixels.episodes == task.pixel_recipe.trajectories


@pytest.mark.parametrize("env", ["wall", "pointmaze"])
def test_replayed_goals_are_farther_at_longer_horizons(env: str, request: pytest.FixtureRequest) -> None:
    """A real property of the data policy: a goal 40 model steps away is farther, on average, than
    one 5 away. (PointMaze's random actions cross much of the maze within 25 env steps, so its
    margin is small: about 1.4 vs 1.7 maze units on the default data.)"""
    data: Dataset = request.getfixturevalue("wall_data" if env == "wall" else "maze_data")
    task = make_env(env)
    mean = {}
    for h in (5, LONGEST_H):
        specs = episode_specs(task, horizon=h, count=40 if env == "wall" else 100, seed=1, dataset=data, goal_mode="replay")
        assert all(s.source is not None for s in specs)
        mean[h] = float(np.mean([task.goal_distance(s.start, s.goal) for s in specs]))
    assert mean[LONGEST_H] > (1.5 if env == "wall" else 1.05) * mean[5], mean


# -- Wall: goals behind the wall -------------------------------------------------------------------


def test_door_pairs_on_hand_made_lines() -> None:
    start = np.array([[10.0, 30.0], [10.0, 10.0], [10.0, 10.0], [50.0, 10.0], [10.0, 10.0], [31.0, 30.0]])
    goal = np.array([[50.0, 30.0], [50.0, 10.0], [50.0, 50.0], [10.0, 50.0], [20.0, 50.0], [50.0, 10.0]])
    # Through the door; under the door; through the door's centre but clipping the wall's edge at
    # x = 35 (y = 35 > 34); the mirror, right to left; same side; a start inside the door (no side).
    np.testing.assert_array_equal(door_pairs(start, goal), [False, True, True, True, False, False])
    assert door_pairs(np.array([10.0, 26.5]), np.array([50.0, 33.5])) == np.False_
    # The door moves with the env's geometry.
    assert not door_pairs(np.array([10.0, 10.0]), np.array([50.0, 10.0]), 32.0, 10.0)


def test_door_goals_are_behind_the_wall_and_blocked(wall_data: Dataset) -> None:
    env = make_env("wall")
    assert env.needs_dataset_for_goals("door") and "door" in env.goal_modes
    segments = _segments(wall_data)
    h = 10
    specs = make_episode_specs(env, horizon=h, count=25, seed=3, segments=segments, goal_mode="door")
    start = np.stack([s.start for s in specs])
    goal = np.stack([s.goal for s in specs])
    # Opposite sides of the wall band, checked here from the geometry.
    side = np.sign(start[:, 0] - env.wall_x) * (np.abs(start[:, 0] - env.wall_x) > WALL_HALF_WIDTH)
    other = np.sign(goal[:, 0] - env.wall_x) * (np.abs(goal[:, 0] - env.wall_x) > WALL_HALF_WIDTH)
    assert np.all(side * other == -1)
    # Blocked, by the simulator itself: one straight move from the start toward the goal stops short.
    reached = wall_step(start, (goal - start) / STEP_SCALE, env.wall_x, env.door_y)
    assert np.all(np.linalg.norm(reached - goal, axis=1) > 1.0)
    # Each goal is the replay of its window: exactly H model steps of recorded actions away.
    fresh = make_env("wall")
    for s in specs:
        assert s.source is not None
        k, offset = s.source
        states, actions = segments[k]
        np.testing.assert_array_equal(fresh.reset(state=states[offset]), s.start)
        np.testing.assert_array_equal(fresh.rollout(actions[offset : offset + env.frameskip * h])[-1], s.goal)
    # Door goals are a subset of replayed windows, and not a handful of repeats.
    assert len({s.source for s in specs}) >= 15


def test_door_goals_are_reproducible_from_the_seed(wall_data: Dataset) -> None:
    env = make_env("wall")
    segments = _segments(wall_data)
    a = make_episode_specs(env, horizon=5, count=8, seed=11, segments=segments, goal_mode="door")
    b = make_episode_specs(make_env("wall"), horizon=5, count=8, seed=11, segments=segments, goal_mode="door")
    c = make_episode_specs(env, horizon=5, count=8, seed=12, segments=segments, goal_mode="door")
    assert [s.source for s in a] == [s.source for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.goal, y.goal)
    assert [s.source for s in a] != [s.source for s in c]
    alone = env.draw_start_goal(np.random.default_rng(a[2].seed), horizon=5, goal_mode="door", segments=segments)
    assert alone.source == a[2].source
    np.testing.assert_array_equal(alone.goal, a[2].goal)


def test_door_goals_refuse_data_with_too_few_windows(wall_data: Dataset) -> None:
    env = make_env("wall")
    segments = _segments(wall_data)
    few = [segments[0]]
    found = len(env.door_windows(few, horizon=LONGEST_H))
    assert found < MIN_DOOR_WINDOWS
    with pytest.raises(ValueError, match=f"at horizon {LONGEST_H} needs at least {MIN_DOOR_WINDOWS} .* found {found} among"):
        make_episode_specs(env, horizon=LONGEST_H, count=2, seed=0, segments=few, goal_mode="door")
    with pytest.raises(ValueError, match="found 0 among the 0 windows"):  # every segment too short
        make_episode_specs(env, horizon=100, count=1, seed=0, segments=segments, goal_mode="door")


def test_door_windows_match_a_plain_scan(wall_data: Dataset) -> None:
    env = make_env("wall")
    segments = _segments(wall_data)
    steps = env.frameskip * 10
    expected = [(i, o) for i, (states, actions) in enumerate(segments) for o in range(len(actions) - steps + 1)
                if door_pairs(states[o], states[o + steps])]
    assert env.door_windows(segments, horizon=10) == expected and expected


def test_door_mode_needs_data_through_the_workflow(wall_data: Dataset, tmp_path: Path) -> None:
    from wmplan.platform.errors import ConfigError

    env = make_env("wall")
    with pytest.raises(ConfigError, match="'door'"):
        episode_specs(env, horizon=5, count=1, seed=0, dataset=None, goal_mode="door")
    specs = episode_specs(env, horizon=5, count=3, seed=0, dataset=wall_data, goal_mode="door")
    assert all(door_pairs(s.start, s.goal) for s in specs)
