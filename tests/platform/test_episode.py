"""Episodes: start/goal specs, batched planning, execution and judging in the real simulator, summaries."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from wmplan.platform.envs import make_env, unpack_actions
from wmplan.platform.envs.pointmaze import maze_valid
from wmplan.platform.envs.wall import WallEnv, wall_valid
from wmplan.platform.episode import (
    EpisodeRecord,
    EpisodeSpec,
    from_model_space,
    make_episode_specs,
    run_episodes,
    summarize,
    to_model_space,
)
from wmplan.platform.planners import GD, GDOptions, make_planner
from wmplan.platform.stats import wald_interval

FS = 5  # frameskip of every task


# -- analytic world models of the wall task ----------------------------------------------------------


class WallAgnostic(torch.nn.Module):
    """``p' = p + 2 * sum of the 5 packed env actions``: exact in free space, blind to the wall."""

    def __init__(self) -> None:
        super().__init__()
        self.state_dim, self.action_dim = 2, 2 * FS
        self.register_buffer("action_low", torch.full((2 * FS,), -1.8))
        self.register_buffer("action_high", torch.full((2 * FS,), 1.8))

    def step(self, state, action):
        return state + 2 * action.reshape(*action.shape[:-1], FS, 2).sum(-2)


class Normalised(WallAgnostic):
    """The same dynamics in a normalised state space, with ``encode``/``decode``."""

    MEAN, SCALE = 32.0, 10.0

    def encode(self, s):
        return (s - self.MEAN) / self.SCALE

    def decode(self, z):
        return z * self.SCALE + self.MEAN

    def step(self, state, action):
        return state + 2 * action.reshape(*action.shape[:-1], FS, 2).sum(-2) / self.SCALE


class Poisoned(WallAgnostic):
    """NaN for every state with ``x > 40`` (only episodes on the far right are affected)."""

    def step(self, state, action):
        out = super().step(state, action)
        return torch.where(state[..., :1] > 40, torch.nan, out)


class CountingWall(WallEnv):
    """A wall env that counts simulator steps over all its copies (class-level counter)."""

    steps = 0

    def _step(self, action):
        type(self).steps += 1
        return super()._step(action)


class FragileWall(WallEnv):
    """A wall env whose simulator raises once the dot goes below y = 50."""

    def _step(self, action):
        out = super()._step(action)
        if out[1] > 50:
            raise RuntimeError("simulator exploded")
        return out


class SpyGD(GD):
    """GD that records each call's inputs and the simulator step count around it.

    The record is shared by the class, because MPC replans with ``planner.replace(horizon=...)``.
    """

    calls: list = []

    def plan(self, model, start, goal, *, seed=None, init_actions=None, snapshot_iterations=()):
        before = CountingWall.steps
        result = super().plan(model, start, goal, seed=seed, init_actions=init_actions, snapshot_iterations=snapshot_iterations)
        self.calls.append(dict(start=start.clone(), init=None if init_actions is None else init_actions.clone(),
                               seed=seed, actions=result.actions.clone(), sim_steps=CountingWall.steps - before))
        return result


def exact_gd(h: int, iterations: int = 150) -> GD:
    """Deterministic GD from zero actions: on the linear models above its plan is a straight line."""
    return make_planner("gd", horizon=h, iterations=iterations, lr=0.1, action_noise=0.0, init_std=0.0)  # type: ignore[return-value]


def spec(i: int, start, goal, h: int = 3) -> EpisodeSpec:
    return EpisodeSpec("wall", h, i, 100 + i, np.asarray(start, float), np.asarray(goal, float))


SAME_SIDE = [spec(0, (12.0, 20.0), (20.0, 40.0)), spec(1, (50.0, 50.0), (40.0, 35.0))]
ACROSS_BLOCKED = spec(2, (15.0, 50.0), (50.0, 50.0))  # the straight line hits the wall far from the door


# -- specs ---------------------------------------------------------------------------------------------


def test_specs_are_reproducible_and_differ_with_seed():
    env = make_env("wall")
    a = make_episode_specs(env, horizon=5, count=6, seed=7)
    b = make_episode_specs(env, horizon=5, count=6, seed=7)
    c = make_episode_specs(env, horizon=5, count=6, seed=8)
    assert [s.episode_id for s in a] == list(range(6))
    assert all(s.task == "wall" and s.horizon == 5 for s in a)
    for x, y in zip(a, b):
        assert x.seed == y.seed and np.array_equal(x.start, y.start) and np.array_equal(x.goal, y.goal)
    assert len({s.seed for s in a}) == 6  # each episode has its own seed
    assert not any(np.array_equal(x.start, y.start) for x, y in zip(a, c))
    assert {s.seed for s in a}.isdisjoint({s.seed for s in c})
    # an episode's pair comes from its own seed alone
    s3 = a[3]
    start, goal = env.sample_start_goal(np.random.default_rng(s3.seed))
    assert np.array_equal(start, s3.start) and np.array_equal(goal, s3.goal)
    assert not s3.start.flags.writeable


def test_wall_specs_are_on_opposite_sides():
    env = make_env("wall")
    specs = make_episode_specs(env, horizon=5, count=40, seed=0)
    for s in specs:
        assert (s.start[0] - env.wall_x) * (s.goal[0] - env.wall_x) < 0
        assert wall_valid(s.start) and wall_valid(s.goal)
    assert len({bool(s.start[0] < env.wall_x) for s in specs}) == 2  # both orders occur


def test_pointmaze_specs_are_valid_and_reproducible():
    env = make_env("pointmaze")
    a = make_episode_specs(env, horizon=5, count=5, seed=1)
    b = make_episode_specs(env, horizon=5, count=5, seed=1)
    assert all(np.array_equal(x.goal, y.goal) for x, y in zip(a, b))
    assert all(maze_valid(s.start[:2]) and maze_valid(s.goal[:2]) and s.start.shape == (4,) for s in a)


def _pusht_segments(env, lengths, seed=0):
    rng = np.random.default_rng(seed)
    segments = []
    for t in lengths:
        env.reset(seed=int(rng.integers(1 << 30)))
        actions = rng.uniform(-0.5, 0.5, size=(t, 2))
        segments.append((env.rollout(actions), actions))
    return segments


def test_pusht_specs_replay_segments_to_the_goal():
    env = make_env("pusht")
    h = 2
    segments = _pusht_segments(env, [4, 25, 14])  # the first is too short for 10 actions
    specs = make_episode_specs(env, horizon=h, count=6, seed=3, segments=segments)
    again = make_episode_specs(env, horizon=h, count=6, seed=3, segments=segments)
    fresh = make_env("pusht")
    for s, s2 in zip(specs, again):
        assert s.source is not None
        k, offset = s.source
        states, actions = segments[k]
        assert k != 0 and 0 <= offset <= len(actions) - FS * h
        np.testing.assert_allclose(s.start, states[offset])
        fresh.reset(state=s.start)
        replayed = fresh.rollout(actions[offset : offset + FS * h])
        np.testing.assert_allclose(replayed[-1], s.goal)
        assert np.linalg.norm(s.goal[:2] - s.start[:2]) > 1.0  # the agent moved
        assert s2.source == s.source and np.array_equal(s2.goal, s.goal)
    assert len({s.source for s in specs}) > 1


def test_pusht_without_usable_segments_raises():
    env = make_env("pusht")
    with pytest.raises(ValueError, match="segments"):
        make_episode_specs(env, horizon=2, count=2, seed=0)
    short = _pusht_segments(env, [9, 5])
    with pytest.raises(ValueError, match="no segment is long enough.*10 env actions"):
        make_episode_specs(env, horizon=2, count=2, seed=0, segments=short)
    with pytest.raises(ValueError, match="segment 0"):
        make_episode_specs(env, horizon=2, count=2, seed=0, segments=[(np.zeros((5, 7)), np.zeros((5, 2)))])


# -- model space ---------------------------------------------------------------------------------------


def test_model_space_helpers():
    x = torch.tensor([[42.0, 12.0]])
    plain, norm = WallAgnostic(), Normalised()
    assert to_model_space(plain, x) is x and from_model_space(plain, x) is x
    z = to_model_space(norm, x)
    torch.testing.assert_close(z, torch.tensor([[1.0, -2.0]]))
    torch.testing.assert_close(from_model_space(norm, z), x)


def test_model_action_must_pack_frameskip_env_actions():
    from wmplan.platform.world_model import LinearModel

    env = make_env("wall")
    model = LinearModel(torch.eye(2), torch.eye(2))  # action_dim 2, not 10
    with pytest.raises(ValueError, match="frameskip"):
        run_episodes(env, model, exact_gd(3), SAME_SIDE, planner_name="gd")


def test_specs_must_match_env_and_planner():
    env = make_env("wall")
    with pytest.raises(ValueError, match="horizon"):
        run_episodes(env, WallAgnostic(), exact_gd(4), SAME_SIDE, planner_name="gd")
    with pytest.raises(ValueError, match="task"):
        run_episodes(env, WallAgnostic(), exact_gd(3), [dataclasses.replace(SAME_SIDE[0], task="pusht")], planner_name="gd")
    with pytest.raises(ValueError, match="mode"):
        run_episodes(env, WallAgnostic(), exact_gd(3), SAME_SIDE, planner_name="gd", mode="closed")  # type: ignore[arg-type]
    assert run_episodes(env, WallAgnostic(), exact_gd(3), [], planner_name="gd") == []


# -- open loop ---------------------------------------------------------------------------------------


def test_open_loop_records_are_complete():
    env = make_env("wall")
    h, iters = 3, 30
    specs = make_episode_specs(env, horizon=h, count=3, seed=0)
    planner = make_planner("grasp", horizon=h, iterations=iters, sync_interval=10, sync_steps=2)
    records = run_episodes(env, WallAgnostic(), planner, specs, planner_name="grasp", plan_seed=5)
    assert len(records) == 3
    for r, s in zip(records, specs):
        assert (r.task, r.planner, r.horizon, r.episode_id, r.seed, r.mode) == ("wall", "grasp", h, s.episode_id, s.seed, "open_loop")
        assert r.plan_seed == 5 and r.replans == 1 and r.iterations == iters
        assert r.failed is False and r.error is None
        assert isinstance(r.success, bool) and isinstance(r.model_success, bool)
        assert r.planning_time_s > 0 and math.isfinite(r.final_distance) and math.isfinite(r.model_final_distance)
        assert r.executed_states.shape == (h * FS + 1, 2) and r.actions.shape == (h * FS, 2)
        np.testing.assert_array_equal(r.executed_states[0], s.start)
        # the executed states are the real simulator's response to the recorded actions
        env.reset(state=s.start)
        np.testing.assert_allclose(env.rollout(r.actions), r.executed_states)
        assert r.final_distance == pytest.approx(np.linalg.norm(r.executed_states[-1] - s.goal))
        assert r.success == bool(env.is_success(r.executed_states[-1], s.goal))
        assert r.residual is not None and r.residual.shape == (iters, h) and r.residual.dtype == np.float32
        row = r.to_row()
        assert not any(isinstance(v, np.ndarray) for v in row.values())
        expected = {f.name for f in dataclasses.fields(EpisodeRecord)} - {"executed_states", "actions", "residual"}
        assert expected <= set(row) and row["executed_steps"] == h * FS
    assert len({r.planning_time_s for r in records}) == 1  # one batched call: every episode gets its time
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[0].success = True  # type: ignore[misc]


def test_plan_is_deterministic_given_plan_seed():
    env = make_env("wall")
    specs = make_episode_specs(env, horizon=3, count=2, seed=0)
    planner = make_planner("grasp", horizon=3, iterations=20, sync_interval=10, sync_steps=2, noise_scale=0.05)

    def actions(seed):
        return [r.actions for r in run_episodes(env, WallAgnostic(), planner, specs, planner_name="grasp", plan_seed=seed)]

    for x, y in zip(actions(1), actions(1)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(actions(None), actions(None)):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(actions(1), actions(2)))


def test_exact_model_succeeds_and_agrees_with_the_simulator():
    env = make_env("wall")
    records = run_episodes(env, WallAgnostic(), exact_gd(3), SAME_SIDE, planner_name="gd", plan_seed=0)
    for r in records:
        assert r.success and r.model_success
        assert r.final_distance < 1.0
        assert r.model_final_distance == pytest.approx(r.final_distance, abs=1e-3)


def test_encoded_model_plans_in_its_own_space():
    env = make_env("wall")
    records = run_episodes(env, Normalised(), exact_gd(3, iterations=200), SAME_SIDE, planner_name="gd", plan_seed=0)
    for r in records:
        assert r.success and r.model_success
        # the model's prediction was decoded back to pixels before measuring
        assert r.model_final_distance == pytest.approx(r.final_distance, abs=1e-3)


def test_success_is_judged_in_the_real_simulator():
    env = make_env("wall")
    (r,) = run_episodes(env, WallAgnostic(), exact_gd(3), [ACROSS_BLOCKED], planner_name="gd", plan_seed=0)
    assert r.model_success and r.model_final_distance < 1.0  # the wall-blind model thinks it arrived
    assert not r.success and r.final_distance > 15.0  # the real dot is stopped by the wall
    assert r.executed_states[-1][0] < env.wall_x - 3
    assert not r.failed


# -- MPC ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h, every, calls", [(4, 3, 2), (4, 1, 4), (3, 5, 1)])
def test_mpc_replans_a_fixed_number_of_times(h, every, calls):
    env = CountingWall()
    specs = [spec(0, (12.0, 20.0), (20.0, 40.0), h), spec(1, (15.0, 50.0), (50.0, 50.0), h)]
    iters = 20
    # a random initialisation and few steps leave the plan's actions different from each other,
    # so the test can tell how the warm start was shifted
    planner = SpyGD(GDOptions(horizon=h, iterations=iters, lr=0.1, action_noise=0.0, init_std=0.5))
    SpyGD.calls = []
    CountingWall.steps = 0
    records = run_episodes(env, WallAgnostic(), planner, specs, planner_name="gd", mode="mpc", replan_every=every, plan_seed=3)
    assert len(SpyGD.calls) == calls
    assert CountingWall.steps == 2 * h * FS  # every episode executes exactly H * frameskip env steps
    assert all(c["sim_steps"] == 0 for c in SpyGD.calls)  # the simulator is never touched while planning
    for r, s in zip(records, specs):
        assert r.mode == "mpc" and r.replans == calls and r.iterations == calls * iters
        assert r.actions.shape == (h * FS, 2) and r.executed_states.shape == (h * FS + 1, 2)
        np.testing.assert_array_equal(r.executed_states[0], s.start)
    assert SpyGD.calls[0]["seed"] == 3 and SpyGD.calls[0]["init"] is None
    for k in range(1, calls):
        prev, cur = SpyGD.calls[k - 1], SpyGD.calls[k]
        # replanning starts from the real state reached ...
        for b, r in enumerate(records):
            np.testing.assert_allclose(cur["start"][b].numpy(), r.executed_states[k * every * FS], rtol=1e-6)
        # ... for the remaining steps only, warm-started with the previous plan minus its executed steps
        assert cur["init"].shape[1] == h - k * every == cur["actions"].shape[1]
        torch.testing.assert_close(cur["init"], prev["actions"][:, every:])
        assert not torch.allclose(prev["actions"][:, 0], prev["actions"][:, -1])
        assert cur["seed"] != prev["seed"]
    # the executed actions are the first steps of each plan
    for b, r in enumerate(records):
        first = unpack_actions(SpyGD.calls[0]["actions"][b, : min(every, h)].numpy().astype(np.float64))
        np.testing.assert_allclose(r.actions[: len(first)], first)


def test_mpc_residual_is_concatenated_over_replans():
    env = make_env("wall")
    planner = make_planner("grasp", horizon=4, iterations=12, sync_interval=6, sync_steps=2)
    specs = [spec(0, (12.0, 20.0), (20.0, 40.0), 4)]
    (r,) = run_episodes(env, WallAgnostic(), planner, specs, planner_name="grasp", mode="mpc", replan_every=2, plan_seed=0)
    assert r.replans == 2 and r.residual is not None and r.residual.shape == (2 * 12, 4)
    assert np.isfinite(r.residual[:12]).all()  # the first plan covers all 4 steps
    assert np.isfinite(r.residual[12:, :2]).all() and np.isnan(r.residual[12:, 2:]).all()  # the replan covers 2


# -- failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["open_loop", "mpc"])
def test_nan_model_fails_only_that_episode(mode):
    env = make_env("wall")
    specs = [SAME_SIDE[0], spec(1, (45.0, 20.0), (50.0, 30.0)), spec(2, (10.0, 10.0), (15.0, 15.0))]
    records = run_episodes(env, Poisoned(), exact_gd(3), specs, planner_name="gd", mode=mode, replan_every=2, plan_seed=0)
    bad = records[1]
    assert bad.failed and not bad.success and not bad.model_success
    assert bad.error is not None and "NaN" in bad.error
    assert bad.actions.shape == (0, 2) and bad.executed_states.shape == (1, 2)  # nothing was executed
    assert bad.model_final_distance == math.inf
    for r in (records[0], records[2]):
        assert not r.failed and r.error is None and r.actions.shape == (15, 2)
        assert r.success  # MPC plans the remaining steps, so an exact model arrives in both modes


def test_execution_exception_is_recorded_and_others_go_on():
    env = FragileWall()
    specs = [SAME_SIDE[0], spec(1, (45.0, 40.0), (45.0, 56.0))]  # the second goes below y = 50
    records = run_episodes(env, WallAgnostic(), exact_gd(3), specs, planner_name="gd", plan_seed=0)
    assert records[0].success and not records[0].failed
    bad = records[1]
    assert bad.failed and not bad.success and "simulator exploded" in (bad.error or "")


# -- summaries -----------------------------------------------------------------------------------------


def _record(success: bool, time_s: float, *, model_success: bool = False, failed: bool = False) -> EpisodeRecord:
    return EpisodeRecord(
        task="wall", planner="gd", horizon=1, episode_id=0, seed=0, mode="open_loop", plan_seed=0,
        success=success, model_success=model_success, final_distance=1.0, model_final_distance=1.0,
        planning_time_s=time_s, iterations=1, replans=1, failed=failed, error="x" if failed else None,
        executed_states=np.zeros((6, 2)), actions=np.zeros((5, 2)),
    )


def test_summarize_on_hand_made_records():
    records = [
        _record(True, 1.0, model_success=True),
        _record(True, 10.0),
        _record(False, 100.0, model_success=True),
        _record(True, 2.0, model_success=True),
        _record(False, 50.0, failed=True),
    ]
    s = summarize(records)
    rate, low, high = wald_interval(3, 5)
    assert s["count"] == 5 and s["successes"] == 3 and s["failures"] == 1
    assert s["success_rate"] == pytest.approx(0.6) == rate
    assert (s["success_low"], s["success_high"]) == (low, high) and low < 0.6 < high
    assert s["model_success_rate"] == pytest.approx(0.6)
    assert s["median_planning_time_s"] == 2.0  # over the successful episodes only
    none = summarize([_record(False, 3.0)])
    assert none["success_rate"] == 0.0 and math.isnan(none["median_planning_time_s"])
    empty = summarize([])
    assert empty["count"] == 0 and math.isnan(empty["success_rate"]) and math.isnan(empty["model_success_rate"])


def test_success_by_iteration_executes_each_snapshot_in_the_simulator():
    env = make_env("wall")
    specs = list(SAME_SIDE)
    records = run_episodes(env, WallAgnostic(), exact_gd(3, iterations=150), specs, planner_name="gd", plan_seed=0,
                           snapshot_iterations=[1, 150, 75, 75])
    for r in records:
        assert r.snapshot_iterations == (1, 75, 150)
        assert len(r.success_by_iteration) == 3
        assert r.success_by_iteration[-1] == r.success  # the last snapshot is the executed plan
        assert not r.success_by_iteration[0]  # one small step from zero actions does not arrive
        assert r.to_row()["success_by_iteration"] == list(r.success_by_iteration)
    mpc = run_episodes(env, WallAgnostic(), exact_gd(3), specs, planner_name="gd", mode="mpc", plan_seed=0, snapshot_iterations=[1])
    assert all(r.snapshot_iterations == () for r in mpc)  # the anytime curve is an open-loop notion


def test_time_to_success_is_the_first_snapshot_that_succeeds():
    env = make_env("wall")
    snaps = [1, 2, 4] + list(range(10, 151, 10))
    planner = exact_gd(3, iterations=150)
    records = run_episodes(env, WallAgnostic(), planner, list(SAME_SIDE) + [ACROSS_BLOCKED], planner_name="gd", plan_seed=0,
                           snapshot_iterations=snaps, budget=1234)
    per_iteration = 2 * 3  # GD: H forward and H backward transitions per iteration
    for r in records:
        assert r.budget == 1234 and r.transitions == planner.transitions()
        assert len(r.snapshot_seconds) == len(r.snapshot_transitions) == len(snaps)
        assert list(r.snapshot_transitions) == [i * per_iteration for i in snaps]  # counted as spent, not assumed
        assert all(a < b for a, b in zip(r.snapshot_seconds, r.snapshot_seconds[1:]))
        assert r.snapshot_seconds[-1] <= r.planning_time_s
        if r.success:
            first = r.success_by_iteration.index(True)
            assert 0 < first < len(snaps) - 1  # not the first snapshot, and before the whole budget
            assert r.time_to_success_s == r.snapshot_seconds[first] < r.planning_time_s
            assert r.transitions_to_success == snaps[first] * per_iteration
        else:
            assert math.isnan(r.time_to_success_s) and r.transitions_to_success == -1
    assert [r.success for r in records] == [True, True, False]  # the wall-blind model cannot cross the wall
    s = summarize(records)
    wins = sorted(r.time_to_success_s for r in records if r.success)
    assert s["median_time_to_success_s"] == pytest.approx(sum(wins) / 2)
    assert s["median_transitions_to_success"] == pytest.approx(np.median([r.transitions_to_success for r in records if r.success]))
    assert s["median_transitions"] == planner.transitions()
    row = records[0].to_row()
    assert row["snapshot_seconds"] == list(records[0].snapshot_seconds) and row["budget"] == 1234


def test_time_to_success_without_snapshots_is_the_whole_planning_time():
    env = make_env("wall")
    records = run_episodes(env, WallAgnostic(), exact_gd(3), list(SAME_SIDE), planner_name="gd", plan_seed=0)
    assert all(r.success and r.time_to_success_s == r.planning_time_s and r.transitions_to_success == r.transitions
               for r in records)


def test_pointmaze_plans_on_position_only_with_a_coordinatewise_state_model():
    from wmplan.platform.models.state_model import StateModelConfig, StateWorldModel

    env = make_env("pointmaze")
    model = StateWorldModel(StateModelConfig(env="pointmaze", state_dim=4, action_dim=2 * FS), seed=0)
    seen = []

    class Spy(GD):
        def plan(self, model, start, goal, **kw):
            seen.append(model)
            return super().plan(model, start, goal, **kw)

    specs = make_episode_specs(env, horizon=1, count=2, seed=0)
    run_episodes(env, model, Spy(GDOptions(horizon=1, iterations=2)), specs, planner_name="gd", plan_seed=0)
    states = torch.zeros(3, 4)
    goal = torch.tensor([[1.0, 2.0, 0.0, 0.0]]).expand(3, 4)
    moved = states.clone()
    moved[:, 2:] = 5.0  # only the velocity differs
    cost = seen[0].cost
    assert torch.allclose(cost(states, goal), cost(moved, goal))  # velocity does not count
    assert torch.allclose(cost(states, goal), torch.full((3,), 2.5))  # mean over the two position coordinates


def test_results_tables_lead_with_time_to_success():
    from wmplan.platform.workflow import format_summaries

    env = make_env("wall")
    records = run_episodes(env, WallAgnostic(), exact_gd(3, iterations=150), list(SAME_SIDE), planner_name="gd", plan_seed=0,
                           snapshot_iterations=[1, 2, 4, 10, 50, 150])
    s = summarize(records)
    header, _, row = format_summaries({("gd", 3): s}).splitlines()
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["time to success (s)"] == f"{s['median_time_to_success_s']:.2f}"
    assert cells["whole budget (s)"] == f"{s['median_planning_time_s']:.2f}"
    assert s["median_time_to_success_s"] < s["median_planning_time_s"]
