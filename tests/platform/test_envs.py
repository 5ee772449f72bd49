"""Tests of the three task simulators (wall, pointmaze, pusht) and their shared helpers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from wmplan.platform.envs import ENV_NAMES, make_env, pack_actions, unpack_actions
from wmplan.platform.envs.pointmaze import maze_valid
from wmplan.platform.envs.pusht import agent_overlaps_block
from wmplan.platform.envs.wall import POS_HI, POS_LO, wall_step, wall_valid
from wmplan.platform.errors import ConfigError

# ------------------------------------------------------------------------------------------------
# Wall


def _path_through_wall(p: np.ndarray, r: np.ndarray, wx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Which straight paths ``p -> r`` pass through the wall's interior (anywhere but the door).

    Independent of the implementation: parametrise the part of the path inside the open band
    ``|x - wx| < 3`` and require its ``y`` (linear, so checking the ends suffices) to be in the door.
    """
    wl, wr, db, dt = wx - 3, wx + 3, dy - 4, dy + 4
    d = r - p
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (wl - p[:, 0]) / d[:, 0]
        t2 = (wr - p[:, 0]) / d[:, 0]
    moving = np.abs(d[:, 0]) > 0
    ta = np.where(moving, np.clip(np.minimum(t1, t2), 0, 1), 0.0)
    tb = np.where(moving, np.clip(np.maximum(t1, t2), 0, 1), 1.0)
    in_band = np.where(moving, tb - ta > 1e-12, (p[:, 0] > wl) & (p[:, 0] < wr))
    ya = p[:, 1] + ta * d[:, 1]
    yb = p[:, 1] + tb * d[:, 1]
    tol = 1e-7
    out_of_door = (np.minimum(ya, yb) < db - tol) | (np.maximum(ya, yb) > dt + tol)
    return in_band & out_of_door


def _random_valid_positions(rng: np.random.Generator, n: int, wx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    pos = rng.uniform(POS_LO, POS_HI, size=(n, 2))
    # A third of the starts in or at the edges of the door (inside the wall band).
    k = n // 3
    pos[:k, 0] = wx[:k] + rng.uniform(-3, 3, size=k)
    pos[:k, 1] = dy[:k] + rng.choice([-4.0, 4.0, 0.0], size=k) * rng.uniform(0, 1, size=k) ** 0.1
    valid = wall_valid(pos, wx, dy)
    return pos[valid], valid


def test_wall_is_never_crossed_except_through_the_door_at_any_speed() -> None:
    rng = np.random.default_rng(0)
    n = 30_000
    wx = rng.uniform(20, 44, size=n)
    dy = rng.uniform(12, 52, size=n)
    pos, valid = _random_valid_positions(rng, n, wx, dy)
    wx, dy = wx[valid], dy[valid]
    m = len(pos)
    scale = 10.0 ** rng.integers(-1, 7, size=(m, 1))  # from 0.2 px to millions of px per step
    actions = rng.standard_normal((m, 2)) * scale
    actions[: m // 10, 1] = 0.0  # horizontal moves straight at the wall
    res = wall_step(pos, actions, wx, dy)
    assert res.shape == (m, 2)
    assert wall_valid(res, wx, dy).all()
    assert not _path_through_wall(pos, res, wx, dy).any()
    # The check itself can fail: the unobstructed targets would often cross the wall.
    naive = np.clip(pos + 2 * actions, POS_LO, POS_HI)
    assert _path_through_wall(pos, naive, wx, dy).mean() > 0.1


def test_wall_long_rollouts_change_side_only_through_the_door() -> None:
    env = make_env("wall")
    rng = np.random.default_rng(1)
    n = 2_000
    pos = np.stack([env.sample_start_goal(rng)[0] for _ in range(n)])
    crossings = 0
    for _ in range(150):
        a = rng.uniform(env.action_low, env.action_high, size=(n, 2)) * rng.choice([1.0, 50.0], size=(n, 1))
        a = np.clip(a, env.action_low, env.action_high)
        nxt = wall_step(pos, a, env.wall_x, env.door_y)
        assert wall_valid(nxt, env.wall_x, env.door_y).all()
        assert not _path_through_wall(pos, nxt, np.full(n, env.wall_x), np.full(n, env.door_y)).any()
        side0, side1 = np.sign(pos[:, 0] - env.wall_x), np.sign(nxt[:, 0] - env.wall_x)
        changed = (side0 != side1) & (np.abs(nxt[:, 0] - env.wall_x) > 3)
        if changed.any():  # a dot that changed side is in the door's rows
            assert (np.abs(nxt[changed, 1] - env.door_y) <= 4 + 3.6).all()
        crossings += int(changed.sum())
        pos = nxt
    assert crossings > 0  # random walks do find the door


def test_wall_blocks_and_door_passes() -> None:
    # Blocked at any speed: set back 0.5 px off the face it hit.
    np.testing.assert_allclose(wall_step(np.array([20.0, 10.0]), np.array([1e6, 0.0])), [28.5, 10.0])
    np.testing.assert_allclose(wall_step(np.array([40.0, 50.0]), np.array([-1e9, 0.0])), [35.5, 50.0])
    # From inside the door, running into its lower edge: set back into the door.
    np.testing.assert_allclose(wall_step(np.array([32.0, 30.0]), np.array([0.0, -1e6])), [32.0, 26.5])
    # Straight through the door, at any speed: stopped only by the border.
    np.testing.assert_allclose(wall_step(np.array([20.0, 30.0]), np.array([1e6, 0.0])), [POS_HI, 30.0])
    # Through the env, with clipped actions, step by step.
    env = make_env("wall")
    env.reset(state=np.array([20.0, 31.0]))
    for _ in range(10):
        s = env.step(np.array([1e3, 0.0]))  # clipped to 1.8
    assert s[0] > 35 and s[1] == 31.0
    env.reset(state=np.array([20.0, 10.0]))
    for _ in range(10):
        s = env.step(np.array([1.8, 0.0]))
    assert s[0] < 29
    with pytest.raises(ValueError):
        env.reset(state=np.array([32.0, 10.0]))  # inside the wall


def test_wall_start_goal_on_opposite_sides() -> None:
    env = make_env("wall")
    rng = np.random.default_rng(2)
    pairs = [env.sample_start_goal(rng) for _ in range(200)]
    s = np.stack([p[0] for p in pairs])
    g = np.stack([p[1] for p in pairs])
    assert (np.sign(s[:, 0] - 32) == -np.sign(g[:, 0] - 32)).all()
    assert 0.3 < (s[:, 0] < 32).mean() < 0.7
    both = np.concatenate([s, g])
    assert (np.abs(both[:, 0] - 32) >= 6.4 - 1e-9).all()
    assert ((both >= 7.4 - 1e-9) & (both <= 56.6 + 1e-9)).all()


# ------------------------------------------------------------------------------------------------
# PointMaze


def test_pointmaze_stays_in_the_corridor() -> None:
    env = make_env("pointmaze", seed=3)
    rng = np.random.default_rng(3)
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for episode in range(12):
        env.reset()
        # Half the episodes push hard in one direction for a while (into walls), half wander.
        pushes = np.repeat(np.sign(rng.standard_normal((10, 2))), 25, axis=0)
        wander = rng.uniform(-1, 1, size=(250, 2))
        for a in pushes if episode % 2 == 0 else wander:
            s = env.step(a * 3)  # beyond the bounds: clipped to [-1, 1]
            assert maze_valid(s[:2], margin=0.02), s
            lo, hi = np.minimum(lo, s[:2]), np.maximum(hi, s[:2])
    assert (lo > 0.33).all() and (hi < 3.27).all(), (lo, hi)
    assert (lo < 0.6).all() and (hi > 3.0).all()  # it did explore the whole maze


def test_pointmaze_moves_along_the_arm_and_resets_exactly() -> None:
    env = make_env("pointmaze")
    state = np.array([0.8, 0.8, 0.0, 0.0])
    np.testing.assert_array_equal(env.reset(state=state), state)
    for _ in range(60):
        s = env.step(np.array([0.0, 1.0]))
    assert s[1] > 2.9 and abs(s[0] - 0.8) < 0.05  # up the left arm to the bend, not through walls
    for _ in range(60):
        s = env.step(np.array([1.0, 0.0]))
    assert s[0] > 2.9 and s[1] > 2.4  # along the bend to the right arm
    with pytest.raises(ValueError):
        env.reset(state=np.array([1.8, 1.0, 0.0, 0.0]))  # inside the middle wall


def test_pointmaze_start_goal_valid() -> None:
    env = make_env("pointmaze")
    rng = np.random.default_rng(4)
    for _ in range(200):
        for s in env.sample_start_goal(rng):
            assert maze_valid(s[:2], margin=0.1 - 1e-9)
            assert ((s[:2] >= 0.5) & (s[:2] <= 3.1)).all() and (np.abs(s[2:]) <= 5.23).all()


# ------------------------------------------------------------------------------------------------
# Push-T


def test_pusht_reset_returns_the_exact_state() -> None:
    env = make_env("pusht")
    rng = np.random.default_rng(5)
    states = [np.array([100.0, 200.0, 256.0, 256.0, np.pi / 4, 3.0, -2.0])]
    states += [
        env.sample_start_goal(rng)[0] + np.r_[rng.uniform(-0.5, 0.5, 5), rng.normal(0, 20, 2)]
        for _ in range(20)
    ]
    for state in states:
        state[4] %= 2 * np.pi
        got = env.reset(state=state)
        np.testing.assert_allclose(got, state, atol=1e-6, rtol=0)
        np.testing.assert_allclose(env.state, state, atol=1e-6, rtol=0)
    # The block's body really is where the state says (the T's centroid follows from the pose).
    env.reset(state=np.array([100.0, 100.0, 256.0, 256.0, np.pi / 4, 0.0, 0.0]))
    cog = env.block.local_to_world(env.block.center_of_gravity)
    np.testing.assert_allclose(
        [cog.x, cog.y], [256 - 45 * np.sin(np.pi / 4), 256 + 45 * np.cos(np.pi / 4)], atol=1e-6
    )


def test_pusht_dynamics_are_deterministic_and_push() -> None:
    env = make_env("pusht")
    start = np.array([150.0, 210.0, 256.0, 200.0, 0.0, 0.0, 0.0])  # agent left of the T's bar
    actions = np.tile([0.5, 0.0], (15, 1))
    env.reset(state=start)
    traj1 = env.rollout(actions)
    env.reset(state=start)
    traj2 = env.rollout(actions)
    np.testing.assert_array_equal(traj1, traj2)
    assert traj1.shape == (16, 7)
    assert traj1[-1, 0] > start[0] + 100  # the agent moved right
    assert traj1[-1, 2] > start[2] + 20  # and pushed the block
    env.reset(state=np.array([100.0, 400.0, 300.0, 150.0, 0.0, 0.0, 0.0]))
    s = env.rollout(np.tile([0.0, -0.3], (5, 1)))[-1]
    np.testing.assert_allclose(s[2:5], [300.0, 150.0, 0.0], atol=1e-9)  # untouched block stays


def test_pusht_random_states_follow_dino_wm() -> None:
    env = make_env("pusht")
    rng = np.random.default_rng(6)
    for _ in range(100):
        for s in env.sample_start_goal(rng):
            assert ((s[:2] >= 50) & (s[:2] < 450)).all() and ((s[2:4] >= 100) & (s[2:4] < 400)).all()
            assert 0 <= s[4] < 2 * np.pi and (s[5:] == 0).all()
            assert not agent_overlaps_block(s)
    assert agent_overlaps_block(np.array([256.0, 270.0, 256.0, 256.0, 0.0, 0.0, 0.0]))  # on the bar


# ------------------------------------------------------------------------------------------------
# Shared behaviour


@pytest.mark.parametrize("name", ENV_NAMES)
def test_reset_with_the_same_seed_gives_the_same_state(name: str) -> None:
    env = make_env(name)
    a, b, c = env.reset(seed=7), env.reset(seed=7), env.reset(seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert make_env(name, seed=9).reset().tolist() == make_env(name, seed=9).reset().tolist()
    assert a.shape == (env.state_dim,) and a.dtype == np.float64


@pytest.mark.parametrize("name", ENV_NAMES)
def test_a_pickled_env_keeps_its_state(name: str) -> None:
    env = make_env(name, seed=11)
    env.reset(seed=11)
    for _ in range(3):
        env.step(np.array([0.3, 0.2]))
    clone = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(clone.state, env.state)
    fresh = make_env(name)
    fresh.reset(state=env.state)
    a = np.array([0.5, -0.4])
    np.testing.assert_allclose(clone.step(a), fresh.step(a), atol=1e-6)


def _centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    assert len(rows) > 0
    return np.array([cols.mean(), rows.mean()])


@pytest.mark.parametrize(
    "name, s1, s2",
    [
        ("wall", [12.0, 12.0], [50.0, 45.0]),
        ("pointmaze", [0.8, 0.8, 0.0, 0.0], [2.8, 2.2, 0.0, 0.0]),
        ("pusht", [100.0, 100.0, 300.0, 300.0, 0.0, 0.0, 0.0], [400.0, 150.0, 300.0, 300.0, 0.0, 0.0, 0.0]),
    ],
)
def test_render_shape_and_the_moving_thing_moves(name: str, s1: list[float], s2: list[float]) -> None:
    env = make_env(name)

    def expected_and_mask(state: np.ndarray, img: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        r, g, b = (img[..., i].astype(int) for i in range(3))
        if name == "wall":  # the reddest pixels, pixel unit = 65 / size
            return (state[:2] + 0.5) * size / 65 - 0.5, (r > 200) & (g < 100)
        if name == "pointmaze":  # the green ball; x to the right, y up, view [-0.7, 4.3]
            x, y = (state[0] + 0.7) / 5 * size - 0.5, (4.3 - state[1]) / 5 * size - 0.5
            return np.array([x, y]), (g > r + 40) & (g > b + 40)
        return state[:2] / 512 * size - 0.5, (b > 180) & (r < 120)  # the blue agent

    for size in (64, 96):
        centres = []
        for s in (s1, s2):
            state = np.array(s)
            env.reset(state=state)
            img = env.render(size)
            assert img.shape == (size, size, 3) and img.dtype == np.uint8
            expected, mask = expected_and_mask(state, img, size)
            centre = _centroid(mask)
            np.testing.assert_allclose(centre, expected, atol=1.0)
            centres.append(centre)
        assert np.linalg.norm(centres[0] - centres[1]) > size / 5


def test_is_success_thresholds() -> None:
    wall, maze, pusht = make_env("wall"), make_env("pointmaze"), make_env("pusht")
    g = np.array([30.0, 30.0])
    assert wall.is_success(np.array([30.0, 34.4]), g) is True
    assert wall.is_success(np.array([30.0, 34.6]), g) is False
    np.testing.assert_array_equal(wall.is_success(np.array([[33.0, 33.0], [34.0, 34.0]]), g), [True, False])

    gm = np.array([1.0, 1.0, 0.0, 0.0])
    assert maze.is_success(np.array([1.49, 1.0, 4.0, -4.0]), gm) is True  # velocity is ignored
    assert maze.is_success(np.array([1.0, 1.51, 0.0, 0.0]), gm) is False

    gp = np.array([100.0, 100.0, 200.0, 200.0, 0.05, 0.0, 0.0])
    states = np.array(
        [
            [100.0, 100.0, 200.0, 219.0, 0.05, 50.0, 50.0],  # 19 px apart: success
            [110.0, 100.0, 200.0, 218.0, 0.05, 0.0, 0.0],  # sqrt(10^2 + 18^2) = 20.6 px: failure
            [100.0, 100.0, 200.0, 200.0, 2 * np.pi - 0.25, 0.0, 0.0],  # angle 0.3 apart across 0
            [100.0, 100.0, 200.0, 200.0, 0.05 + np.pi / 9 + 0.01, 0.0, 0.0],  # angle too far
            [100.0, 100.0, 200.0, 200.0, 0.05 + 2 * np.pi, 0.0, 0.0],  # the same angle, unwrapped
        ]
    )
    np.testing.assert_array_equal(pusht.is_success(states, gp), [True, False, True, False, True])
    assert pusht.is_success(states[0], gp) is True


def test_pack_unpack_round_trip() -> None:
    rng = np.random.default_rng(10)
    actions = rng.standard_normal((4 * 5, 2))
    packed = pack_actions(actions)
    assert packed.shape == (4, 10)
    for t in range(4):
        for f in range(5):
            np.testing.assert_array_equal(packed[t, 2 * f : 2 * f + 2], actions[5 * t + f])
    np.testing.assert_array_equal(unpack_actions(packed), actions)
    batch = rng.standard_normal((3, 6, 2))  # leading dims and other frameskips work too
    np.testing.assert_array_equal(unpack_actions(pack_actions(batch, 3), 3), batch)
    torch = pytest.importorskip("torch")
    tb = torch.from_numpy(batch)
    assert torch.equal(unpack_actions(pack_actions(tb, 2), 2), tb)
    with pytest.raises(ValueError):
        pack_actions(np.zeros((7, 2)))
    with pytest.raises(ValueError):
        unpack_actions(np.zeros((2, 7)))


def test_make_env_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        make_env("walll")
    message = str(info.value)
    for name in ENV_NAMES:
        assert name in message
    assert "did you mean 'wall'" in message
    for name in ENV_NAMES:
        assert make_env(name).name == name
