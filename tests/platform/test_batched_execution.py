"""Batched execution: :meth:`Env.final_states` runs many action sequences at once, exactly as one at a time.

Every task is checked against the row-by-row loop (reset, rollout, last state), bit for bit, including
actions outside the bounds and rows that cannot run; Wall's vectorised version is checked for not
disturbing good rows and for leaving subclasses with their own dynamics to the loop; and the plan
snapshots of :func:`run_episodes`, executed in one call per snapshot, come out as the loop gives them.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from wmplan.platform.envs import ENV_NAMES, Env
from wmplan.platform.envs.wall import POS_HI, POS_LO, WallEnv
from wmplan.platform.episode import EpisodeSpec, run_episodes
from wmplan.platform.planners import make_planner
from wmplan.platform.registry import make_task

FIXTURES = "tests.platform.plugin_fixtures"
TASKS = [*ENV_NAMES, f"{FIXTURES}:shifted_wall", f"{FIXTURES}:Drift"]
"""Every registered task (as tests/platform/test_task_contract.py enumerates them)."""


def _loop(env: Env, starts: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What executing the rows one at a time gives (the reference)."""
    finals = np.array(starts, dtype=np.float64)
    ok = np.zeros(len(starts), dtype=bool)
    for i in range(len(starts)):
        try:
            env.reset(state=starts[i])
            finals[i] = env.rollout(actions[i])[-1]
            ok[i] = True
        except ValueError:
            pass
    return finals, ok


def _rows(env: Env, n: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` valid starts and env actions ``[n, steps, A]`` reaching up to one bound-width past each bound."""
    rng = np.random.default_rng(seed)
    starts = np.stack([env.reset(seed=seed * 100 + i) for i in range(n)])
    lo, hi = env.action_low, env.action_high
    return starts, rng.uniform(lo - (hi - lo), hi + (hi - lo), size=(n, steps, env.action_dim))


@pytest.mark.parametrize("task", TASKS)
def test_final_states_is_the_row_by_row_loop(task: str) -> None:
    env = make_task(task)
    steps = 2 * env.frameskip
    starts, actions = _rows(env, 4, steps, seed=1)
    actions[2, steps // 2, 0] = np.nan  # a row that cannot run
    starts[3, 0] = np.nan  # a start that cannot be set
    expected, expected_ok = _loop(copy.deepcopy(env), starts, actions)
    finals, ok = env.final_states(starts, actions)
    assert finals.dtype == np.float64 and finals.shape == starts.shape and ok.dtype == bool
    np.testing.assert_array_equal(ok, [True, True, False, False])
    np.testing.assert_array_equal(ok, expected_ok)
    np.testing.assert_array_equal(finals, expected)
    np.testing.assert_array_equal(finals[~ok], starts[~ok])  # a row that did not run ends where it started
    assert not np.array_equal(finals[:2], starts[:2])  # the good rows did move

    none, none_ok = env.final_states(starts[:2], actions[:2, :0])  # no actions: where a reset puts the start
    np.testing.assert_array_equal(none, _loop(copy.deepcopy(env), starts[:2], actions[:2, :0])[0])
    assert none_ok.all()
    with pytest.raises(ValueError, match="final_states needs"):
        env.final_states(starts, actions[:2])


@pytest.mark.parametrize("wall_x", [32.0, 40.0])
def test_wall_bad_rows_do_not_disturb_the_others(wall_x: float) -> None:
    env = WallEnv(wall_x=wall_x, seed=0)
    starts, actions = _rows(env, 6, 25, seed=2)
    bad_starts = np.array([[wall_x, 10.0], [POS_HI + 1.0, 30.0], [POS_LO, np.inf], [20.0, 20.0]])  # last: a NaN action
    bad_actions = np.zeros((4, 25, 2))
    bad_actions[3, 7, 1] = np.nan
    mixed_starts = np.concatenate([starts[:3], bad_starts, starts[3:]])
    mixed_actions = np.concatenate([actions[:3], bad_actions, actions[3:]])
    good, good_ok = env.final_states(starts, actions)
    finals, ok = env.final_states(mixed_starts, mixed_actions)
    assert good_ok.all()
    np.testing.assert_array_equal(ok, [True] * 3 + [False] * 4 + [True] * 3)
    np.testing.assert_array_equal(finals[ok], good)
    np.testing.assert_array_equal(finals[~ok], bad_starts)
    expected, expected_ok = _loop(WallEnv(wall_x=wall_x), mixed_starts, mixed_actions)
    np.testing.assert_array_equal(ok, expected_ok)
    np.testing.assert_array_equal(finals, expected)


class StuckWall(WallEnv):
    """A user's variant of Wall whose dot never moves: its own ``_step``, not Wall's."""

    def _step(self, action: np.ndarray) -> np.ndarray:
        assert self._state is not None
        return self._state.copy()


def test_a_wall_subclass_with_its_own_dynamics_gets_the_loop() -> None:
    env = StuckWall(seed=0)
    starts, actions = _rows(env, 3, 10, seed=3)
    finals, ok = env.final_states(starts, actions)
    assert ok.all()
    np.testing.assert_array_equal(finals, starts)


# -- run_episodes: plan snapshots, one final_states call each --------------------------------------------


class LoopingWall(WallEnv):
    """Wall executing plan snapshots with Env's row-by-row loop instead of the vectorised override."""

    def final_states(self, starts: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return Env.final_states(self, starts, actions)


class BlindRight(torch.nn.Module):
    """``p' = p + 2 * sum of the 5 packed env actions``, blind to the wall; NaN right of x = 50 (planner failures)."""

    def __init__(self) -> None:
        super().__init__()
        self.state_dim, self.action_dim = 2, 10
        self.register_buffer("action_low", torch.full((10,), -1.8))
        self.register_buffer("action_high", torch.full((10,), 1.8))

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        out = state + 2 * action.reshape(*action.shape[:-1], 5, 2).sum(-2)
        return torch.where(state[..., :1] > 50, torch.nan, out)


def test_run_episodes_snapshots_are_what_the_loop_gives() -> None:
    pairs = [
        ((12.0, 20.0), (20.0, 40.0)),  # same side, reachable in 3 steps
        ((15.0, 50.0), (45.0, 50.0)),  # across, the straight line blocked by the wall
        ((55.0, 50.0), (40.0, 35.0)),  # the model fails (x > 50)
        ((10.0, 10.0), (25.0, 12.0)),  # same side, near
        ((32.0, 10.0), (20.0, 40.0)),  # a start in the wall
        ((40.0, 45.0), (48.0, 20.0)),  # same side, right of the wall
        ((20.0, 28.0), (44.0, 31.0)),  # through the door
    ]
    specs = [EpisodeSpec("wall", 3, i, 100 + i, np.array(a), np.array(b)) for i, (a, b) in enumerate(pairs)]
    snaps = [1, 5, 10, 20, 40]

    def run(sim: Env) -> list:
        planner = make_planner("gd", horizon=3, iterations=40, lr=0.1, action_noise=0.0, init_std=0.0)
        return run_episodes(sim, BlindRight(), planner, specs, planner_name="gd", plan_seed=0, snapshot_iterations=snaps)

    batched, looped = run(WallEnv(seed=0)), run(LoopingWall(seed=0))
    assert [r.success_by_iteration for r in batched] == [r.success_by_iteration for r in looped]
    assert [r.success for r in batched] == [r.success for r in looped]
    judged = [r for r in batched if not r.failed]
    assert [r.episode_id for r in batched if r.failed] == [2, 4]  # planner failure, invalid start: no curve
    assert all(r.success_by_iteration == () for r in batched if r.failed)
    assert all(len(r.success_by_iteration) == len(snaps) for r in judged)
    assert all(r.success_by_iteration[-1] == r.success for r in judged)  # the last snapshot is the executed plan
    curves = np.array([r.success_by_iteration for r in judged])
    assert curves.any() and not curves.all()  # the comparison sees both outcomes
