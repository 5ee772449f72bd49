"""Data sets: deterministic generation, Parquet round trip, splits by whole trajectories, clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from wmplan.platform.data import DataConfig, DataError, generate_dataset, read_dataset
from wmplan.platform.envs import make_env
from wmplan.platform.errors import ConfigError


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("env", ["wall", "pointmaze", "pusht"])
def test_same_seed_same_bytes_and_round_trip(env, tmp_path):
    config = DataConfig(env=env, episodes=6, steps=20, seed=3)
    a = generate_dataset(config, tmp_path / "a.parquet", workers=1)
    b = generate_dataset(config, tmp_path / "b.parquet", workers=2)  # parallel: same bytes
    assert digest(a) == digest(b)
    c = generate_dataset(DataConfig(env=env, episodes=6, steps=20, seed=4), tmp_path / "c.parquet", workers=1)
    assert digest(a) != digest(c)

    ds = read_dataset(a)
    assert ds.env == env and ds.meta["config"]["seed"] == 3 and ds.frameskip == 5
    assert len(ds.trajectories) == 6
    sim = make_env(env)
    for traj in ds.trajectories:
        assert traj.states.shape == (21, sim.state_dim) and traj.actions.shape == (20, 2)
        assert np.isfinite(traj.actions).all()
        assert (traj.actions >= sim.action_low - 1e-12).all() and (traj.actions <= sim.action_high + 1e-12).all()
    # The stored actions, replayed in the simulator from the stored first state, give the stored states.
    if env != "pusht":  # pymunk's contact cache makes mid-trajectory restores drift slightly
        traj = ds.trajectories[0]
        sim.reset(state=traj.states[0])
        np.testing.assert_allclose(sim.rollout(traj.actions), traj.states, atol=1e-9)


def test_split_is_by_whole_trajectory(tmp_path):
    ds = read_dataset(generate_dataset(DataConfig(env="wall", episodes=20, steps=10, val_fraction=0.25), tmp_path / "d.parquet", workers=1))
    val, train = ds.split("val"), ds.split("train")
    assert len(val) == 5 and len(train) == 15
    assert {t.episode for t in val}.isdisjoint({t.episode for t in train})
    assert sorted(t.episode for t in val) == ds.meta["val_episodes"]


def test_frames_are_stored_and_match_renders(tmp_path):
    ds = read_dataset(generate_dataset(DataConfig(env="wall", episodes=2, steps=5, frames=True, frame_size=32), tmp_path / "f.parquet", workers=1))
    traj = ds.trajectories[0]
    assert traj.frames.shape == (6, 32, 32, 3) and traj.frames.dtype == np.uint8
    sim = make_env("wall")
    sim.reset(state=traj.states[3])
    np.testing.assert_array_equal(traj.frames[3], sim.render(32))


def test_wall_walk_follows_the_von_mises_policy(tmp_path):
    ds = read_dataset(generate_dataset(DataConfig(env="wall", episodes=10, steps=50), tmp_path / "w.parquet", workers=1))
    lengths = np.concatenate([np.linalg.norm(t.actions, axis=1) for t in ds.trajectories])
    assert lengths.min() >= 0.2 - 1e-9 and lengths.max() <= 1.8 * 2**0.5
    assert 0.8 < np.median(lengths) < 1.2


def test_uniform_policy_covers_the_action_box(tmp_path):
    """policy='uniform' draws every action over the whole box: Wall's walk never steps longer than 1.8,
    uniform draws do (the box's corners reach 1.8 * sqrt(2)), and cover each coordinate evenly."""
    path = generate_dataset(DataConfig(env="wall", episodes=10, steps=50, policy="uniform"), tmp_path / "u.parquet", workers=1)
    ds = read_dataset(path)
    actions = np.concatenate([t.actions for t in ds.trajectories])
    lengths = np.linalg.norm(actions, axis=1)
    assert lengths.max() > 1.9 and lengths.min() < 0.2
    assert np.all(np.abs(actions) <= 1.8) and np.all(np.abs(actions.mean(0)) < 0.2)
    assert np.allclose(actions.std(0), 3.6 / 12**0.5, rtol=0.15)  # a uniform's std over [-1.8, 1.8]
    assert ds.meta["config"]["policy"] == "uniform"
    sim = make_env("wall")  # states are what the simulator makes of those actions
    t = ds.trajectories[0]
    sim.reset(state=t.states[0])
    np.testing.assert_allclose(sim.rollout(t.actions)[-1], t.states[-1])
    with pytest.raises(ConfigError, match="policy must be 'task' or 'uniform'"):
        DataConfig(env="wall", policy="random")


def test_pusht_scripted_pusher_moves_the_block(tmp_path):
    ds = read_dataset(generate_dataset(DataConfig(env="pusht", episodes=4, steps=60), tmp_path / "p.parquet", workers=1))
    moved = np.concatenate([np.linalg.norm(np.diff(t.states[:, 2:4], axis=0), axis=1) > 1e-3 for t in ds.trajectories])
    assert moved.mean() > 0.2  # random actions move it in about 2% of steps


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'wal'"):
        DataConfig(env="wal")
    with pytest.raises(ConfigError, match="episodes must be >= 1"):
        DataConfig(env="wall", episodes=0)
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_dataset(tmp_path / "junk.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="not a wmplan data set"):
        read_dataset(tmp_path / "other.parquet")
    good = generate_dataset(DataConfig(env="wall", episodes=3, steps=5), tmp_path / "good.parquet", workers=1)
    data = good.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        read_dataset(tmp_path / "cut.parquet")
